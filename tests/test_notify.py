"""Webhook notifications (issue 17, section 4): received by local HTTP servers over real TCP,
in the expected sequence; a webhook that refuses connections or never answers neither fails
nor holds up the run. The bodies and the URL checks are pure functions, tested as such."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from clihelpers import cli_env, emulator_process, fleet_reimage
from runhelpers import KEY, KEY_ENV, Recorder, emulator, run_with, write_plan

from fleet_reimage import api
from fleet_reimage.engine import notify
from fleet_reimage.engine.notifybody import NOTIFIED, counts_text, notification
from fleet_reimage.errors import RefusedError

pytestmark = pytest.mark.anyio

POOLS = [{"id": "a", "nodes": 6}, {"id": "b", "nodes": 3}]
ROLLOUT = """
    waves: [1, "100%"]
    max_unavailable: 3
    health: {wait: true, poll_interval: 100ms, timeout: 20s}
    failure_budget: "100%"
"""


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


class Webhook:
    """A local webhook: keeps every JSON body it is sent, in order."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.read()))
        return web.Response(status=200, text="ok")

    def events(self) -> list[tuple[str, str | None]]:
        return [(b["event"], b.get("pool")) for b in self.bodies]


@asynccontextmanager
async def webhook_server() -> AsyncIterator[Webhook]:
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/hooks/secret-token-123", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook.url = f"http://127.0.0.1:{port}/hooks/secret-token-123"
    try:
        yield hook
    finally:
        await runner.cleanup()


@asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[str, list[int]]]:
    """Accepts connections and reads, never answers; counts the connections."""
    connections: list[int] = []

    async def hold(stream: anyio.abc.SocketStream) -> None:
        connections.append(1)
        async with stream:
            with anyio.move_on_after(60):
                async for _ in stream:
                    pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as group:
        group.start_soon(listener.serve, hold)
        try:
            yield f"http://127.0.0.1:{port}/never", connections
        finally:
            group.cancel_scope.cancel()


def refused_url() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/down"


async def test_notifications_arrive_in_order_from_both_the_option_and_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with emulator(POOLS) as emu, webhook_server() as by_option, webhook_server() as by_plan:
        plan = write_plan(tmp_path, emu.url, rollout=ROLLOUT)
        plan.write_text(plan.read_text() + "notify:\n  - url_env: FR_TEST_WEBHOOK\n")
        monkeypatch.setenv("FR_TEST_WEBHOOK", by_plan.url)
        recorder = Recorder()
        hooks = api.RunHooks(observer=recorder, notify=[by_option.url])
        with anyio.fail_after(60):
            result = await run_with(plan, tmp_path / "j.db", hooks)
        assert result.exit_code == 0
        assert result.notifications == {"sent": 2 * len(by_option.bodies), "failed": 0,
                                         "dropped": 0}  # fmt: skip
        # Exactly the notified events the run had, in the run's order, to both webhooks.
        expected = [
            (kind, fields.get("pool")) for kind, fields in recorder.events if kind in NOTIFIED
        ]
        assert by_option.events() == by_plan.events() == expected
        kinds = [kind for kind, _ in expected]
        assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
        for pool in ("a", "b"):
            mine = [k for k, p in by_option.events() if p == pool]
            assert mine == ["wave_started", "wave_completed"] * 2
        last = by_option.bodies[-1]
        assert last["healthy"] == 9 and last["run"] == result.run_id and last["plan"] == "t"
        assert last["text"] == f"fleet-reimage t (run {result.run_id}): finished, exit 0: 9 healthy"
        assert all(b["source"] == "fleet-reimage" and b["text"] for b in by_option.bodies)
        # The URLs are secrets: not in the journal.
        journal_bytes = (tmp_path / "j.db").read_bytes()
        assert b"secret-token-123" not in journal_bytes


async def test_a_webhook_that_is_down_or_never_answers_neither_fails_nor_holds_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "TIMEOUT", 0.2)
    monkeypatch.setattr(notify, "BACKOFF", 0.01)
    monkeypatch.setattr(notify, "FLUSH_LIMIT", 0.5)
    async with emulator(POOLS) as emu, silent_server() as (never, connections):
        plan = write_plan(tmp_path, emu.url, rollout=ROLLOUT)
        hooks = api.RunHooks(notify=[refused_url(), never])
        # The silent webhook is still holding its connections when the run has finished.
        with anyio.fail_after(60):
            result = await run_with(plan, tmp_path / "j.db", hooks)
        assert result.exit_code == 0 and result.counts["healthy"] == 9
        assert result.notifications is not None
        assert result.notifications["sent"] == 0
        lost = result.notifications["failed"] + result.notifications["dropped"]
        assert result.notifications["failed"] >= 2 and lost >= 2
        assert connections  # it was tried


