"""Fuzzing the loader: whatever the text, the answer is a valid ``Plan`` or an ``InputError``
whose problems all say something, never another exception and never a leaked secret."""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_reimage.errors import InputError
from fleet_reimage.plan import NODE_STATES, Plan, parse_plan
from fleet_reimage.plan.waves import is_all

ENVIRON = {"BATCH_KEY": "x"}
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID: dict[str, Any] = {
    "version": 1,
    "name": "fuzz",
    "action": "reimage",
    "option": "taskcompletion",
    "accounts": [
        {
            "name": "west",
            "endpoint": "https://acct.westus2.batch.azure.com",
            "auth": {"type": "shared-key", "account": "acct", "key_env": "BATCH_KEY"},
            "pools": [
                {
                    "match": "render-*",
                    "nodes": {
                        "include": ["*"],
                        "exclude": ["tvm-1*"],
                        "states": ["idle", "running"],
                        "booted_before": datetime(2026, 11, 20, tzinfo=UTC),
                    },
                },
                {"match": "etl"},
            ],
        },
        {
            "name": "local",
            "emulator": "fleet.yaml",
            "auth": {"type": "shared-key", "account": "local", "key_file": "batch.key"},
            "pools": [{"match": "*"}],
        },
        {
            "name": "weu",
            "endpoint": "https://b.westeurope.batch.azure.com",
            "auth": {"type": "entra", "credential": "default"},
            "pools": [{"match": "sim-[0-9]"}],
        },
    ],
    "rollout": {
        "waves": [1, 5, "25%", "100%"],
        "max_unavailable": "20%",
        "pause_between_waves": "30s",
        "health": {
            "wait": True,
            "ready_states": ["idle", "running"],
            "timeout": "20m",
            "poll_interval": "15s",
        },
        "failure_budget": "5%",
        "deadline": datetime(2026, 11, 26, 6, tzinfo=UTC),
        "confirm_after_wave": 1,
    },
    "execution": {
        "concurrency": 64,
        "per_account_concurrency": 32,
        "request_timeout": "30s",
        "retry": {
            "max_attempts": 8,
            "initial_backoff": "1s",
            "max_backoff": "60s",
            "busy_timeout": "10m",
        },
    },
}

WORDS = [
    "version", "name", "action", "option", "accounts", "endpoint", "emulator", "auth", "pools",
    "match", "nodes", "include", "exclude", "states", "booted_before", "rollout", "waves",
    "max_unavailable", "pause_between_waves", "health", "wait", "ready_states", "timeout",
    "poll_interval", "failure_budget", "deadline", "confirm_after_wave", "execution",
    "concurrency", "per_account_concurrency", "request_timeout", "retry", "max_attempts",
    "initial_backoff", "max_backoff", "busy_timeout", "type", "account", "key_env", "key_file",
    "credential", "client_id", "tenant_id", "authority", "audience", "key", "secret", "token",
    "shared-key", "entra", "reimage", "reboot", "requeue", "idle", "running", "100%", "0%",
    "25%", "150%", "30s", "0s", "500ms", "25h", "1h30m", "*", "render-*", "fleet.yaml",
    "batch.key", "BATCH_KEY", "https://a.batch.azure.com", "http://127.0.0.1:1", "http://x",
    "2026-11-20T00:00:00Z", "2026-11-20", "2026-02-30", "~", "", "-1", "1e9", "0x1F",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=30),
    st.datetimes(
        timezones=st.none()
        | st.just(UTC)
        | st.timedeltas(min_value=-timedelta(hours=23), max_value=timedelta(hours=23)).map(timezone)
    ),
    st.dates(),
)
structures = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz")
    (path / "fleet.yaml").write_text("stand-in: true\n")
    (path / "batch.key").write_text("k\n")
    (path / "batch.key").chmod(0o600)
    return path


def check(text: str, folder: Path) -> Plan | InputError:
    """Parse, and check the outcome is one of the two allowed, well-formed answers."""
    path = folder / "plan.yaml"
    try:
        plan = parse_plan(text, path, environ=ENVIRON)
    except InputError as exc:
        assert exc.errors, "an InputError must hold at least one error"
        for problem in exc.problems:
            assert isinstance(problem.message, str) and problem.message.strip()
            assert problem.file == str(path)
            assert problem.line is None or problem.line >= 1
            assert problem.column is None or problem.column >= 1
        assert exc.render()
        return exc
    assert all(w.severity == "warning" and w.message for w in plan.warnings)
    # Whatever validated satisfies the model's invariants.
    assert is_all(plan.rollout.waves[-1])
    assert 1 <= plan.execution.per_account_concurrency <= plan.execution.concurrency <= 1024
    assert plan.rollout.health.poll_interval <= plan.rollout.health.timeout
    names = [a.name.casefold() for a in plan.accounts]
    assert plan.accounts and len(names) == len(set(names))
    for account in plan.accounts:
        assert (account.endpoint is None) != (account.emulator is None)
        assert account.pools
        for pool in account.pools:
            assert pool.nodes.states and pool.nodes.states <= NODE_STATES and pool.nodes.include
    return plan


