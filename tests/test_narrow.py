"""Narrowing a plan from the command line (issue 16, section 7): --pool and --nodes-from.

Pure: the nodes file and its errors, pool globs, and the property that narrowing only ever
keeps part of what the plan selects. Then as an operator runs it: plan, run (and its dry
run), status, report and resume against the emulator.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clihelpers import emulator_process, fleet_reimage
from hypothesis import given
from hypothesis import strategies as st
from runhelpers import write_plan
from test_plan_load import MINIMAL

from fleet_reimage.batch.models import NodeInfo
from fleet_reimage.errors import InputError
from fleet_reimage.plan.load import parse_plan
from fleet_reimage.plan.narrow import Narrowing, NodeList, PoolGlob, parse_node_list
from fleet_reimage.plan.resolve import select_nodes

PLAN = (  # the loader tests' minimal plan, with a node selector and a ladder
    MINIMAL.replace(
        '      - match: "render-*"\n',
        '      - match: "render-*"\n'
        '        nodes: {exclude: ["tvm-9*"], states: [idle, running]}\n',
    )
    + 'rollout: {waves: [1, "50%"], max_unavailable: "50%"}\n'
)


def test_the_nodes_file_takes_one_id_a_line_with_comments() -> None:
    listed = parse_node_list(
        "# retry after the patch night\n\ntvm-1\n  tvm-2   # the canary\ntvm-1\nnode_3.x\n", "f"
    )
    assert dict(listed.lines) == {"tvm-1": 3, "tvm-2": 4, "node_3.x": 6}


def test_a_bad_nodes_file_says_which_lines() -> None:
    with pytest.raises(InputError) as caught:
        parse_node_list("tvm-1\ntvm-2 tvm-3\n\n  bad/id\ntvm-4\n", "retry.txt")
    rendered = caught.value.render().splitlines()
    assert rendered == [
        "retry.txt:2:1: error: one node id a line, got 2 words: 'tvm-2 tvm-3'",
        "retry.txt:4:3: error: 'bad/id' is not a node id: letters, digits, '-', '_' and '.' "
        "only (a comment starts with #)",
    ]
    with pytest.raises(InputError, match="no node id in the file"):
        parse_node_list("# nothing\n\n", "empty.txt")


def test_pool_globs() -> None:
    assert PoolGlob.parse("render-*") == PoolGlob(None, "render-*")
    assert PoolGlob.parse("prod-west/render-[ab]") == PoolGlob("prod-west", "render-[ab]")
    glob = PoolGlob.parse("Prod-West/render-*")
    assert glob.matches("prod-west", "render-a") and not glob.matches("other", "render-a")
    assert not glob.matches("prod-west", "etl")
    for bad in ("", "a b", "x/y/z", "render-*/"):
        with pytest.raises(ValueError, match="is not a pool glob"):
            PoolGlob.parse(bad)


NODE_IDS = st.sampled_from([f"tvm-{i}" for i in range(12)])
STATES = st.sampled_from(["idle", "running", "offline", "starttaskfailed"])


@given(
    nodes=st.dictionaries(NODE_IDS, STATES, max_size=12),
    listed=st.sets(NODE_IDS, min_size=1),
)
def test_narrowing_only_ever_keeps_part_of_the_selection(
    nodes: dict[str, str], listed: set[str]
) -> None:
    plan = parse_plan(PLAN, Path("plan.yaml"))
    selector = plan.accounts[0].pools[0]
    listing = [NodeInfo(node_id, state, None, 0) for node_id, state in nodes.items()]
    whole = select_nodes("render-a", listing, selector, plan, "west", None)
    narrowing = Narrowing(nodes=NodeList("f", {node_id: 1 for node_id in listed}))
    narrowed = select_nodes("render-a", listing, selector, plan, "west", None, narrowing)
    chosen = {n.id for n in whole.selected}
    assert {n.id for n in narrowed.selected} == chosen & listed  # never more than the plan
    assert sum(narrowed.wave_sizes) == len(narrowed.selected)  # the ladder is over what is kept
    reasons = dict(narrowed.excluded)
    for node_id in chosen - listed:
        assert reasons[node_id] == "not in --nodes-from f"
    for node_id, reason in whole.excluded:  # what the plan leaves out, it leaves out for its
        assert reasons[node_id] == reason  # own reason, listed or not


# --- as an operator runs it -------------------------------------------------------------


def test_plan_and_run_narrowed_and_resume_keeps_it(tmp_path: Path) -> None:
    pools = [
        {"id": "render-a", "nodes": 6},
        {"id": "render-b", "nodes": 6},
        {"id": "etl", "nodes": 4},
    ]
    with emulator_process(tmp_path, pools) as emu:
        ids = {pool: [n["id"] for n in emu.stats()["nodes"] if n["pool"] == pool]
               for pool in ("render-a", "render-b", "etl")}  # fmt: skip
        listed = tmp_path / "retry.txt"
        listed.write_text(
            "# nodes to retry\n"
            + "".join(f"{node}\n" for node in ids["render-a"][:3])
            + f"{ids['render-b'][0]}\n"  # in a pool that --pool leaves out
            + "tvm-not-in-any-pool\n"
        )
        plan = write_plan(
            tmp_path, emu.url, rollout='waves: ["100%"]\nmax_unavailable: 1\n'
            "health: {wait: true, poll_interval: 100ms, timeout: 20s}"
        )  # fmt: skip
        narrow = ["--pool", "render-a", "--pool", "emu/etl", "--nodes-from", str(listed)]

        shown = fleet_reimage("plan", str(plan), *narrow, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "3 nodes selected in 2 pools" in shown.stdout
        assert (
            "narrowed from the command line (never more than the plan): --pool render-a "
            f"--pool emu/etl --nodes-from {listed} (5 node ids)" in shown.stdout
        )
        assert (
            f"{listed}:5: warning: node {ids['render-b'][0]} is not selected by the plan "
            "(no node of the pools kept by --pool has this id); it is not added" in shown.stdout
        )
        assert f"{listed}:6: warning: node tvm-not-in-any-pool is not selected" in shown.stdout
        doc = json.loads(
            fleet_reimage("plan", str(plan), *narrow, "--output", "json", cwd=tmp_path).stdout
        )
        assert [p["pool"] for p in doc["pools"]] == ["etl", "render-a"]
        assert doc["selected"] == 3 and doc["narrowing"]["pools"] == ["render-a", "emu/etl"]

        dry = fleet_reimage("run", str(plan), "--dry-run", *narrow, cwd=tmp_path)
        assert dry.returncode == 0 and "emu/render-b" not in dry.stdout, dry.stdout
        assert emu.stats()["requests"]["mutating"] == 0

        journal = tmp_path / "j.db"
        ran = fleet_reimage(
            "run", str(plan), "--yes", "--journal", str(journal), *narrow,
            "--deadline", "2020-01-01T00:00:00Z", cwd=tmp_path,
        )  # fmt: skip
        assert ran.returncode == 3, ran.stdout + ran.stderr  # stopped at once: the deadline
        assert "tvm-not-in-any-pool is not selected" in ran.stderr  # said, even with --yes
        resumed = fleet_reimage(
            "resume", "--journal", str(journal), "--deadline", "1h", cwd=tmp_path
        )
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        reimaged = {node for node, times in emu.reimages().items() if times}
        assert reimaged == set(ids["render-a"][:3])  # only those, once each
        assert set(emu.reimages()[n] for n in reimaged) == {1}

    status = fleet_reimage("status", "--latest", "--journal", str(journal), cwd=tmp_path)
    narrowed = f"narrowed --pool render-a --pool emu/etl --nodes-from {listed} (5 node ids)"
    assert narrowed in status.stdout
    report = fleet_reimage(
        "report", "--latest", "--journal", str(journal), "--format", "markdown", cwd=tmp_path
    )
    assert f"| Narrowed to | `{narrowed.removeprefix('narrowed ')}` |" in report.stdout
    as_json = json.loads(
        fleet_reimage(
            "report", "--latest", "--journal", str(journal), "--format", "json", cwd=tmp_path
        ).stdout
    )
    assert as_json["run"]["narrowing"]["node_ids"] == 5


def test_narrowing_errors_are_input_errors(tmp_path: Path) -> None:
    with emulator_process(tmp_path, [{"id": "p", "nodes": 2}]) as emu:
        plan = write_plan(tmp_path, emu.url)
        bad = tmp_path / "bad.txt"
        bad.write_text("ok-1\nok 2\n")
        for args, said in (
            (["--nodes-from", str(bad)], f"{bad}:2:1: error: one node id a line"),
            (["--nodes-from", str(tmp_path / "nope.txt")], "nope.txt: error: no such file"),
            (["--pool", "other/p"], "the plan has no account 'other'"),
            (["--pool", "a b"], "is not a pool glob"),
        ):
            result = fleet_reimage("plan", str(plan), *args, cwd=tmp_path)
            assert result.returncode == 2 and said in result.stderr, (args, result.stderr)
            assert "Traceback" not in result.stderr
        nothing = fleet_reimage(
            "run", str(plan), "--yes", "--journal", str(tmp_path / "j.db"), "--pool", "zzz",
            cwd=tmp_path,
        )  # fmt: skip
        assert nothing.returncode == 2
        assert "selects no node once narrowed by --pool zzz" in nothing.stderr
        assert emu.stats()["requests"]["mutating"] == 0
