"""The log pipeline (``fleet_reimage/logs.py``): context merged from structlog's contextvars,
secrets redacted by field name, one JSON object per line."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from fleet_reimage import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure(log_format="json", level="info", stream=stream)
    structlog.contextvars.clear_contextvars()
    try:
        yield stream
    finally:
        structlog.contextvars.clear_contextvars()
        logs.flush()
        structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    logs.flush()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_context_fields_are_merged_and_explicit_fields_win(captured: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(node="n-1", attempt=2, pool="p")
    structlog.contextvars.unbind_contextvars("pool")  # unbound: not shown
    log = structlog.get_logger("fleet_reimage.test")
    log.info("first", node="explicit")
    log.debug("filtered out")
    structlog.contextvars.bind_contextvars(node="n-2")
    log.warning("second")
    first, second = lines(captured)
    assert {k: first[k] for k in ("event", "node", "attempt", "level")} == {
        "event": "first",
        "node": "explicit",
        "attempt": 2,
        "level": "info",
    }
    assert "pool" not in first and "pool" not in second
    assert (second["event"], second["node"], second["attempt"]) == ("second", "n-2", 2)
    assert str(first["timestamp"]).endswith("Z")


def test_fields_named_like_secrets_are_redacted(captured: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(account_key="from-context")
    structlog.get_logger("fleet_reimage.test").info(
        "x",
        token="t0k",
        Authorization="SharedKey a:b",
        client_secret="s3",
        key_env="FR_KEY",  # names a variable, not a secret
        key_file="/k",
        client_id="c",
        message="fine",
    )
    (line,) = lines(captured)
    for name in ("token", "Authorization", "client_secret", "account_key"):
        assert line[name] == "<redacted>", name
    assert (line["key_env"], line["key_file"], line["client_id"]) == ("FR_KEY", "/k", "c")
    assert line["message"] == "fine"
