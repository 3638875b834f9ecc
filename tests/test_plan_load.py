"""Valid plans: defaults, normalisation, paths, keys, warnings, the example plans, and
reading the file itself (missing, not UTF-8, too large)."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_reimage.errors import InputError
from fleet_reimage.plan import (
    Action,
    EntraAuth,
    NodeOption,
    Plan,
    SharedKeyAuth,
    load_plan,
    parse_plan,
)
from fleet_reimage.plan.model import NodeSelector
from fleet_reimage.units import Amount
from fleet_reimage.yamlsafe import MAX_DOCUMENT_BYTES

REPO = Path(__file__).resolve().parent.parent
PLANS = REPO / "plans"
TEST_PLANS = Path(__file__).resolve().parent / "plans"

MINIMAL = """\
version: 1
name: minimal
accounts:
  - name: west
    endpoint: https://acct.westus2.batch.azure.com
    auth: {type: shared-key, account: acct, key_env: BATCH_KEY}
    pools:
      - match: "render-*"
"""


def pct(value: int) -> Amount:
    return Amount(Fraction(value), percent=True)


def count(value: int) -> Amount:
    return Amount(Fraction(value), percent=False)


def parse(text: str, folder: Path, environ: dict[str, str] | None = None) -> Plan:
    return parse_plan(text, folder / "plan.yaml", environ=environ)


def test_minimal_plan_takes_every_default(tmp_path: Path) -> None:
    plan = parse(MINIMAL, tmp_path)
    assert plan.version == 1 and plan.name == "minimal"
    assert plan.action is Action.REIMAGE and plan.option is NodeOption.REQUEUE
    (account,) = plan.accounts
    assert account.auth == SharedKeyAuth(account="acct", key_env="BATCH_KEY", key_file=None)
    (pool,) = account.pools
    assert pool.match == "render-*" and pool.line == 8
    assert pool.nodes.include == ("*",) and pool.nodes.exclude == ()
    assert pool.nodes.states == {"idle", "running"} and pool.nodes.booted_before is None
    rollout = plan.rollout
    assert rollout.waves == (pct(100),)
    assert rollout.max_unavailable == pct(10)
    assert rollout.pause_between_waves == 0.0
    assert rollout.failure_budget == pct(5)
    assert rollout.deadline is None and rollout.confirm_after_wave is None
    health = rollout.health
    assert (health.wait, health.ready_states, health.timeout, health.poll_interval) == (
        True, frozenset({"idle", "running"}), 1200.0, 15.0,
    )  # fmt: skip
    execution = plan.execution
    assert (execution.concurrency, execution.per_account_concurrency) == (64, 32)
    assert execution.request_timeout == 30.0
    assert execution.api_version == "2024-07-01.20.0"
    retry = execution.retry
    assert (retry.max_attempts, retry.initial_backoff, retry.max_backoff, retry.busy_timeout) == (
        8, 1.0, 60.0, 600.0,
    )  # fmt: skip
    assert plan.warnings == ()


def test_source_records_absolute_path_text_and_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    plan = parse_plan(MINIMAL, Path("sub/../plan.yaml"))
    assert plan.source.path == tmp_path / "plan.yaml"
    assert plan.source.text == MINIMAL
    assert plan.source.sha256 == hashlib.sha256(MINIMAL.encode()).hexdigest()


def test_plan_is_frozen(tmp_path: Path) -> None:
    plan = parse(MINIMAL, tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.rollout.health.timeout = 1.0  # type: ignore[misc]


def test_per_account_concurrency_default_is_capped_at_concurrency(tmp_path: Path) -> None:
    plan = parse(MINIMAL + "execution: {concurrency: 8}\n", tmp_path)
    assert plan.execution.per_account_concurrency == 8
    plan = parse(MINIMAL + "execution: {concurrency: 8, per_account_concurrency: 8}\n", tmp_path)
    assert plan.execution.per_account_concurrency == 8


@pytest.mark.parametrize(
    ("waves", "ladder"),
    [
        ('[1, 5, "25%", "100%"]', (count(1), count(5), pct(25), pct(100))),
        ('[1, "50%"]', (count(1), pct(50), pct(100))),
        ('["12.5%"]', (Amount(Fraction(25, 2), percent=True), pct(100))),
        ('[10, "5%"]', (count(10), pct(5), pct(100))),  # mixed kinds: ordered at run time
        ("[3]", (count(3), pct(100))),
        ("[1, 25%, 100%]", (count(1), pct(25), pct(100))),  # quotes are optional (README)
        ("[12.5%]", (Amount(Fraction(25, 2), percent=True), pct(100))),
    ],
)
def test_wave_ladder_is_normalised(waves: str, ladder: tuple[Amount, ...], tmp_path: Path) -> None:
    plan = parse(MINIMAL + f"rollout: {{waves: {waves}}}\n", tmp_path)
    assert plan.rollout.waves == ladder


def test_durations_amounts_and_times_are_read(tmp_path: Path) -> None:
    text = MINIMAL + (
        "rollout:\n"
        "  max_unavailable: 3\n"
        "  pause_between_waves: 1m30s\n"
        "  health: {wait: false, ready_states: [idle], timeout: 2h, poll_interval: 500ms}\n"
        "  failure_budget: 0\n"
        "  deadline: '2026-11-26T07:00:00+01:00'\n"
        "  confirm_after_wave: 1\n"
        "execution:\n"
        "  request_timeout: 45s\n"
        "  retry: {max_attempts: 1, initial_backoff: 100ms, max_backoff: 100ms, busy_timeout: 0s}\n"
    )
    rollout = parse(text, tmp_path).rollout
    assert rollout.max_unavailable == count(3) and rollout.failure_budget == count(0)
    assert rollout.pause_between_waves == 90.0
    assert rollout.health.wait is False and rollout.health.ready_states == {"idle"}
    assert (rollout.health.timeout, rollout.health.poll_interval) == (7200.0, 0.5)
    assert rollout.deadline == datetime(2026, 11, 26, 6, 0, tzinfo=UTC)
    assert rollout.deadline.tzinfo is UTC
    assert rollout.confirm_after_wave == 1


def test_percents_read_the_same_with_or_without_quotes(tmp_path: Path) -> None:
    quoted = parse(
        MINIMAL + 'rollout: {max_unavailable: "10%", failure_budget: "2.5%"}\n', tmp_path
    )
    bare = parse(MINIMAL + "rollout:\n  max_unavailable: 10%\n  failure_budget: 2.5%\n", tmp_path)
    assert bare.rollout.max_unavailable == quoted.rollout.max_unavailable == pct(10)
    assert bare.rollout.failure_budget == quoted.rollout.failure_budget
    assert bare.rollout.failure_budget == Amount(Fraction(5, 2), percent=True)


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        ("https://acct.westus2.batch.azure.com/", "https://acct.westus2.batch.azure.com"),
        ("HTTPS://Acct.WestUS2.Batch.Azure.com", "https://acct.westus2.batch.azure.com"),
        ("https://acct.batch.azure.com:8443/", "https://acct.batch.azure.com:8443"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://127.1.2.3", "http://127.1.2.3"),
        ("http://localhost:9000", "http://localhost:9000"),
        ("http://[::1]:9000/", "http://[::1]:9000"),
    ],
)
def test_endpoint_is_normalised(written: str, normalised: str, tmp_path: Path) -> None:
    text = MINIMAL.replace("https://acct.westus2.batch.azure.com", written)
    assert parse(text, tmp_path).accounts[0].endpoint == normalised


@pytest.mark.parametrize(
    "host",
    [
        "http://10.0.0.1",
        "http://128.0.0.1",
        "http://localhost.evil.com",
        "http://[::2]",
        "ftp://acct.batch.azure.com",
    ],
)
def test_plain_http_to_a_non_loopback_host_is_refused(host: str, tmp_path: Path) -> None:
    text = MINIMAL.replace("https://acct.westus2.batch.azure.com", host)
    with pytest.raises(InputError) as caught:
        parse(text, tmp_path)
    assert [p.path for p in caught.value.errors] == ["accounts[0].endpoint"]


def test_key_file_resolves_against_the_plan_folder(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    key = tmp_path / "keys" / "batch.key"
    key.write_text("secret\n")
    key.chmod(0o600)
    text = MINIMAL.replace("key_env: BATCH_KEY", "key_file: keys/batch.key")
    auth = parse(text, tmp_path).accounts[0].auth
    assert isinstance(auth, SharedKeyAuth)
    assert auth.key_file == key and auth.key_file.is_absolute() and auth.key_env is None


def test_key_file_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    key = tmp_path / "batch.key"
    key.write_text("secret\n")
    key.chmod(0o600)
    text = MINIMAL.replace("key_env: BATCH_KEY", "key_file: ~/batch.key")
    plan = parse(text, tmp_path / "elsewhere")
    assert plan.accounts[0].auth == SharedKeyAuth("acct", None, key)


def test_readable_key_file_is_a_warning(tmp_path: Path) -> None:
    key = tmp_path / "batch.key"
    key.write_text("secret\n")
    key.chmod(0o644)
    plan = parse(MINIMAL.replace("key_env: BATCH_KEY", "key_file: batch.key"), tmp_path)
    (warning,) = plan.warnings
    assert warning.severity == "warning" and warning.line == 6
    assert warning.path == "accounts[0].auth.key_file"
    assert "mode 0644" in warning.message and f"chmod 600 {key}" in warning.message


def test_key_env_is_checked_only_when_an_environment_is_given(tmp_path: Path) -> None:
    assert parse(MINIMAL, tmp_path).accounts[0].auth is not None
    assert parse(MINIMAL, tmp_path, environ={"BATCH_KEY": "k"}).name == "minimal"
    for environ, words in (({}, "BATCH_KEY is not set"), ({"BATCH_KEY": ""}, "BATCH_KEY is empty")):
        with pytest.raises(InputError) as caught:
            parse(MINIMAL, tmp_path, environ=environ)
        assert [words in p.message for p in caught.value.problems] == [True]


def test_emulator_account_needs_no_auth(tmp_path: Path) -> None:
    (tmp_path / "fleets").mkdir()
    fleet = tmp_path / "fleets" / "demo.yaml"
    fleet.write_text("accounts: []\n")
    text = MINIMAL.replace(
        "endpoint: https://acct.westus2.batch.azure.com", "emulator: fleets/demo.yaml"
    )
    text = text.replace("    auth: {type: shared-key, account: acct, key_env: BATCH_KEY}\n", "")
    account = parse(text, tmp_path).accounts[0]
    assert account.emulator == fleet and account.endpoint is None and account.auth is None


def test_entra_auth_fields(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "{type: shared-key, account: acct, key_env: BATCH_KEY}",
        "{type: entra, credential: workload-identity,"
        " client_id: 0f0e0d0c-0b0a-0908-0706-050403020100,"
        " tenant_id: contoso.onmicrosoft.com, authority: login.microsoftonline.us,"
        " audience: 'https://batch.core.usgovcloudapi.net/'}",
    ).replace("acct.westus2.batch.azure.com", "acct.usgovvirginia.batch.usgovcloudapi.net")
    auth = parse(text, tmp_path).accounts[0].auth
    assert auth == EntraAuth(
        credential="workload-identity",
        client_id="0f0e0d0c-0b0a-0908-0706-050403020100",
        tenant_id="contoso.onmicrosoft.com",
        authority="login.microsoftonline.us",
        audience="https://batch.core.usgovcloudapi.net/",
    )
    plain = parse(
        MINIMAL.replace("shared-key, account: acct, key_env: BATCH_KEY", "entra"), tmp_path
    )
    assert plain.accounts[0].auth == EntraAuth("default", None, None, None, None)


def test_entra_on_an_unknown_host_is_refused_unless_the_cloud_is_custom(tmp_path: Path) -> None:
    text = MINIMAL.replace("shared-key, account: acct, key_env: BATCH_KEY", "entra").replace(
        "acct.westus2.batch.azure.com", "batch.example.com"
    )
    with pytest.raises(InputError) as caught:
        parse(text, tmp_path)
    (problem,) = caught.value.problems
    assert problem.path == "accounts[0].endpoint" and "custom_cloud: true" in problem.message
    china = text.replace("batch.example.com", "a.chinanorth3.batch.chinacloudapi.cn")
    assert parse(china, tmp_path).warnings == ()


def test_warnings_for_suspicious_but_valid_choices(tmp_path: Path) -> None:
    text = MINIMAL + (
        "        nodes: {states: [idle, running, reimaging]}\n"
        "rollout:\n"
        "  waves: [2, 2, '50%']\n"
        "  health: {ready_states: [idle, rebooting]}\n"
        "  confirm_after_wave: 4\n"
    )
    plan = parse(text, tmp_path)
    found = [(w.path, w.message.split(";")[0]) for w in plan.warnings]
    assert found == [
        (
            "accounts[0].pools[0].nodes.states",
            "nodes that are reimaging cannot be reimaged or rebooted",
        ),
        ("rollout.waves[1]", "2 repeats waves[0]"),
        ("rollout.health.ready_states", "a node that is rebooting is not ready"),
        ("rollout.confirm_after_wave", "pausing after the last wave has no effect"),
    ]
    assert all(w.severity == "warning" for w in plan.warnings)


def test_selector_helpers(tmp_path: Path) -> None:
    text = MINIMAL + (
        "        nodes:\n"
        "          include: ['tvm-*']\n"
        "          exclude: ['tvm-9*']\n"
        "          booted_before: 2026-11-20T00:00:00Z\n"
        "      - match: '*'\n"
        "        nodes: {states: [idle]}\n"
    )
    account = parse(text, tmp_path).accounts[0]
    first, catch_all = account.pools
    assert account.selector_for("render-a") is first
    assert account.selector_for("etl") is catch_all
    assert not first.matches("Render-a")  # globs are case-sensitive
    nodes = first.nodes
    before = datetime(2026, 11, 19, tzinfo=UTC)
    after = datetime(2026, 11, 20, tzinfo=UTC)
    assert nodes.skip_reason("tvm-1", "idle", before) is None
    assert nodes.skip_reason("tvm-1", "idle", None) is None
    assert nodes.skip_reason("tvm-91", "idle", before) == "node id not selected by include/exclude"
    assert nodes.skip_reason("abc", "idle", before) == "node id not selected by include/exclude"
    assert "state offline" in (nodes.skip_reason("tvm-1", "offline", before) or "")
    assert "booted at 2026-11-20" in (nodes.skip_reason("tvm-1", "idle", after) or "")


GLOBS = st.lists(st.text(alphabet="tvm-1*?[]!", min_size=1, max_size=6), max_size=3)


@given(include=GLOBS, exclude=GLOBS, node_id=st.text(alphabet="tvm-19", max_size=8))
def test_node_id_matching_is_fnmatchcase(
    include: list[str], exclude: list[str], node_id: str
) -> None:
    """The compiled matcher agrees with the definition: included by one glob, excluded by none."""
    selector = NodeSelector(tuple(include), tuple(exclude), frozenset({"idle"}), None)
    expected = any(fnmatchcase(node_id, g) for g in include) and not any(
        fnmatchcase(node_id, g) for g in exclude
    )
    assert selector.matches_id(node_id) is expected


def test_example_plans_validate(tmp_path: Path) -> None:
    patch = load_plan(PLANS / "patch-night.yaml")
    assert [a.name for a in patch.accounts] == [
        "prod-westus2",
        "prod-westeurope",
        "prod-chinanorth3",
    ]
    assert isinstance(patch.accounts[0].auth, SharedKeyAuth)
    assert all(isinstance(a.auth, EntraAuth) for a in patch.accounts[1:])
    assert patch.accounts[2].endpoint is not None
    assert patch.accounts[2].endpoint.endswith(".batch.chinacloudapi.cn")
    assert patch.rollout.deadline == datetime(2026, 11, 26, 6, tzinfo=UTC)
    assert patch.warnings == ()
    reboot = load_plan(PLANS / "reboot.yaml")
    assert (reboot.action, reboot.option) == (Action.REBOOT, NodeOption.TASKCOMPLETION)
    assert reboot.warnings == ()


def test_demo_plan_validates(tmp_path: Path) -> None:
    """The demo's fleet file is written by the emulator's author; until it exists, the demo
    plan is checked next to a stand-in."""
    demo = PLANS / "demo.yaml"
    if not (PLANS / "fleets" / "demo.yaml").exists():
        (tmp_path / "fleets").mkdir()
        (tmp_path / "fleets" / "demo.yaml").write_text("stand-in: true\n")
        demo = Path(shutil.copy(demo, tmp_path / "demo.yaml"))
    plan = load_plan(demo)
    (account,) = plan.accounts
    assert account.name == "demo" and account.emulator == demo.parent / "fleets" / "demo.yaml"
    assert [p.match for p in account.pools] == ["render-*", "etl", "sim"]
    assert plan.rollout.waves == (count(1), count(3), pct(50), pct(100))
    assert plan.rollout.max_unavailable == pct(25)
    assert plan.rollout.pause_between_waves == 1.0
    assert (plan.rollout.health.poll_interval, plan.rollout.health.timeout) == (0.5, 60.0)
    assert plan.rollout.failure_budget == pct(10)
    assert plan.execution.concurrency == 16 and plan.execution.per_account_concurrency == 16
    assert plan.warnings == ()


# -- reading the file --------------------------------------------------------------------------


def load_error(path: Path) -> str:
    with pytest.raises(InputError) as caught:
        load_plan(path)
    (problem,) = caught.value.problems
    assert problem.file == str(path)
    return problem.render()


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    assert load_error(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: error: no such file"


def test_directory_is_an_input_error(tmp_path: Path) -> None:
    assert "not a regular file" in load_error(tmp_path)


def test_non_utf8_file_points_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\nname: caf\xe9\n")
    rendered = load_error(path)
    assert rendered.startswith(f"{path}:2:10: error: not UTF-8 text (byte 0xe9")


def test_oversized_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_DOCUMENT_BYTES + 10))
    assert "larger than" in load_error(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert "the file is empty" in load_error(path)


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_plan(path).name == "minimal"


def test_billion_laughs_is_refused() -> None:
    # Refused by counting the values the aliases would expand to, before expanding them
    # (how long that takes is bench/bench_bigrun.py's business).
    rendered = load_error(TEST_PLANS / "billion-laughs.yaml")
    assert "billion-laughs" in rendered and "too many values" in rendered


def test_python_object_tag_is_refused(tmp_path: Path) -> None:
    marker = Path("/tmp/fleet-reimage-pwned")
    marker.unlink(missing_ok=True)
    rendered = load_error(TEST_PLANS / "python-object.yaml")
    assert ":4:" in rendered and "python/object/apply:os.system" in rendered
    assert not marker.exists()


@pytest.mark.parametrize("written", ["2025-06-01", "'2025-06-01'", "2024-07-01.20.0"])
def test_api_version_is_read_as_written(written: str, tmp_path: Path) -> None:
    # Unquoted, 2025-06-01 is a YAML date: it is still the version the user meant.
    plan = parse(MINIMAL + f"execution:\n  api_version: {written}\n", tmp_path)
    assert plan.execution.api_version == written.strip("'")