def dump(data: object) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def test_the_base_plan_is_valid(folder: Path) -> None:
    assert isinstance(check(dump(VALID), folder), Plan)


@FUZZ
@given(st.text(max_size=400))
def test_any_text(folder: Path, text: str) -> None:
    check(text, folder)


yamlish = st.lists(
    st.sampled_from(WORDS)
    | st.sampled_from([": ", "\n", "  ", "- ", "[", "]", "{", "}", ", ", "&a ", "*a", "!!", "<<",
                       "'", '"', "#", "|", ">", "? ", "!!python/object:os.system", "%YAML 1.1",
                       "---", "...", "\t", "\x00", "\ufeff"]),
    max_size=60,
).map("".join)  # fmt: skip


@FUZZ
@given(yamlish)
def test_yaml_ish_token_soup(folder: Path, text: str) -> None:
    check(text, folder)


@FUZZ
@given(structures)
def test_random_structures(folder: Path, data: object) -> None:
    check(dump(data), folder)


def paths_of(data: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a nested dict/list, the root included."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths_of(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += paths_of(value, (*prefix, index))
    return found


def mutate(data: Any, path: tuple[Any, ...], op: str, value: object, key: str) -> Any:
    if not path:
        return value if op == "replace" else data
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if op == "replace":
        parent[last] = value
    elif op == "delete":
        del parent[last]
    elif op == "add" and isinstance(parent[last], dict):
        parent[last][key] = value
    elif op == "add" and isinstance(parent[last], list):
        parent[last].append(value)
    elif op == "empty" and isinstance(parent[last], dict | list):
        parent[last].clear()
    return data


@FUZZ
@given(st.data())
def test_mutated_valid_plans(folder: Path, data: st.DataObject) -> None:
    plan = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths_of(plan)))
        op = data.draw(st.sampled_from(["replace", "delete", "add", "empty"]))
        value = data.draw(structures)
        key = data.draw(st.sampled_from(WORDS))
        plan = mutate(plan, path, op, value, key)
    check(dump(plan), folder)


def leaves_of(data: object) -> list[tuple[Any, ...]]:
    return [p for p in paths_of(data) if p and not isinstance(get(data, p), dict | list)]


def get(data: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        data = data[step]
    return data


@FUZZ
@given(st.data(), scalars)
def test_any_leaf_replaced_by_any_scalar(folder: Path, data: st.DataObject, value: object) -> None:
    plan = copy.deepcopy(VALID)
    path = data.draw(st.sampled_from(leaves_of(plan)))
    check(dump(mutate(plan, path, "replace", value, "")), folder)


# YAML timestamps carry whole-minute offsets only.
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
aware = st.datetimes(timezones=offsets)


@FUZZ
@given(aware, st.booleans(), st.sampled_from(["deadline", "booted_before"]))
def test_any_aware_time_is_read_as_the_same_instant_in_utc(
    folder: Path, when: datetime, quoted: bool, field: str
) -> None:
    plan = copy.deepcopy(VALID)
    written = when.isoformat() if quoted else when
    if field == "deadline":
        plan["rollout"]["deadline"] = written
    else:
        plan["accounts"][0]["pools"][0]["nodes"]["booted_before"] = written
    outcome = check(dump(plan), folder)
    if isinstance(outcome, Plan):
        read = outcome.rollout.deadline
        if field == "booted_before":
            read = outcome.accounts[0].pools[0].nodes.booted_before
        assert read == when and read is not None and read.tzinfo is UTC
    else:  # only instants that cannot be expressed in UTC are refused
        assert "out of range" in outcome.render()


@FUZZ
@given(st.data())
def test_text_edits_of_a_valid_plan(folder: Path, data: st.DataObject) -> None:
    text = dump(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        start = data.draw(st.integers(0, len(text)))
        end = data.draw(st.integers(start, min(len(text), start + 12)))
        insert = data.draw(st.sampled_from(WORDS) | st.text(max_size=4))
        text = text[:start] + insert + text[end:]
    check(text, folder)


secrets = st.binary(min_size=32, max_size=64).map(lambda b: base64.b64encode(b).decode())


@FUZZ
@given(st.data(), secrets)
def test_secrets_in_auth_blocks_are_refused_and_never_echoed(
    folder: Path, data: st.DataObject, secret: str
) -> None:
    # Random bytes can encode to a key without a digit or without both cases; such a value is
    # not recognisable as a key, so make sure it is (real keys are 88 mixed characters).
    secret = "Aa0" + secret
    plan = copy.deepcopy(VALID)
    auth = plan["accounts"][data.draw(st.integers(0, 2))]["auth"]
    where = data.draw(
        st.sampled_from(["key", "account_key", "client_secret", "password", "account",
                         "key_env", "key_file", "type", "credential", "extra-list", "nested"])
    )  # fmt: skip
    if where == "extra-list":
        auth["extra"] = ["x", secret]
    elif where == "nested":
        auth["options"] = {"token": secret}
    else:
        auth[where] = secret
    outcome = check(dump(plan), folder)
    assert isinstance(outcome, InputError)
    rendered = outcome.render() + repr(outcome.problems) + str(outcome)
    assert secret not in rendered and secret[:24] not in rendered
