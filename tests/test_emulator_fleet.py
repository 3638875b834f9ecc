"""Fleet files: the full syntax, defaults, and every mistake at its line and column."""

from __future__ import annotations

from pathlib import Path

import pytest
from emulator_helpers import TEST_KEY

from fleet_reimage.emulator import (
    AutoScaleSpec,
    CoreQuota,
    FaultSpec,
    ManualClock,
    Outcomes,
    RateLimitSpec,
    TaskDuration,
    Timings,
    build_state,
    load_fleet,
    parse_fleet,
)
from fleet_reimage.errors import InputError

REPO = Path(__file__).resolve().parent.parent

FULL = f"""\
account: {{name: emu, key: "{TEST_KEY}", bearer_tokens: ["tok1", "tok2"]}}
seed: 1
pools:
  - id: render-a
    nodes: 200
    vm_size: standard_d2_v3
    states: {{idle: 0.7, running: 0.3}}
    running_tasks: 2
    task_duration: {{min: 1m, max: 10m}}
    recently_booted: 0.1
    core_quota: {{dedicated: 800}}
    cores_per_node: 4
    metadata: {{owner: render}}
  - id: explicit
    nodes: [a, b, c]
    reimage: refused
    task_duration: 90s
  - id: scaled
    nodes: 2
    auto_scale: {{target_dedicated: 3, interval: 30s}}
    task_duration: {{mean: 5m}}
timings: {{reimaging: 2s, rebooting: 1s, starting: 1s, waitingforstarttask: 0s, leavingpool: 3s}}
outcomes: {{starttaskfailed: 0.02, unusable: 0.0}}
faults:
  seed: 7
  all: {{latency: 5ms}}
  reimage: {{throttle: 0.05, server_busy: 0.02, server_error: 0.01, reset_before: 0.01,
            reset_after: 0.01, delay_after: 0.0, delay: 40s, latency: 5ms, jitter: 2ms,
            retry_after: 1s}}
rate_limit: {{requests_per_second: 500, burst: 50}}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(InputError) as caught:
        parse_fleet(text, "f.yaml")
    return [problem.render() for problem in caught.value.problems]


def test_full_fleet_file() -> None:
    spec = parse_fleet(FULL, "full.yaml")
    assert (spec.account.name, spec.account.bearer_tokens, spec.seed) == (
        "emu",
        ("tok1", "tok2"),
        1,
    )
    render, explicit, scaled = spec.pools
    assert (render.id, render.nodes, render.states, render.running_tasks) == (
        "render-a",
        200,
        {"idle": 0.7, "running": 0.3},
        2,
    )
    assert render.recently_booted == 0.1 and explicit.nodes == ("a", "b", "c")
    assert (render.reimage, explicit.reimage) == ("accepted", "refused")
    assert render.task_duration == TaskDuration("uniform", 60, 600)
    assert explicit.task_duration == TaskDuration("fixed", 90, 90)
    assert scaled.task_duration == TaskDuration("exponential", 300, 300)
    assert (render.core_quota, render.cores_per_node) == (CoreQuota(800, None), 4)
    assert render.metadata == (("owner", "render"),)
    assert (render.auto_scale, scaled.auto_scale) == (None, AutoScaleSpec(3, 0, 30))
    assert spec.timings == Timings(2, 1, 1, 0, leavingpool=3)
    assert spec.outcomes == Outcomes(0.02, 0.0)
    assert spec.faults.seed == 7
    assert spec.faults.operations["reimage"] == FaultSpec(
        throttle=0.05,
        server_busy=0.02,
        server_error=0.01,
        reset_before=0.01,
        reset_after=0.01,
        delay_after=0.0,
        delay=40,
        latency=0.005,
        jitter=0.002,
        retry_after=1,
    )
    assert spec.faults.operations["get_node"] == FaultSpec(latency=0.005)  # from "all"
    assert spec.rate_limit == RateLimitSpec(500, 50)
    assert TEST_KEY not in repr(spec)
    state = build_state(spec, ManualClock())
    assert state.summary("render-a").states == {"idle": 140, "running": 60}
    assert [node.id for node in state.pools["explicit"].nodes] == ["a", "b", "c"]
    assert state.accepted_tokens == {"tok1", "tok2"}


def test_defaults() -> None:
    spec = parse_fleet(f"account: {{name: emu, key: '{TEST_KEY}'}}\npools: [{{id: p, nodes: 2}}]")
    pool = spec.pools[0]
    assert (pool.reimage, pool.vm_size, pool.states, pool.recently_booted) == (
        "accepted",
        "standard_d2_v3",
        {"idle": 1.0},
        0.0,
    )
    assert (pool.auto_scale, pool.core_quota, pool.metadata) == (None, CoreQuota(), ())
    assert spec.seed == 0 and spec.rate_limit is None and spec.faults.operations == {}
    burst = parse_fleet(
        f"account: {{name: emu, key: '{TEST_KEY}'}}\npools: [{{id: p, nodes: 2}}]\n"
        "rate_limit: {requests_per_second: 300}"
    )
    assert burst.rate_limit == RateLimitSpec(300, 30)


def test_every_mistake_is_reported_with_its_position() -> None:
    found = problems(f"""\