async def test_a_wrong_webhook_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    async with emulator(POOLS) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=ROLLOUT)
        hooks = api.RunHooks(notify=["http://hooks.example.com/services/T0/B0/secret"])
        with pytest.raises(RefusedError) as refused:
            await run_with(plan, tmp_path / "j.db", hooks)
        assert "secret" not in str(refused.value) and "hooks.example.com" in str(refused.value)
        assert not (tmp_path / "j.db").exists()
        assert sum(n["reimages"] for n in emu.stats()["nodes"]) == 0


# --- pure ---------------------------------------------------------------------------------


def test_bodies_have_a_text_line_and_the_structured_fields() -> None:
    body = notification("wave_started", {"account": "prod", "pool": "render", "wave": 2, "of": 4},
                        run_id="r1", plan="patch", at=10.0)  # fmt: skip
    assert body == {"text": "fleet-reimage patch (run r1): prod/render wave 2 of 4 started",
                    "source": "fleet-reimage", "event": "wave_started", "run": "r1",
                    "plan": "patch", "time": 10.0, "account": "prod", "pool": "render",
                    "wave": 2, "of": 4}  # fmt: skip
    stop = notification("run_stopping", {"kind": "gate", "reason": "slo check failed"},
                        run_id="r1", plan="patch", at=0.0)  # fmt: skip
    assert stop is not None and stop["kind"] == "gate"
    assert stop["text"] == "fleet-reimage patch (run r1): stopping (gate): slo check failed"
    assert notification("node_healthy", {}, run_id="r1", plan="p", at=0.0) is None
    held = notification("checkpoint", {"wave": 1}, run_id="r1", plan="p", at=0.0)
    assert held is not None
    assert held["text"].endswith("wave 1 is complete in every pool: checkpoint")
    started = notification("run_started", {"run_id": "r9", "selected": 5}, run_id=None,
                           plan="p", at=0.0)  # fmt: skip
    assert started is not None and started["run"] == "r9" and "5 nodes" in started["text"]


def test_counts_text_names_the_states_there_are() -> None:
    assert counts_text({"healthy": 3, "failed": 1, "skipped": 0, "exit_code": 1}) == (
        "3 healthy, 1 failed"
    )
    assert counts_text({}) == "no node"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://127.0.0.1/x", "not an http(s) URL"),
        ("http://hooks.example.com/T/secret", "plain http is only for this machine"),
        ("https:///no-host", "not an http(s) URL"),
        ("not a url", "not an http(s) URL"),
    ],
)
def test_webhook_urls_are_checked_and_never_shown_whole(url: str, why: str) -> None:
    with pytest.raises(RefusedError) as refused:
        notify.webhooks([url])
    assert why in str(refused.value) and "secret" not in str(refused.value)


def test_accepted_webhooks_are_labelled_by_position_and_host() -> None:
    hooks = notify.webhooks(["https://hooks.slack.com/services/T/B/secret", "http://[::1]:9/x"])
    assert [h.label for h in hooks] == ["webhook 1 (hooks.slack.com)", "webhook 2 (::1)"]
    assert "secret" not in repr(hooks)


def test_plan_webhook_variables_must_be_set() -> None:
    assert notify.urls_from_environment(["A"], {"A": "https://x/y"}) == ["https://x/y"]
    with pytest.raises(RefusedError, match="environment variable B is not set"):
        notify.urls_from_environment(["A", "B"], {"A": "https://x/y", "B": ""})


def test_the_command_line_checks_the_plans_webhook_variable_where_a_run_needs_it(
    tmp_path: Path,
) -> None:
    with emulator_process(tmp_path, POOLS) as emu:
        plan = write_plan(tmp_path, emu.url, rollout=ROLLOUT)
        plan.write_text(plan.read_text() + "notify:\n  - url_env: FR_UNSET_WEBHOOK\n")
        line = len(plan.read_text().splitlines())
        env = cli_env()
        env.pop("FR_UNSET_WEBHOOK", None)
        shown = fleet_reimage("plan", str(plan), cwd=tmp_path, env=env)  # read-only: no need
        assert shown.returncode == 0, shown.stderr
        assert "notify: 1 webhook from $FR_UNSET_WEBHOOK" in shown.stdout
        checked = fleet_reimage("validate", str(plan), cwd=tmp_path, env=env)
        assert checked.returncode == 0 and "FR_UNSET_WEBHOOK is not set" in checked.stderr
        ran = fleet_reimage("run", str(plan), "--yes", "--journal", "j.db", cwd=tmp_path, env=env)
        assert ran.returncode == 2, ran.stdout + ran.stderr
        assert f"{plan}:{line}:" in ran.stderr and "FR_UNSET_WEBHOOK is not set" in ran.stderr
        assert "Traceback" not in ran.stderr
        assert sum(emu.reimages().values()) == 0
