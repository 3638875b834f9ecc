"""Chaos: a disk that fills up mid-run, two runners on one journal, secrets in artefacts.

All through the real command line in subprocesses, against the emulator in its own process.
"""

from __future__ import annotations

import base64
import json
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from chaoshelpers import TRACEBACK, journal_rows, run_cli
from clihelpers import cli_env, emulator_process
from runhelpers import KEY, KEY_ENV, write_plan

# --- disk full -----------------------------------------------------------------------------

FSIZE_LIMIT = 1024 * 1024  # bytes any one file of the runner may grow to (journal and WAL)


def _small_disk() -> None:
    """In the child, before exec: files stop growing at FSIZE_LIMIT (EFBIG, no signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def test_a_full_disk_stops_the_run_and_nothing_was_sent_unjournaled(tmp_path: Path) -> None:
    nodes = 1500
    with emulator_process(tmp_path, [{"id": "p", "nodes": nodes}]) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout="""
            waves: ["100%"]
            max_unavailable: "100%"
            health: {wait: false}
            failure_budget: "100%"
            """,
            execution="""
            concurrency: 16
            per_account_concurrency: 16
            request_timeout: 2s
            retry: {max_attempts: 3, initial_backoff: 10ms, max_backoff: 50ms}
            """,
        )
        journal = tmp_path / "j.db"
        full = run_cli(
            "run", str(plan), "--yes", "--journal", str(journal), cwd=tmp_path,
            env=cli_env(PYTHONDONTWRITEBYTECODE="1"), preexec_fn=_small_disk,
        )  # fmt: skip
        counts = emu.reimages()
        sent = {node for node, count in counts.items() if count}
        # The run stopped because of the disk: non-zero, one clear message, no traceback.
        tail = full.stderr[-3000:]
        assert full.returncode == 3, tail  # stopped (resumable), not "bad input"
        assert TRACEBACK not in full.stderr, tail
        output = full.stdout + full.stderr  # the run's summary says why it stopped, once
        message = [line for line in output.splitlines() if "writing to the journal" in line]
        assert len(message) == 1, tail
        assert str(journal) in message[0] and "free disk space" in message[0], message
        assert 0 < len(sent) < nodes, "the limit must be hit in the middle of the run"
        assert max(counts.values()) == 1
        # Write-ahead: every node the service saw has its attempt in the journal.
        journaled = {
            row[0]
            for row in journal_rows(
                journal,
                "SELECT DISTINCT t.node_id FROM attempts a JOIN targets t USING (target_id)",
            )
        }
        assert sent <= journaled, sorted(sent - journaled)[:10]
        assert journal_rows(journal, "PRAGMA quick_check") == [("ok",)]
        # With room again, resume finishes the run: every node exactly once.
        resumed = run_cli("resume", "--journal", str(journal), cwd=tmp_path, timeout=120)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        counts = emu.reimages()
    assert len(counts) == nodes and set(counts.values()) == {1}


# --- two runners on one journal --------------------------------------------------------------


def test_a_second_runner_on_the_same_journal_refuses_and_names_the_holder(
    tmp_path: Path,
) -> None:
    nodes = 40
    with emulator_process(
        tmp_path,
        [{"id": "p", "nodes": nodes}],
        timings={"reimaging": "300ms", "starting": "200ms"},
    ) as emu:
        plan = write_plan(
            tmp_path,
            emu.url,
            rollout="""
            waves: [2, "100%"]
            max_unavailable: 8
            health: {wait: true, poll_interval: 100ms, timeout: 30s}
            """,
        )
        other = write_plan(tmp_path, emu.url, name="other")
        journal, events = tmp_path / "j.db", tmp_path / "events.jsonl"
        first = subprocess.Popen(
            [
                *(sys.executable, "-m", "fleet_reimage", "run", str(plan), "--yes"),
                *("--journal", str(journal), "--events", str(events)),
            ],
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and first.poll() is None:
                if events.exists() and "node_accepted" in events.read_text():
                    break
                time.sleep(0.02)
            assert first.poll() is None, "the first run ended before the others could try"
            started = next(
                json.loads(line)
                for line in events.read_text().splitlines()
                if "run_started" in line
            )
            run_id = started["run_id"]
            holder = f"{socket.gethostname()} pid {first.pid}, run {run_id}"  # not "run new"
            contenders = [
                ("run", str(plan), "--yes"),
                ("run", str(other), "--yes"),
                ("resume",),
                ("resume", "--force-plan"),
            ]
            for args in contenders:
                second = run_cli(*args, "--journal", str(journal), cwd=tmp_path)
                assert second.returncode == 2, (args, second.stdout, second.stderr)
                assert TRACEBACK not in second.stderr
                assert f"in use by {holder} (lock " in second.stderr, second.stderr
            assert first.poll() is None, "the contenders ended before the first run did"
            out, err = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate(timeout=10)
        assert first.returncode == 0, out + err
        counts = emu.reimages()
    assert len(counts) == nodes and set(counts.values()) == {1}


# --- secrets ---------------------------------------------------------------------------------

WRONG_KEY = base64.b64encode(bytes(range(100, 164))).decode()


def _secret_forms(key: str) -> list[bytes]:
    """The key as base64 (case-folded), without padding, url-safe, the raw bytes, hex."""
    raw = base64.b64decode(key)
    forms = {key, key.rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    return [f.lower().encode() for f in forms] + [raw, raw.hex().encode()]


def _leaks(blob: bytes, keys: list[str]) -> list[str]:
    folded = blob.lower()
    found = []
    for key in keys:
        for form in _secret_forms(key):
            if form in folded or form in blob:
                found.append(f"{key[:6]}... as {form[:12]!r}")
    return found


def test_no_form_of_the_key_in_any_artefact(tmp_path: Path) -> None:
    with emulator_process(
        tmp_path,
        [{"id": "p", "nodes": 24}],
        faults={
            "seed": 9,
            "reimage": {
                "throttle": 0.1,
                "server_error": 0.1,
                "reset_after": 0.1,
                "retry_after": "50ms",
            },
        },
    ) as emu:
        plan = write_plan(tmp_path, emu.url)
        journal = tmp_path / "j.db"
        debug = ("--log-level", "debug")
        outputs = [
            run_cli("plan", str(plan), "--output", "json", *debug, cwd=tmp_path),
            run_cli(
                "run", str(plan), "--yes", "--journal", str(journal),
                "--events", str(tmp_path / "events.jsonl"), *debug,
                "--log-file", str(tmp_path / "log.jsonl"), cwd=tmp_path,
            ),
            run_cli("status", "--latest", "--journal", str(journal), "--output", "json",
                    *debug, cwd=tmp_path),
            run_cli("report", "--latest", "--journal", str(journal), "--format", "json",
                    "--output", str(tmp_path / "report.json"), *debug, cwd=tmp_path),
            run_cli("report", "--latest", "--journal", str(journal), "--format", "csv",
                    *debug, cwd=tmp_path),
            # The wrong key: a 403 on every call, with its error paths logged at debug.
            run_cli(
                "run", str(plan), "--yes", "--journal", str(tmp_path / "wrong.db"),
                "--events", str(tmp_path / "wrong-events.jsonl"), *debug,
                "--log-file", str(tmp_path / "wrong-log.jsonl"), cwd=tmp_path,
                env=cli_env(**{KEY_ENV: WRONG_KEY}),
            ),
        ]  # fmt: skip
        assert emu.stats()["requests"]["by_status"].get("403", 0) > 0
    assert [o.returncode for o in outputs[:5]] == [0, 0, 0, 0, 0], [o.stderr for o in outputs]
    assert outputs[5].returncode in (2, 3) and TRACEBACK not in outputs[5].stderr
    assert json.loads((tmp_path / "report.json").read_text())["nodes"]
    assert (tmp_path / "log.jsonl").stat().st_size > 0
    keys = [KEY, WRONG_KEY]
    for output in outputs:
        assert not _leaks((output.stdout + output.stderr).encode(), keys), output.args
    checked = 0
    for artefact in sorted(tmp_path.iterdir()):
        if artefact.name == "fleet.yaml" or not artefact.is_file():
            continue  # the emulator's own fleet file holds its test key, by design
        assert not _leaks(artefact.read_bytes(), keys), artefact.name
        checked += 1
    assert checked >= 6  # journals, events, logs, report at least
