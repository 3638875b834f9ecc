"""structlog set-up: a pretty console on a TTY, JSON lines otherwise, optional log file.

Context (run, account, pool, node, client_request_id, attempt) is bound with contextvars by
the executor, so every event in a node's work carries it. Filtering happens before any
formatting (``make_filtering_bound_logger``), so debug events cost almost nothing at info.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_SECRET_KEYS = ("key", "token", "password", "secret", "authorization", "signature")


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: never print a field whose name says it is a secret."""
    for name in list(event):
        lowered = name.lower()
        if any(word in lowered for word in _SECRET_KEYS) and not lowered.endswith(
            ("_env", "_file", "_id")
        ):
            event[name] = "<redacted>"
    return event


def configure(
    *,
    log_format: str = "auto",
    level: str = "info",
    log_file: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Configure structlog for the process. ``log_format``: auto, console or json."""
    out: TextIO = stream or sys.stderr
    if log_file:
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        out = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
    pretty = log_format == "console" or (log_format == "auto" and not log_file and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if pretty
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
