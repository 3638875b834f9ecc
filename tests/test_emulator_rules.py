"""The emulator's rules as pure functions: conflicts, readiness, shrink order, quotas,
conditional headers, ISO-8601 durations and task durations (hypothesis where the input is
open-ended)."""

from __future__ import annotations

import pytest
from emulator_helpers import BUSY_CODES
from hypothesis import given
from hypothesis import strategies as st

from fleet_reimage.emulator import rules
from fleet_reimage.emulator.spec import NODE_STATES, TaskDuration
from fleet_reimage.emulator.timefmt import (
    TICKS_PER_SECOND,
    etag_of,
    http_date,
    iso_duration,
    parse_iso_duration,
)


@pytest.mark.parametrize("state", NODE_STATES)
def test_reimage_reboot_deallocate_only_from_idle_or_running(state: str) -> None:
    error = rules.action_conflict(state, None)
    if state in ("idle", "running"):
        assert error is None
    else:
        assert error is not None and error.status == 409
        assert error.code == BUSY_CODES.get(state, "OperationInvalidForCurrentState")


def test_a_node_waiting_for_its_tasks_answers_for_what_it_waits() -> None:
    reimage = rules.action_conflict("running", "reimage")
    reboot = rules.action_conflict("running", "reboot")
    removal = rules.action_conflict("running", "remove")
    assert (reimage and reimage.code, reboot and reboot.code) == (
        "NodeBeingReimaged",
        "NodeBeingRebooted",
    )
    assert removal is not None and removal.code == "OperationInvalidForCurrentState"


def test_refused_reimage_is_the_recorded_answer() -> None:
    error = rules.reimage_refused()
    assert (error.status, error.code) == (409, "OperationNotValidOnNode")
    assert error.values == (("Reason", rules.VM_REIMAGE_REASON),)


@pytest.mark.parametrize("state", NODE_STATES)
def test_start_only_from_deallocated(state: str) -> None:
    error = rules.start_conflict(state)
    assert (error is None) == (state == "deallocated")
    assert error is None or error.code == "OperationInvalidForCurrentState"


@given(
    state=st.sampled_from(NODE_STATES),
    current=st.sampled_from(["enabled", "disabled"]),
    wanted=st.sampled_from(["enabled", "disabled"]),
)
def test_scheduling_changes(state: str, current: str, wanted: str) -> None:
    error = rules.scheduling_conflict(state, current, wanted)
    if state in ("creating", "starting", "leavingpool", "deallocating", "deallocated"):
        assert error is not None and error.status == 409
    elif current == wanted:
        assert error is not None and error.code == "NodeAlreadyInTargetSchedulingState"
    else:
        assert error is None


@given(
    state=st.sampled_from(NODE_STATES),
    scheduling=st.sampled_from(["enabled", "disabled"]),
    pending=st.sampled_from([None, "reimage", "reboot", "deallocate", "remove"]),
)
def test_ready_means_it_could_take_a_task_now(
    state: str, scheduling: str, pending: str | None
) -> None:
    expected = state in ("idle", "running") and scheduling == "enabled" and pending is None
    assert rules.is_ready(state, scheduling, pending) == expected


candidates = st.lists(st.tuples(st.sampled_from(NODE_STATES), st.integers(0, 4)), max_size=30).map(
    lambda items: [
        rules.ShrinkCandidate(state, tasks, position)
        for position, (state, tasks) in enumerate(items)
    ]
)


@given(candidates)
def test_a_shrinking_pool_gives_up_broken_then_idle_nodes_and_running_ones_last(
    nodes: list[rules.ShrinkCandidate],
) -> None:
    order = rules.shrink_order(nodes)
    assert sorted(order, key=lambda node: node.position) == nodes  # a permutation
    rank = {node.position: index for index, node in enumerate(order)}
    broken = {"unusable", "starttaskfailed", "offline", "unknown", "preempted"}
    for a in nodes:
        for b in nodes:
            if a.state in broken and b.state in ("idle", "running"):
                assert rank[a.position] < rank[b.position]
            if a.state == "idle" and b.state == "running":
                assert rank[a.position] < rank[b.position]
            if a.state == b.state == "running" and a.running_tasks < b.running_tasks:
                assert rank[a.position] < rank[b.position]
            if (a.state, a.running_tasks) == (b.state, b.running_tasks) and a.position > b.position:
                assert rank[a.position] < rank[b.position]  # newest first


@given(quota=st.integers(0, 10_000), cores=st.integers(1, 64), in_use=st.integers(0, 500))
def test_quota_room_is_the_most_nodes_that_still_fit(quota: int, cores: int, in_use: int) -> None:
    room = rules.quota_room(quota, cores, in_use)
    assert room is not None and room >= 0
    if room > 0:
        assert (in_use + room) * cores <= quota < (in_use + room + 1) * cores
    else:
        assert (in_use + 1) * cores > quota
    assert rules.quota_room(None, cores, in_use) is None


def test_conditional_headers() -> None:
    ticks = 1_790_000_000 * TICKS_PER_SECOND + 1234567
    etag, date = etag_of(ticks), http_date(ticks)
    earlier = http_date(ticks - 10 * TICKS_PER_SECOND)

    def outcome(headers: dict[str, str], read: bool = False) -> int | None:
        return rules.condition_failure(headers, etag, ticks, read=read)

    assert outcome({}) is None
    assert outcome({"If-Match": etag}) is None and outcome({"If-Match": "*"}) is None
    assert outcome({"If-Match": '"0x8D0000"'}) == 412
    assert outcome({"If-Match": f'"{etag}"'}) is None  # quoted, as HTTP writes it
    assert outcome({"If-None-Match": etag}) == 412
    assert outcome({"If-None-Match": etag}, read=True) == 304
    assert outcome({"If-Unmodified-Since": date}) is None  # same second
    assert outcome({"If-Unmodified-Since": earlier}) == 412
    assert outcome({"If-Modified-Since": date}, read=True) == 304
    assert outcome({"If-Modified-Since": earlier}, read=True) is None


def test_etags_are_dotnet_ticks_of_last_modified_like_the_service() -> None:
    # The spec's example pool: eTag 0x8D413091E739A56 for lastModified 2016-11-22T18:55:25.2608598Z
    seconds = 1_479_840_925  # 2016-11-22T18:55:25Z
    assert etag_of(seconds * TICKS_PER_SECOND + 2_608_598) == "0x8D413091E739A56"
    assert http_date(seconds * TICKS_PER_SECOND) == "Tue, 22 Nov 2016 18:55:25 GMT"


@given(st.integers(0, 10 * 86_400))
def test_iso_durations_round_trip(seconds: int) -> None:
    text = iso_duration(seconds)
    assert text.startswith("PT") and parse_iso_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"), [("PT15M", 900), ("PT5M", 300), ("P1DT2H", 93_600), ("PT0.5S", 0.5)]
)
def test_iso_durations_as_written(text: str, seconds: float) -> None:
    assert parse_iso_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "15M", "PT15", "PT-5M", "5 minutes"])
def test_bad_iso_durations(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_iso_duration(text)


@given(st.floats(0, 1, exclude_max=True), st.floats(1, 1000), st.floats(0, 1000))
def test_task_durations(draw: float, low: float, extra: float) -> None:
    assert TaskDuration("fixed", low, low).seconds(draw) == low
    assert low <= TaskDuration("uniform", low, low + extra).seconds(draw) <= low + extra
    assert TaskDuration("exponential", low, low).seconds(draw) >= 0
