"""Chaos: a disk that fills up mid-run, two runners on one journal, secrets in artefacts
(keys, Entra client secrets and tokens, database passwords).

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
import urllib.parse
from pathlib import Path

import pgserver
import psycopg
import pytest
from chaoshelpers import CHECKPOINT_ROLLOUT, TRACEBACK, journal_rows, run_cli
from clihelpers import cli_env, emulator_process
from fakeauthority import FakeAuthority, fake_authority
from psycopg import sql
from runhelpers import KEY, KEY_ENV, named_nodes, write_plan

# --- disk full -----------------------------------------------------------------------------

FSIZE_LIMIT = 1024 * 1024  # bytes any one file of the runner may grow to (journal and WAL)


def _small_disk() -> None:
    """In the child, before exec: files stop growing at FSIZE_LIMIT (EFBIG, no signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def test_a_full_disk_stops_the_run_and_nothing_was_sent_unjournaled(tmp_path: Path) -> None:
    fleet = named_nodes("p", 1500)
    with emulator_process(tmp_path, [{"id": "p", "nodes": fleet}]) as emu:
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
        assert 0 < len(sent) < len(fleet), "the limit must be hit in the middle of the run"
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
    assert counts == dict.fromkeys(fleet, 1)


# --- two runners on one journal --------------------------------------------------------------


def test_a_second_runner_on_the_same_journal_refuses_and_names_the_holder(
    tmp_path: Path,
) -> None:
    fleet = named_nodes("p", 40)
    with emulator_process(
        tmp_path,
        [{"id": "p", "nodes": fleet}],
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
            # Frozen while the others try: it holds the journal however long they take.
            first.send_signal(signal.SIGSTOP)
            contenders = [
                ("run", str(plan), "--yes"),
                ("run", str(other), "--yes"),
                ("resume",),
                ("resume", "--force-plan"),
            ]
            try:
                for args in contenders:
                    second = run_cli(*args, "--journal", str(journal), cwd=tmp_path)
                    assert second.returncode == 2, (args, second.stdout, second.stderr)
                    assert TRACEBACK not in second.stderr
                    assert f"in use by {holder} (lock " in second.stderr, second.stderr
            finally:
                first.send_signal(signal.SIGCONT)
            out, err = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
                first.communicate(timeout=10)
        assert first.returncode == 0, out + err
        counts = emu.reimages()
    assert counts == dict.fromkeys(fleet, 1)


# --- secrets ---------------------------------------------------------------------------------
#
# Every secret a run handles, in every artefact a run leaves: the Shared Key (right and
# wrong), an Entra client secret and the tokens it buys (right and refused), and the
# PostgreSQL journal's password.

WRONG_KEY = base64.b64encode(bytes(range(100, 164))).decode()
CLIENT_SECRET = "Cs8~fleetReimageClientSecret.0123456789"
TOKEN = "eyJ0eXAiOiJKV1QifQ.fleetReimageTestToken.c2lnbmF0dXJl"
WRONG_TOKEN = "eyJ0eXAiOiJKV1QifQ.fleetReimageWrongToken.c2lnbmF0dXJl"
DB_PASSWORD = "DbPw7fleetReimage4journal"


def _secret_forms(key: str) -> list[bytes]:
    """The key as base64 (case-folded), without padding, url-safe, the raw bytes, hex."""
    raw = base64.b64decode(key)
    forms = {key, key.rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    return [f.lower().encode() for f in forms] + [raw, raw.hex().encode()]


def _text_forms(secret: str) -> list[bytes]:
    """A text secret (token, client secret, password) as is and URL-encoded, case-folded."""
    return [f.lower().encode() for f in {secret, urllib.parse.quote(secret, safe="")}]


def _leaks(blob: bytes, keys: list[str], texts: tuple[str, ...] = ()) -> list[str]:
    folded = blob.lower()
    found = []
    forms = [(key, form) for key in keys for form in _secret_forms(key)]
    forms += [(text, form) for text in texts for form in _text_forms(text)]
    for secret, form in forms:
        if form in folded or form in blob:
            found.append(f"{secret[:6]}... as {form[:12]!r}")
    return found


def _entra_plan(folder: Path, emu_url: str, authority: str) -> Path:
    """A plan whose account signs in with a client secret (custom cloud: a local authority)."""
    plan = write_plan(folder, emu_url, name="entra")
    shared_key = f"auth: {{type: shared-key, account: emu, key_env: {KEY_ENV}}}"
    entra = (
        f"auth: {{type: entra, credential: environment, authority: '{authority}',"
        " audience: 'https://batch.emulator.test/'}\n    custom_cloud: true"
    )
    plan.write_text(plan.read_text(encoding="utf-8").replace(shared_key, entra))
    return plan


def _entra_env(authority: FakeAuthority) -> dict[str, str]:
    return cli_env(
        AZURE_TENANT_ID="00000000-0000-0000-0000-00000000000a",
        AZURE_CLIENT_ID="00000000-0000-0000-0000-00000000000b",
        AZURE_CLIENT_SECRET=CLIENT_SECRET,
        SSL_CERT_FILE=str(authority.cafile),
    )


def test_no_form_of_any_secret_in_any_artefact(tmp_path: Path) -> None:
    with (
        fake_authority(tmp_path.parent / f"{tmp_path.name}-authority", TOKEN) as authority,
        emulator_process(
            tmp_path,
            [{"id": "p", "nodes": 24}],
            account={"name": "emu", "key": KEY, "bearer_tokens": [TOKEN]},
            faults={
                "seed": 9,
                "reimage": {
                    "throttle": 0.1,
                    "server_error": 0.1,
                    "reset_after": 0.1,
                    "retry_after": "50ms",
                },
            },
        ) as emu,
    ):
        plan = write_plan(tmp_path, emu.url)
        entra = _entra_plan(tmp_path, emu.url, authority.url)
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
            # Entra: the client secret goes to the (custom) sign-in host, the token to Batch.
            run_cli(
                "run", str(entra), "--yes", "--journal", str(tmp_path / "entra.db"),
                "--events", str(tmp_path / "entra-events.jsonl"), *debug,
                "--log-file", str(tmp_path / "entra-log.txt"), "--log-format", "console",
                cwd=tmp_path, env=_entra_env(authority),
            ),
            # The wrong key: a 403 on every call, with its error paths logged at debug.
            run_cli(
                "run", str(plan), "--yes", "--journal", str(tmp_path / "wrong.db"),
                "--events", str(tmp_path / "wrong-events.jsonl"), *debug,
                "--log-file", str(tmp_path / "wrong-log.jsonl"), cwd=tmp_path,
                env=cli_env(**{KEY_ENV: WRONG_KEY}),
            ),
        ]  # fmt: skip
        authority.token = WRONG_TOKEN  # a token Batch refuses: 401, a refresh, 401 again
        outputs.append(
            run_cli(
                "run", str(entra), "--yes", "--journal", str(tmp_path / "wrong-entra.db"),
                *debug, "--log-file", str(tmp_path / "wrong-entra-log.jsonl"),
                cwd=tmp_path, env=_entra_env(authority),
            )
        )  # fmt: skip
        by_status = emu.stats()["requests"]["by_status"]
        assert by_status.get("403", 0) > 0 and by_status.get("401", 0) > 0, by_status
    assert [o.returncode for o in outputs[:6]] == [0] * 6, [o.stderr for o in outputs]
    for wrong in (outputs[6], outputs[7]):
        assert wrong.returncode in (2, 3) and TRACEBACK not in wrong.stderr, wrong.stderr
    assert {form["client_secret"][0] for form in authority.forms} == {CLIENT_SECRET}
    assert json.loads((tmp_path / "report.json").read_text())["nodes"]
    assert (tmp_path / "log.jsonl").stat().st_size > 0
    keys, texts = [KEY, WRONG_KEY], (CLIENT_SECRET, TOKEN, WRONG_TOKEN)
    for output in outputs:
        assert not _leaks((output.stdout + output.stderr).encode(), keys, texts), output.args
    checked = 0
    for artefact in sorted(tmp_path.iterdir()):
        if artefact.name == "fleet.yaml" or not artefact.is_file():
            continue  # the emulator's own fleet file holds its test key, by design
        assert not _leaks(artefact.read_bytes(), keys, texts), artefact.name
        checked += 1
    assert checked >= 12  # journals, events, logs (both formats), report at least


def _journal_dump(url: str) -> bytes:
    """Every row of every table of the journal's schema, as text."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'fleet_reimage' ORDER BY table_name"
        ).fetchall()
        assert len(tables) >= 5, tables
        rows = [
            str(row)
            for (table,) in tables
            for row in conn.execute(
                sql.SQL("SELECT t::text FROM fleet_reimage.{} t").format(sql.Identifier(table))
            ).fetchall()
        ]
    return "\n".join(rows).encode()


@pytest.mark.postgres
def test_no_database_password_in_any_artefact(tmp_path: Path, pg_server: pgserver.PgServer) -> None:
    """A PostgreSQL run with the password in the URL, given with --journal and in
    $FLEET_REIMAGE_JOURNAL: stdout, stderr, logs (both formats), events, every report format,
    status, the refusals and the journal's own rows never hold it."""
    with (
        pgserver.fresh_database(pg_server) as database,
        emulator_process(tmp_path, [{"id": "p", "nodes": 12}]) as emu,
    ):
        url = pgserver.with_password(database, DB_PASSWORD)  # trust auth: ignored
        env = cli_env(FLEET_REIMAGE_JOURNAL=url)
        plan = write_plan(tmp_path, emu.url)
        held = write_plan(tmp_path, emu.url, name="held", rollout=CHECKPOINT_ROLLOUT)
        debug = ("--log-level", "debug")
        outputs = [
            run_cli("run", str(plan), "--yes", "--journal", url, *debug,
                    "--events", str(tmp_path / "events.jsonl"),
                    "--log-file", str(tmp_path / "log.jsonl"), cwd=tmp_path),
            # Stops at its checkpoint: "to continue: fleet-reimage resume ... --journal ..."
            run_cli("run", str(held), "--yes", *debug, "--log-format", "console",
                    "--log-file", str(tmp_path / "held-log.txt"), cwd=tmp_path, env=env),
            # Refused: that plan's run is unfinished ("resume it with ... --journal ...").
            run_cli("run", str(held), "--yes", cwd=tmp_path, env=env),
            run_cli("resume", *debug, "--events", str(tmp_path / "resume-events.jsonl"),
                    cwd=tmp_path, env=env),
            run_cli("resume", cwd=tmp_path, env=env),  # "already finished ... --journal ..."
            run_cli("status", cwd=tmp_path, env=env),
            run_cli("status", "--journal", url, "--output", "json", cwd=tmp_path),
            run_cli("status", "--latest", cwd=tmp_path, env=env),
            run_cli("status", "--latest", "--output", "json", cwd=tmp_path, env=env),
            run_cli("status", "r-no-such-run", cwd=tmp_path, env=env),
            run_cli("report", cwd=tmp_path, env=env),  # refused: which run?
            *(
                run_cli("report", "--latest", "--format", fmt, cwd=tmp_path, env=env)
                for fmt in ("table", "json", "csv", "markdown")
            ),
            run_cli("report", "--latest", "--journal", url, "--format", "markdown",
                    "--output", str(tmp_path / "report.md"), cwd=tmp_path),
        ]  # fmt: skip
        dump = _journal_dump(database)
    codes = [o.returncode for o in outputs]
    assert codes == [0, 3, 2, 0, 0, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 0], [
        (o.args[3:5], o.stderr[-300:]) for o in outputs
    ]
    assert "to continue: fleet-reimage resume" in outputs[1].stdout
    assert "already finished" in outputs[4].stdout
    for output in outputs:
        assert TRACEBACK not in output.stderr, output.stderr
        assert not _leaks((output.stdout + output.stderr).encode(), [], (DB_PASSWORD,)), (
            output.args[3:5],
            output.stdout,
            output.stderr,
        )
    assert DB_PASSWORD.encode() not in url.encode().replace(DB_PASSWORD.encode(), b"") + dump
    artefacts = [p for p in sorted(tmp_path.iterdir()) if p.is_file()]
    assert len(artefacts) >= 7, artefacts  # plans, fleet, logs, events, report
    for artefact in artefacts:
        assert not _leaks(artefact.read_bytes(), [], (DB_PASSWORD,)), artefact.name