account: {{name: emu, key: "{TEST_KEY}"}}
seed: one
pools:
  - id: a
    nodes: 5
    states: {{idle: 0.5, runing: 0.5}}
  - id: a
    nodes: 3
    sttes: {{idle: 1}}
  - id: b
    nodes: 4
    states: {{idle: 0.5, running: 0.4}}
timings: {{reimaging: 2, starting: soon}}
faults:
  reimage: {{throttle: 0.7, server_busy: 0.6}}
  listnodes: {{throttle: 0.1}}
""")
    assert found == [
        "f.yaml:2:7: error: seed: expected a whole number, got a string",
        "f.yaml:6:25: error: pools[0].states.runing: unknown state 'runing'; "
        "did you mean 'running'?",
        "f.yaml:7:9: error: pools[1].id: duplicate pool id 'a' (first at pools[0])",
        "f.yaml:9:5: error: pools[1].sttes: unknown key 'sttes'; did you mean 'states'?",
        "f.yaml:12:13: error: pools[2].states: the shares must sum to 1, they sum to 0.9",
        "f.yaml:13:22: error: timings.reimaging: expected a duration such as 200ms, 30s, "
        "20m or 1h, got 2",
        "f.yaml:13:35: error: timings.starting: expected a duration such as 200ms, 30s, 20m or 1h, "
        "got 'soon'",
        "f.yaml:15:12: error: faults.reimage: the fault shares must sum to at most 1",
        "f.yaml:16:3: error: faults.listnodes: unknown key 'listnodes'; did you mean 'list_nodes'?",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "pools: [{id: p, nodes: 1}]",
            "f.yaml:1:1: error: account: missing required key 'account'",
        ),
        (f"account: {{name: emu, key: '{TEST_KEY}'}}", "missing required key 'pools'"),
        (f"account: {{name: emu, key: '{TEST_KEY}'}}\npools: []", "at least one pool"),
        (
            "account: {name: emu, key: 'not base64!'}\npools: [{id: p, nodes: 1}]",
            "f.yaml:1:27: error: account.key: the Shared Key is not valid base64",
        ),
        (
            f"account: {{name: Emu, key: '{TEST_KEY}'}}\npools: [{{id: p, nodes: 1}}]",
            "account.name: an account name is lower-case letters and digits",
        ),
        (
            f"account: {{name: emu, key: '{TEST_KEY}'}}\npools: [{{id: p, nodes: -1}}]",
            "pools[0].nodes: must be between 0 and 1000000, got -1",
        ),
        (
            f"account: {{name: emu, key: '{TEST_KEY}'}}\npools: [{{id: p, nodes: 1, "
            "reimage: maybe}]",
            "pools[0].reimage: expected accepted or refused, got 'maybe'",
        ),
        (
            f"account: {{name: emu, key: '{TEST_KEY}'}}\npools: [{{id: p, nodes: 1, "
            "task_duration: {min: 5m, max: 1m}}]",
            "pools[0].task_duration.max: max must be at least min",
        ),
        (
            f"account: {{name: emu, key: '{TEST_KEY}'}}\npools: [{{id: p, nodes: 1, "
            "auto_scale: {interval: 5m}}]",
            "pools[0].auto_scale.target_dedicated: missing required key",
        ),
        (
            f"account: {{name: emu, key: '{TEST_KEY}'}}\npools: [{{id: p, nodes: 1, "
            "core_quota: {dedicted: 4}}]",
            "pools[0].core_quota.dedicted: unknown key 'dedicted'; did you mean 'dedicated'?",
        ),
        (
            f"account: {{name: emu, key: '{TEST_KEY}'}}\npools: [{{id: p, nodes: 1, states: "
            "{idle: 1.5}}]",
            "pools[0].states.idle: a share must be between 0 and 1, got 1.5",
        ),
        (
            f"account: {{name: emu, key: '{TEST_KEY}'}}\npools: [{{id: p, nodes: 1}}]\n"
            "outcomes: {starttaskfailed: yes}",
            "outcomes.starttaskfailed: expected a share",
        ),
        (
            f"account: {{name: emu, key: '{TEST_KEY}'}}\npools: [{{id: p, nodes: 1}}]\n"
            "rate_limit: {requests_per_second: 0}",
            "rate_limit.requests_per_second: must be above 0",
        ),
        ("- just\n- a list", "a fleet file is a mapping, got a list"),
    ],
)
def test_single_mistakes(text: str, expected: str) -> None:
    assert any(expected in line for line in problems(text)), problems(text)


def test_a_bad_key_is_never_echoed() -> None:
    secret = "c2VjcmV0IGtleQ==!!"
    rendered = "\n".join(
        problems(f"account: {{name: emu, key: '{secret}'}}\npools: [{{id: p, nodes: 1}}]")
    )
    assert "base64" in rendered and secret not in rendered


def test_load_fleet_reads_files_and_reports_unreadable_ones(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FULL, encoding="utf-8")
    assert load_fleet(path).source == str(path)
    with pytest.raises(InputError) as caught:
        load_fleet(tmp_path / "missing.yaml")
    assert "cannot read the fleet file" in caught.value.render()


def test_demo_fleet() -> None:
    spec = load_fleet(REPO / "plans" / "fleets" / "demo.yaml")
    assert spec.account.name == "demo"
    assert [(pool.id, pool.node_count, pool.reimage) for pool in spec.pools] == [
        ("render-a", 24, "accepted"),
        ("render-b", 16, "accepted"),
        ("sim", 8, "refused"),
        ("etl", 12, "accepted"),
    ]
    state = build_state(spec, ManualClock())
    assert state.summary("render-b").states == {"idle": 15, "unusable": 1}
    assert state.summary("render-a").states == {"idle": 18, "running": 6}
    assert spec.timings.reimaging == 1.5 and spec.outcomes.starttaskfailed == 0.05
    assert spec.faults.operations["reimage"].retry_after == 0.5


def test_cloud_service_pools_are_refused_with_what_to_write_instead() -> None:
    found = problems(f"""\
account: {{name: emu, key: "{TEST_KEY}"}}
pools:
  - id: old-cs
    nodes: 2
    configuration: cloudServiceConfiguration
  - id: old-vm
    nodes: 2
    configuration: virtualMachineConfiguration
""")
    assert len(found) == 2
    assert found[0].startswith(
        "f.yaml:5:20: error: pools[0].configuration: cloud-service pools do not exist in "
        "api-version 2024-07-01.20.0"
    )
    assert "remove this key" in found[0] and "reimage: refused" in found[0]
    assert found[1].startswith("f.yaml:8:20: error: pools[1].configuration: remove this key")
    assert "write 'reimage: refused'" in found[1]
