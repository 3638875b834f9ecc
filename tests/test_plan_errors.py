"""Bad plans: each mistake gives one clear error, at the right line, with the right key path.

Every case is a whole plan. The line that must be reported carries the comment ``#<``; the
test finds it, so a case reads as the plan an operator would write.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleet_reimage.errors import InputError, Problem
from fleet_reimage.plan import parse_plan

KEY = "k" * 10 + "Q8Zx4/vT2mN+9pL1rS7yB3wE6uH0jD5fG8iK2oP4aC6eV1nM3qW7zX9bY0tR5sU8lJ2hF4gA+/Kk=="

HEAD = """\
version: 1
name: test-plan
"""
ACCOUNT = """\
accounts:
  - name: west
    endpoint: https://acct.westus2.batch.azure.com
    auth: {type: shared-key, account: acct, key_env: BATCH_KEY}
    pools:
      - match: "render-*"
"""
GOOD = HEAD + ACCOUNT


@pytest.fixture
def plan_dir(tmp_path: Path) -> Path:
    (tmp_path / "fleet.yaml").write_text("fleet: {}\n")
    key = tmp_path / "batch.key"
    key.write_text("not-a-real-key\n")
    key.chmod(0o600)
    (tmp_path / "keys").mkdir()
    return tmp_path


def problems_of(text: str, plan_dir: Path) -> list[Problem]:
    with pytest.raises(InputError) as caught:
        parse_plan(text, plan_dir / "plan.yaml", environ={"BATCH_KEY": "x"})
    assert caught.value.problems, "an InputError must carry problems"
    return caught.value.problems


def marked_line(text: str) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith("#<")]
    assert len(lines) == 1, "each case marks exactly one line"
    return lines[0]


# (case id, plan text with the "#<" line, expected key path, words the message must hold)
CASES: list[tuple[str, str, str, str]] = [
    ("typo-top-key", GOOD + "acton: reboot  #<\n", "acton", "Did you mean 'action'?"),
    ("unknown-action", GOOD + "action: reimaging  #<\n", "action", "Did you mean 'reimage'?"),
    ("unknown-option", GOOD + "option: requeu  #<\n", "option", "Allowed: requeue, terminate"),
    ("version-2", "version: 2  #<\nname: t\n" + ACCOUNT, "version", "reads version 1"),
    ("version-text", "version: '1'  #<\nname: t\n" + ACCOUNT, "version", "expected the number 1"),
    ("name-space", "version: 1\nname: patch night  #<\n" + ACCOUNT, "name", "not a valid plan"),
    ("name-number", "version: 1\nname: 2026  #<\n" + ACCOUNT, "name", "(quote it)"),
    ("missing-name", "version: 1  #<\n" + ACCOUNT, "", "missing required key 'name'"),
    ("accounts-empty", HEAD + "accounts: []  #<\n", "accounts", "the list is empty"),
    ("accounts-map", HEAD + "accounts: {west: 1}  #<\n", "accounts", "expected a list"),
    (
        "duplicate-account",
        GOOD + "  - name: WEST  #<\n    emulator: fleet.yaml\n    pools: [{match: a}]\n",
        "accounts[1].name",
        "already used at line 4",
    ),
    (
        "both-endpoint-emulator",
        HEAD + "accounts:\n  - name: w  #<\n    endpoint: https://a.b.batch.azure.com\n"
        "    emulator: fleet.yaml\n    auth: {type: entra}\n    pools: [{match: a}]\n",
        "accounts[0]",
        "exactly one of endpoint",
    ),
    (
        "neither-endpoint-emulator",
        HEAD + "accounts:\n  - name: w  #<\n    pools: [{match: a}]\n",
        "accounts[0]",
        "neither is given",
    ),
    (
        "typo-endpoint",
        HEAD + "accounts:\n  - name: w\n    emulator: fleet.yaml\n"
        "    endpiont: https://a.b  #<\n    pools: [{match: a}]\n",
        "accounts[0].endpiont",
        "Did you mean 'endpoint'?",
    ),
    (
        "missing-auth",
        HEAD + "accounts:\n  - name: w  #<\n    endpoint: https://a.b.batch.azure.com\n"
        "    pools: [{match: a}]\n",
        "accounts[0]",
        "missing required key 'auth'",
    ),
    (
        "http-remote",
        GOOD.replace("https://acct.westus2", "http://acct.westus2").replace(
            "azure.com", "azure.com  #<"
        ),
        "accounts[0].endpoint",
        "plain http:// is allowed only for a loopback host",
    ),
    (
        "endpoint-no-scheme",
        GOOD.replace("https://", "").replace("azure.com", "azure.com  #<"),
        "accounts[0].endpoint",
        "expected an absolute https:// URL",
    ),
    (
        "endpoint-query",
        GOOD.replace("azure.com", "azure.com/?sig=abc  #<"),
        "accounts[0].endpoint",
        "must not have a query",
    ),
    (
        "endpoint-userinfo",
        GOOD.replace("https://", "https://admin:hunter2@").replace("azure.com", "azure.com  #<"),
        "accounts[0].endpoint",
        "must not contain a user name or password",
    ),
    (
        "endpoint-bad-port",
        GOOD.replace("azure.com", "azure.com:99999  #<"),
        "accounts[0].endpoint",
        "not a valid URL",
    ),
    (
        "auth-type",
        GOOD.replace("type: shared-key", "type: sharedkey").replace("BATCH_KEY}", "BATCH_KEY} #<"),
        "accounts[0].auth.type",
        "Did you mean 'shared-key'?",
    ),
    (
        "auth-both-keys",
        GOOD.replace("BATCH_KEY}", "BATCH_KEY, key_file: batch.key}  #<"),
        "accounts[0].auth",
        "both are given",
    ),
    (
        "auth-no-key",
        GOOD.replace(", key_env: BATCH_KEY}", "}  #<"),
        "accounts[0].auth",
        "neither is given",
    ),
    (
        "auth-missing-account",
        GOOD.replace("account: acct, ", "").replace("BATCH_KEY}", "BATCH_KEY}  #<"),
        "accounts[0].auth",
        "missing required key 'account'",
    ),
    (
        "auth-account-name",
        GOOD.replace("account: acct", "account: Acct_1").replace("BATCH_KEY}", "BATCH_KEY} #<"),
        "accounts[0].auth.account",
        "3 to 24 lowercase letters and digits",
    ),
    (
        "key-env-name",
        GOOD.replace("key_env: BATCH_KEY}", "key_env: BATCH-KEY}  #<"),
        "accounts[0].auth.key_env",
        "is not an environment variable name",
    ),
    (
        "key-env-unset",
        GOOD.replace("key_env: BATCH_KEY}", "key_env: OTHER_KEY}  #<"),
        "accounts[0].auth.key_env",
        "OTHER_KEY is not set",
    ),
    (
        "key-file-missing",
        GOOD.replace("key_env: BATCH_KEY}", "key_file: nope.key}  #<"),
        "accounts[0].auth.key_file",
        "nope.key does not exist (relative paths are resolved against the plan file's folder)",
    ),
    (
        "key-file-directory",
        GOOD.replace("key_env: BATCH_KEY}", "key_file: keys}  #<"),
        "accounts[0].auth.key_file",
        "is not a regular file",
    ),
    (
        "inline-key",
        GOOD.replace("key_env: BATCH_KEY}", "key: " + KEY + "}  #<"),
        "accounts[0].auth.key",
        "name it with key_env, or in a file readable only by you (chmod 600)",
    ),
    (
        "inline-account-key",
        GOOD.replace("key_env: BATCH_KEY}", "account_key: abc}  #<"),
        "accounts[0].auth.account_key",
        "key_env",
    ),
    (
        "key-in-key-env",
        GOOD.replace("key_env: BATCH_KEY}", "key_env: " + KEY + "}  #<"),
        "accounts[0].auth.key_env",
        "looks like a key or secret written inline",
    ),
    (
        "key-outside-auth",
        GOOD.replace("    pools:", "    account_key: abc  #<\n    pools:"),
        "accounts[0].account_key",
        "unknown key 'account_key'. Never write a secret in the plan",
    ),
    (
        "entra-client-secret",
        GOOD.replace(
            "{type: shared-key, account: acct, key_env: BATCH_KEY}",
            "{type: entra, client_secret: 'abc'}  #<",
        ),
        "accounts[0].auth.client_secret",
        "credential: environment",
    ),
    (
        "entra-password-nested",
        GOOD.replace(
            "{type: shared-key, account: acct, key_env: BATCH_KEY}",
            "\n      type: entra\n      extra:\n        password: x  #<",
        ),
        "accounts[0].auth.extra.password",
        "key_file",
    ),
    (
        "entra-credential",
        GOOD.replace(
            "{type: shared-key, account: acct, key_env: BATCH_KEY}",
            "{type: entra, credential: azcli}  #<",
        ),
        "accounts[0].auth.credential",
        "Allowed: default, azure-cli",
    ),
    (
        "entra-client-id",
        GOOD.replace(
            "{type: shared-key, account: acct, key_env: BATCH_KEY}",
            "{type: entra, credential: managed-identity, client_id: my-app}  #<",
        ),
        "accounts[0].auth.client_id",
        "a GUID",
    ),
    (
        "pools-empty",
        GOOD.replace('\n      - match: "render-*"', " []  #<"),
        "accounts[0].pools",
        "the list is empty",
    ),
    (
        "pool-as-string",
        GOOD.replace('- match: "render-*"', '- "render-*"  #<'),
        "accounts[0].pools[0]",
        "write: - match: render-*",
    ),
    (
        "pool-match-chars",
        GOOD.replace('"render-*"', '"render a"  #<'),
        "accounts[0].pools[0].match",
        "is not a pool id or glob",
    ),
    (
        "pool-missing-match",
        GOOD.replace('match: "render-*"', "nodes: {}  #<"),
        "accounts[0].pools[0]",
        "missing required key 'match'",
    ),
    (
        "pool-duplicate",
        GOOD + '      - match: "render-*"  #<\n',
        "accounts[0].pools[1]",
        "already listed at line 8",
    ),
    (
        "include-empty",
        GOOD + "        nodes: {include: []}  #<\n",
        "accounts[0].pools[0].nodes.include",
        "the list is empty; give at least one node id glob",
    ),
    (
        "exclude-star",
        GOOD + "        nodes: {exclude: ['*']}  #<\n",
        "accounts[0].pools[0].nodes.exclude",
        "leaves no node selected",
    ),
    (
        "states-empty",
        GOOD + "        nodes: {states: []}  #<\n",
        "accounts[0].pools[0].nodes.states",
        "the list is empty",
    ),
    (
        "state-typo",
        GOOD + "        nodes:\n          states:\n            - idle\n            - runing  #<\n",
        "accounts[0].pools[0].nodes.states[1]",
        "unknown node state 'runing'. Did you mean 'running'?",
    ),
    (
        "nodes-typo",
        GOOD + "        nodes: {exclud: [a]}  #<\n",
        "accounts[0].pools[0].nodes.exclud",
        "Did you mean 'exclude'?",
    ),
    (
        "booted-before-naive",
        GOOD + "        nodes: {booted_before: 2026-11-20T00:00:00}  #<\n",
        "accounts[0].pools[0].nodes.booted_before",
        "needs a timezone",
    ),
    (
        "booted-before-date",
        GOOD + "        nodes: {booted_before: 2026-11-20}  #<\n",
        "accounts[0].pools[0].nodes.booted_before",
        "a date alone is ambiguous",
    ),
    (
        "booted-before-impossible",
        GOOD + "        nodes: {booted_before: 2026-02-30T00:00:00Z}  #<\n",
        "",
        "day is out of range for month",
    ),
    (
        "booted-before-out-of-range",
        GOOD + "        nodes: {booted_before: 0001-01-01T00:00:00+01:00}  #<\n",
        "accounts[0].pools[0].nodes.booted_before",
        "out of range",
    ),
    (
        "emulator-missing",
        HEAD + "accounts:\n  - name: w\n    emulator: fleets/none.yaml  #<\n"
        "    pools: [{match: a}]\n",
        "accounts[0].emulator",
        "fleets/none.yaml does not exist",
    ),
    (
        "waves-decrease",
        GOOD + "rollout:\n  waves: [5, 2]  #<\n",
        "rollout.waves[1]",
        "must not decrease: 2 comes after 5",
    ),
    (
        "waves-after-all",
        GOOD + "rollout:\n  waves: ['100%', 5]  #<\n",
        "rollout.waves[1]",
        'nothing can follow "100%"',
    ),
    (
        "waves-zero",
        GOOD + "rollout:\n  waves: [0, '50%']  #<\n",
        "rollout.waves[0]",
        "must be at least 1",
    ),
    (
        "waves-150",
        GOOD + "rollout:\n  waves: [1, '150%']  #<\n",
        "rollout.waves[1]",
        "(0% to 100%)",
    ),
    (
        "waves-scalar",
        GOOD + "rollout:\n  waves: '25%'  #<\n",
        "rollout.waves",
        "expected a list of wave targets",
    ),
    (
        "waves-float",
        GOOD + "rollout:\n  waves: [0.5]  #<\n",
        "rollout.waves[0]",
        "got the number 0.5",
    ),
    (
        "max-unavailable-0",
        GOOD + "rollout:\n  max_unavailable: 0%  #<\n",
        "rollout.max_unavailable",
        "must be at least 1",
    ),
    (
        "budget-negative",
        GOOD + "rollout:\n  failure_budget: -1  #<\n",
        "rollout.failure_budget",
        "cannot be negative",
    ),
    (
        "pause-bare-number",
        GOOD + "rollout:\n  pause_between_waves: 30  #<\n",
        "rollout.pause_between_waves",
        "a bare number has no unit",
    ),
    (
        "pause-too-long",
        GOOD + "rollout:\n  pause_between_waves: 2d  #<\n",
        "rollout.pause_between_waves",
        "must be from 0s to 24h",
    ),
    (
        "health-timeout-zero",
        GOOD + "rollout:\n  health: {timeout: 0s}  #<\n",
        "rollout.health.timeout",
        "longer than 0s",
    ),
    (
        "health-poll-long",
        GOOD + "rollout:\n  health: {timeout: 1m, poll_interval: 2m}  #<\n",
        "rollout.health.poll_interval",
        "must not be longer than health.timeout",
    ),
    (
        "health-wait-text",
        GOOD + "rollout:\n  health:\n    wait: 'yes'  #<\n",
        "rollout.health.wait",
        "expected true or false",
    ),
    (
        "ready-states-empty",
        GOOD + "rollout:\n  health: {ready_states: []}  #<\n",
        "rollout.health.ready_states",
        "the list is empty",
    ),
    (
        "deadline-naive",
        GOOD + "rollout:\n  deadline: '2026-11-26 06:00'  #<\n",
        "rollout.deadline",
        "needs a timezone",
    ),
    (
        "deadline-garbage",
        GOOD + "rollout:\n  deadline: tomorrow  #<\n",
        "rollout.deadline",
        "expected a date and time",
    ),
    (
        "confirm-zero",
        GOOD + "rollout:\n  confirm_after_wave: 0  #<\n",
        "rollout.confirm_after_wave",
        "must be from 1 to 1",
    ),
    (
        "confirm-beyond",
        GOOD + "rollout:\n  waves: [1, 5]\n  confirm_after_wave: 4  #<\n",
        "rollout.confirm_after_wave",
        "there are only 3 waves",
    ),
    ("rollout-null", GOOD + "rollout:  #<\n", "rollout", "got nothing (an empty value)"),
    (
        "concurrency-0",
        GOOD + "execution:\n  concurrency: 0  #<\n",
        "execution.concurrency",
        "must be from 1 to 1024, got 0",
    ),
    (
        "concurrency-big",
        GOOD + "execution:\n  concurrency: 5000  #<\n",
        "execution.concurrency",
        "must be from 1 to 1024",
    ),
    (
        "concurrency-text",
        GOOD + "execution:\n  concurrency: '64'  #<\n",
        "execution.concurrency",
        "expected a whole number",
    ),
    (
        "per-account-over",
        GOOD + "execution:\n  concurrency: 8\n  per_account_concurrency: 9  #<\n",
        "execution.per_account_concurrency",
        "not be more than execution.concurrency (8)",
    ),
    (
        "per-account-over-default",
        GOOD + "execution:\n  per_account_concurrency: 100  #<\n",
        "execution.per_account_concurrency",
        "not be more than execution.concurrency (64)",
    ),
    (
        "request-timeout-long",
        GOOD + "execution:\n  request_timeout: 1h  #<\n",
        "execution.request_timeout",
        "must be from 0s to 10m",
    ),
    (
        "api-version-unknown",
        GOOD + "execution:\n  api_version: 2024-02-01.19.0  #<\n",
        "execution.api_version",
        "Allowed: 2024-07-01.20.0, 2025-06-01",
    ),
    (
        "api-version-typo",
        GOOD + "execution:\n  api_version: '2025-6-01'  #<\n",
        "execution.api_version",
        "Did you mean '2025-06-01'?",
    ),
    (
        "api-version-number",
        GOOD + "execution:\n  api_version: 2025  #<\n",
        "execution.api_version",
        "one of 2024-07-01.20.0, 2025-06-01",
    ),
    (
        "retry-attempts",
        GOOD + "execution:\n  retry: {max_attempts: 0}  #<\n",
        "execution.retry.max_attempts",
        "must be from 1 to 100",
    ),
    (
        "retry-backoff-order",
        GOOD + "execution:\n  retry: {initial_backoff: 2m, max_backoff: 1m}  #<\n",
        "execution.retry.max_backoff",
        "must be at least initial_backoff (120s)",
    ),
    (
        "retry-zero-backoff",
        GOOD + "execution:\n  retry: {initial_backoff: 0s}  #<\n",
        "execution.retry.initial_backoff",
        "must be longer than 0s",
    ),
    (
        "retry-typo",
        GOOD + "execution:\n  retry: {max_attempt: 3}  #<\n",
        "execution.retry.max_attempt",
        "Did you mean 'max_attempts'?",
    ),
    ("duplicate-key", GOOD + "name: again  #<\n", "name", "duplicate key 'name' (first at line 2)"),
    ("not-yaml", GOOD + "rollout: @home  #<\n", "", "not valid YAML"),
    ("root-list", "- version: 1  #<\n", "", "expected a mapping with keys such as version"),
]


@pytest.mark.parametrize(
    ("text", "path", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_one_clear_error(text: str, path: str, words: str, plan_dir: Path) -> None:
    problems = problems_of(text, plan_dir)
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1, "\n".join(p.render() for p in errors)
    error = errors[0]
    assert error.line == marked_line(text), error.render()
    assert error.path == path
    assert words in error.message
    assert error.file == str(plan_dir / "plan.yaml")
    assert error.column is not None and error.column >= 1


def test_case_ids_are_unique() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_rendered_error_reads_as_file_line_column_path_message(plan_dir: Path) -> None:
    text = GOOD + "rollout:\n  waves: [5, 2]\n"
    error = problems_of(text, plan_dir)[0]
    assert error.render() == (
        f"{plan_dir / 'plan.yaml'}:10:14: error: rollout.waves[1]: waves are cumulative targets "
        "and must not decrease: 2 comes after 5 (waves[0])"
    )


def test_secrets_are_never_echoed(plan_dir: Path) -> None:
    placements = [
        "key_env: BATCH_KEY, key: " + KEY,
        "key_env: " + KEY,
        "key_file: " + KEY,
        "key_env: BATCH_KEY, extra: [" + KEY + "]",
        "key_env: BATCH_KEY, account_key: hunter2-hunter2",
        "key_env: BATCH_KEY, nested: {token: hunter2-hunter2}",
    ]
    for placement in placements:
        text = GOOD.replace("key_env: BATCH_KEY", placement)
        rendered = InputError(problems_of(text, plan_dir)).render()
        assert "name it with key_env" in rendered and "key_file" in rendered
        assert KEY not in rendered and KEY[:40] not in rendered
        assert "hunter2" not in rendered
    # Secret-looking values elsewhere in the plan are not shown either.
    rendered = InputError(problems_of(GOOD.replace("test-plan", KEY), plan_dir)).render()
    assert KEY[:40] not in rendered and "looks like a secret" in rendered


def test_endpoint_errors_do_not_echo_the_url(plan_dir: Path) -> None:
    for endpoint in (
        "https://u:s3cr3tpw@acct.batch.azure.com",
        "https://acct.batch.azure.com/?sv=2024&sig=s3cr3tpw",
    ):
        text = GOOD.replace("https://acct.westus2.batch.azure.com", endpoint)
        rendered = InputError(problems_of(text, plan_dir)).render()
        assert "s3cr3tpw" not in rendered
        assert "accounts[0].endpoint" in rendered


def test_a_file_with_several_mistakes_reports_them_all_at_once() -> None:
    path = Path(__file__).parent / "plans" / "many-mistakes.yaml"
    with pytest.raises(InputError) as caught:
        parse_plan(path.read_text(), path, environ={})
    text = path.read_text()
    # Every line marked "# mistake: <key path>" in the file is reported, and nothing else.
    expected = {
        (n, m.group(1))
        for n, line in enumerate(text.splitlines(), 1)
        if (m := re.search(r"# mistake: (\S+)", line))
    }
    got = {(p.line, p.path) for p in caught.value.errors}
    assert got == expected, caught.value.render()
    assert len(expected) >= 10
    lines = [p.line or 0 for p in caught.value.problems]
    assert lines == sorted(lines)
    rendered = caught.value.render()
    assert rendered.count("\n") + 1 == len(caught.value.problems)
    assert all(line.startswith(f"{path}:") for line in rendered.splitlines())


def test_warnings_travel_with_errors(plan_dir: Path) -> None:
    text = GOOD + "        nodes: {states: [idle, rebooting]}\nrollout:\n  waves: [5, 2]\n"
    problems = problems_of(text, plan_dir)
    assert [p.severity for p in problems] == ["warning", "error"]
    assert "rebooting cannot be reimaged or rebooted" in problems[0].message


def test_control_character_is_reported_with_its_position(plan_dir: Path) -> None:
    text = GOOD.replace("key_env: BATCH_KEY}", "key_file: 'bad\x00name'}")
    problems = problems_of(text, plan_dir)
    assert problems[0].line == 6 and "unacceptable character #x0000" in problems[0].message
