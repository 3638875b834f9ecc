"""run --dry-run: the simulated schedule (pure), and zero mutating requests (subprocess)."""

from __future__ import annotations

import math
from pathlib import Path

from clihelpers import emulator_process, fleet_reimage
from hypothesis import given, settings
from hypothesis import strategies as st
from runhelpers import write_plan

from fleet_reimage.views.dryrun import simulate_pool


def test_waves_run_in_batches_of_free_slots_with_pauses_between() -> None:
    pool = simulate_pool("a/p", [1, 0, 4, 5], slots=2, per_node=60.0, pause=30.0)
    timeline = [(w.wave, w.nodes, w.start, w.end) for w in pool.waves]
    # wave 1: one batch; the empty step is skipped without a pause; 4 nodes = 2 batches of 2;
    # 5 nodes = 3 batches.
    assert timeline == [(1, 1, 0.0, 60.0), (3, 4, 90.0, 210.0), (4, 5, 240.0, 420.0)]
    assert pool.duration == 420.0 and pool.selected == 10
    single = simulate_pool("a/q", [3], slots=10, per_node=5.0, pause=30.0)
    assert single.duration == 5.0  # no pause after the last wave


def test_dry_run_sends_nothing_and_prints_the_expected_timeline(tmp_path: Path) -> None:
    pools = [
        {"id": "big", "nodes": 40},
        # 6 of 10 nodes are down already and at most 2 may be: this pool cannot start.
        {"id": "sick", "nodes": 10, "states": {"idle": 0.4, "offline": 0.6}},
    ]
    with emulator_process(tmp_path, pools) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout="""
            waves: [1, "50%", "100%"]
            max_unavailable: "20%"
            pause_between_waves: 2m
            health: {wait: true, poll_interval: 15s, timeout: 20m}
        """,
        )
        journal = tmp_path / "j.db"
        result = fleet_reimage(
            "run", str(plan), "--dry-run", "--journal", str(journal), cwd=tmp_path
        )  # no --yes and no terminal: a dry run needs neither
        assumed = fleet_reimage(
            "run", str(plan), "--dry-run", "--assume-recovery", "5m", "--deadline", "30m",
            cwd=tmp_path,
        )  # fmt: skip
        shown = fleet_reimage("plan", str(plan), cwd=tmp_path)
        stats = emu.stats()
    # `plan` says it too (the rehearsal's narrowed pool: 11 down, max_unavailable 9).
    assert shown.returncode == 0, shown.stderr
    sick = shown.stdout.split("pool sick")[1]
    assert "    blocked: 6 nodes are already unavailable and max_unavailable is 1; the run " in sick
    assert "blocked" not in shown.stdout.split("pool sick")[0]
    assert result.returncode == 0, result.stderr
    assert stats["requests"]["mutating"] == 0
    assert not journal.exists()
    out = result.stdout
    assert "half the health timeout of 20m" in out  # what was assumed, and why
    # big: 40 selected, 8 at a time, waves 1 / 19 / 20 nodes; 10 minutes a batch.
    assert "emu/big: 40 nodes, 8 at a time, about 1h14m" in out
    assert "wave 1:      1 node  +0s -> +10m00s" in out
    assert "wave 2:    19 nodes  +12m00s -> +42m00s  (after a 2m00s pause)" in out
    assert "emu/sick: 4 nodes, blocked: 6 nodes are already unavailable" in out
    assert "overall: about 1h14m" in out
    assert "no request that changes anything was sent" in out
    assert assumed.returncode == 0, assumed.stderr
    assert "each node assumed back 5m00s after its request" in assumed.stdout
    # 7 batches of 5 minutes and two 2-minute pauses: 39 minutes do not fit in 30.
    assert "emu/big: 40 nodes, 8 at a time, about 39m00s" in assumed.stdout
    assert "LATE" in assumed.stdout and "would stop unfinished" in assumed.stdout


def test_assume_recovery_needs_dry_run(tmp_path: Path) -> None:
    plan = Path("plans/demo.yaml").resolve()
    result = fleet_reimage("run", str(plan), "--yes", "--assume-recovery", "5m", cwd=tmp_path)
    assert result.returncode == 2 and "--dry-run" in result.stderr
    bad = fleet_reimage("run", str(plan), "--dry-run", "--assume-recovery", "soon", cwd=tmp_path)
    assert bad.returncode == 2 and "expected a duration" in bad.stderr


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 30), min_size=1, max_size=6).filter(any),
    slots=st.integers(1, 12),
    per_node=st.sampled_from([1.0, 60.0, 600.0]),
    pause=st.sampled_from([0.0, 30.0, 120.0]),
)
def test_the_simulated_policy_matches_the_closed_form_timeline(
    sizes: list[int], slots: int, per_node: float, pause: float
) -> None:
    """With every node back after the same time, the policy's timeline on a simulated clock is
    the closed form: waves in order, each ``ceil(size / slots)`` recovery times, a pause
    between non-empty waves, empty steps skipped without one."""
    expected, clock = [], 0.0
    for step, size in enumerate(sizes):
        if size == 0:
            continue
        if expected:
            clock += pause
        took = math.ceil(size / slots) * per_node
        expected.append((step + 1, size, clock, clock + took))
        clock += took
    pool = simulate_pool("a/p", sizes, slots=slots, per_node=per_node, pause=pause)
    assert [(w.wave, w.nodes, w.start, w.end) for w in pool.waves] == expected
