"""Messages that say where and what happened (issue 16, section 5).

An account that refuses us is named with its endpoint and what to check; an endpoint that
cannot be reached is retried aloud ("retrying (attempt 3, next in 4 s)") and the last word
says nothing answered; an unset ``key_env`` is a plan problem with its line, and a warning
in ``validate``. (The journal lock naming the run is in ``test_chaos_runs``.)
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from clihelpers import cli_env, emulator_process, fleet_reimage
from runhelpers import KEY_ENV, write_plan

from fleet_reimage.batch.errors import AuthFailed, RequestInDoubt, RequestNotSent, Throttled
from fleet_reimage.batch.explain import describe, locate, retry_message
from fleet_reimage.batch.retry import RetryCounters, RetryPolicy
from fleet_reimage.rollout.outcomes import NodeRetryContext, StopRun, after_action_error


def test_describe_says_where_and_what_happened() -> None:
    refused = locate(
        AuthFailed(403, code="AuthenticationFailed", message="Server failed to authenticate"),
        account="prod-west",
        endpoint="https://prodbatch.westus2.batch.azure.com",
        credential="auth.account prodbatch, key from $BATCH_KEY",
    )
    assert describe(refused) == (
        "account prod-west (https://prodbatch.westus2.batch.azure.com) refused our "
        "credentials: HTTP 403: AuthenticationFailed: Server failed to authenticate. Check the "
        "account name and the key (auth.account prodbatch, key from $BATCH_KEY): a misspelt "
        "account name and a wrong or rotated key are both answered 403 AuthenticationFailed"
    )
    entra = locate(AuthFailed(401), account="cn", endpoint="https://x.batch.chinacloudapi.cn",
                   credential="Microsoft Entra ID, credential azure-cli")  # fmt: skip
    assert "Check that the identity (Microsoft Entra ID, credential azure-cli) has a role" in (
        describe(entra)
    )
    unreachable = locate(
        RequestNotSent("could not connect: ConnectionRefusedError: refused"),
        account="prod-west",
        endpoint="https://prodbatch.westus2.batch.azure.com",
    )
    said = describe(unreachable)
    assert said.startswith(
        "could not connect to https://prodbatch.westus2.batch.azure.com (account prod-west): "
        "ConnectionRefusedError: refused; nothing answered."
    )
    assert "answered:" not in said  # nothing answered
    silent = locate(RequestInDoubt("read timed out"), account="a", endpoint="https://e")
    assert describe(silent) == "account a (https://e) did not answer in time: read timed out"


def test_a_run_stopped_by_auth_names_the_account() -> None:
    error = locate(
        AuthFailed(403, code="AuthenticationFailed"),
        account="emu",
        endpoint="http://127.0.0.1:1",
        credential="auth.account emux, key from $K",
    )
    ctx = NodeRetryContext(
        action="reimage", counters=RetryCounters(), maybe_applied=False, busy_for=None,
        busy_timeout=1.0, policy=RetryPolicy(),
    )  # fmt: skip
    step = after_action_error(error, ctx, 0.5)
    assert isinstance(step, StopRun)
    assert step.reason.startswith("authentication failed: account emu (http://127.0.0.1:1) ")
    assert "auth.account emux, key from $K" in step.reason


def test_retry_messages_count_and_say_when() -> None:
    assert (
        retry_message("https://e", RequestNotSent("could not connect: DNS lookup failed"), 3, 4.2)
        == "could not connect to https://e (DNS lookup failed): retrying (attempt 3, next in 4.2 s)"
    )
    throttled = Throttled(429, code="TooManyRequests", message="slow down")
    assert retry_message("https://e", throttled, 1, 12.0) == (
        "https://e answered HTTP 429: TooManyRequests: slow down: retrying (attempt 1, next in "
        "12 s)"
    )
    # A rate limit's Retry-After of a few milliseconds: not "next in 0.0 s".
    assert retry_message("https://e", throttled, 2, 0.003).endswith("(attempt 2, next in 3 ms)")


def test_a_misspelt_account_name_is_named_with_its_endpoint(tmp_path: Path) -> None:
    with emulator_process(tmp_path, [{"id": "p", "nodes": 2}]) as emu:
        plan = write_plan(tmp_path, emu.url)
        plan.write_text(plan.read_text().replace("account: emu,", "account: emux,"))
        for args in (["plan", str(plan)], ["run", str(plan), "--yes", "--journal", "j.db"]):
            result = fleet_reimage(*args, cwd=tmp_path)
            assert result.returncode == 3, result.stderr
            last = result.stderr.strip().splitlines()[-1]
            assert last.startswith(
                f"fleet-reimage: account emu ({emu.url}) refused our credentials: HTTP 403: "
                "AuthenticationFailed: "
            ), last
            assert f"(auth.account emux, key from ${KEY_ENV})" in last
        assert emu.stats()["requests"]["mutating"] == 0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_endpoint_is_retried_aloud_and_nothing_claims_an_answer(
    tmp_path: Path,
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    plan = write_plan(tmp_path, endpoint)
    result = fleet_reimage("plan", str(plan), cwd=tmp_path, timeout=120)
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    warnings = [json.loads(line) for line in lines if line.startswith("{")]
    assert warnings and all(w["level"] == "warning" for w in warnings)
    said = [w["event"] for w in warnings]
    assert said[0].startswith(f"could not connect to {endpoint} (")
    next_in = r"next in (\d+(\.\d)? s|\d+ ms|at once)"  # full jitter: a wait may be short
    assert re.search(rf": retrying \(attempt 1, {next_in}\)$", said[0]), said[0]
    assert [w["attempt"] for w in warnings] == list(range(1, len(warnings) + 1))
    assert lines[-1].startswith(f"fleet-reimage: could not connect to {endpoint} (account emu): ")
    assert "nothing answered" in lines[-1] and "the Batch service answered" not in result.stderr


@pytest.mark.parametrize("command", ["plan", "run"])
def test_an_unset_key_variable_is_a_plan_problem_with_its_line(
    tmp_path: Path, command: str
) -> None:
    plan = write_plan(tmp_path, "https://acct.westus2.batch.azure.com")
    env = cli_env()
    env.pop(KEY_ENV)
    extra = ["--yes", "--journal", "j.db"] if command == "run" else []
    result = fleet_reimage(command, str(plan), *extra, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    line = next(n for n, text in enumerate(plan.read_text().splitlines(), 1) if KEY_ENV in text)
    column = plan.read_text().splitlines()[line - 1].index(KEY_ENV) + 1
    assert (
        f"{plan}:{line}:{column}: error: accounts[0].auth.key_env: environment variable "
        f"{KEY_ENV} is not set" in result.stderr
    )
    assert "Traceback" not in result.stderr
    validate = fleet_reimage("validate", str(plan), cwd=tmp_path, env=env)
    assert validate.returncode == 0, validate.stderr  # offline: the variable may be set later
    assert (
        f"{plan}:{line}:{column}: warning: accounts[0].auth.key_env: environment variable "
        f"{KEY_ENV} is not set" in validate.stderr
    )
    assert "valid" in validate.stdout
    assert "warning" not in fleet_reimage("validate", str(plan), cwd=tmp_path).stderr
