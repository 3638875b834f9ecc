"""structlog set-up: a pretty console on a TTY, JSON lines otherwise, optional log file.

Context (run, account, pool, node, client_request_id, attempt) is bound with contextvars by
the executor, so every event in a node's work carries it. Filtering happens before any
formatting (``make_filtering_bound_logger``), so debug events cost almost nothing at info.

Lines are rendered on the caller's thread but written by a background thread in batches:
a run logs one summary line per node, and a write per line on the event loop would be
blocking I/O on the hot path (and a terminal that stops reading would stall the run).
``flush()`` (also at exit) writes what is left, and returns only once it is written, even
if the background thread was writing at that moment: a line printed after it (a run's
summary) then never lands in the middle of a log line.

With a log file, ``echo`` (the terminal) still gets the lines at ``echo_level`` and above,
in console form: the file has every node's line, the operator sees the warnings.

Why not structlog's standard-library pipeline (``ProcessorFormatter`` with the standard
library's ``QueueHandler``/``QueueListener``)? It was measured against this one (issue 14,
``bench/run.py logging``): 59 us of CPU per node (context bound, a debug line filtered, the
summary line written) against 20 us here, because every line becomes a ``LogRecord`` and
passes the standard library's handlers and a per-record write and flush; for a 20,000-node
run that is about 0.8 s of CPU, some 8% of the run's. See ``bench/RESULTS.md``.
"""

from __future__ import annotations

import atexit
import contextvars
import json
import logging
import os
import sys
import threading
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from fleet_reimage.safefiles import open_own

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_SECRET_WORDS = ("key", "token", "password", "secret", "authorization", "signature")
FLUSH_INTERVAL = 0.1


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(
        ("_env", "_file", "_id")
    )


# Field names seen so far -> secret? Names come from the code, so the map stays small; it is
# bounded all the same. (A plain dict: every logged event looks up each of its fields.)
_SECRET_NAMES: dict[str, bool] = {}


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: never print a field whose name says it is a secret."""
    known = _SECRET_NAMES
    for name in event:  # values are replaced, keys never added or removed
        secret = known.get(name)
        if secret is None:
            secret = _is_secret_name(name)
            if len(known) < 4096:
                known[name] = secret
        if secret:
            event[name] = "<redacted>"
    return event


_CONTEXT_PREFIX = structlog.contextvars.STRUCTLOG_KEY_PREFIX
_CONTEXT_PREFIX_LENGTH = len(_CONTEXT_PREFIX)


def merge_context(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog's ``merge_contextvars``, in one pass over the context's items.

    (structlog's looks every variable up twice; this runs for every logged event.)
    """
    for variable, value in contextvars.copy_context().items():
        if value is not Ellipsis and variable.name.startswith(_CONTEXT_PREFIX):
            event.setdefault(variable.name[_CONTEXT_PREFIX_LENGTH:], value)
    return event


def drop_unknown(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """On the console, a field with no value is left out rather than shown as ``None``
    (JSON lines keep it as null, for scripts that expect the key)."""
    for name in [name for name, value in event.items() if value is None]:
        del event[name]
    return event


class UtcTimestamp:
    """``timestamp`` exactly as ``TimeStamper(fmt="iso", utc=True)`` writes it, for less.

    A run logs a line per node, so this is on the hot path: the date and time of day are
    formatted once a second, only the microseconds per event. (Thread-safe: the cache is one
    tuple, replaced in one assignment.)
    """

    def __init__(self) -> None:
        self._cached = (-1, "")

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._cached = (second, prefix)
        event["timestamp"] = f"{prefix}.{int((now - second) * 1_000_000):06d}Z"
        return event


# One encoder for every line (``JSONRenderer`` builds a new one per event); what json cannot
# encode is written as its repr, as structlog does.
_JSON = json.JSONEncoder(default=repr)


def render_json(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    return _JSON.encode(event)


class BackgroundWriter:
    """Lines appended from any thread, written to ``stream`` by a daemon thread."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # held while lines are written: flush waits for it
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def write_line(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)
        if len(self._lines) > 4096:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        with self._writing:
            with self._lock:
                lines, self._lines = self._lines, []
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):  # a closed or broken stream must not kill the run
                    pass


class _LineLogger:
    def __init__(self, writer: BackgroundWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.write_line(message)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _Current:
    writers: tuple[BackgroundWriter, ...] = ()


def flush() -> None:
    """Write every log line rendered so far (call before exiting)."""
    for writer in _Current.writers:
        writer.flush()


class _Echo:
    """A processor that also writes lines at ``level`` and above to a second writer, in
    console form (the terminal beside a log file)."""

    def __init__(self, writer: BackgroundWriter, level: int, colors: bool) -> None:
        self._writer = writer
        self._level = level
        self._render = structlog.dev.ConsoleRenderer(colors=colors)

    def __call__(
        self, logger: Any, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if LEVELS.get(str(event.get("level", method)), logging.INFO) >= self._level:
            shown = drop_unknown(logger, method, dict(event))
            self._writer.write_line(str(self._render(logger, method, shown)))
        return event


atexit.register(flush)


def configure(
    *,
    log_format: str = "auto",
    level: str = "info",
    log_file: str | None = None,
    stream: TextIO | None = None,
    echo: TextIO | None = None,
    echo_level: str = "warning",
) -> None:
    """Configure structlog for the process. ``log_format``: auto, console or json.

    ``log_file`` is opened for appending as a file of our own (``safefiles``): raises
    ``UnsafeFile`` or ``OSError`` when it cannot be. ``echo``: with a log file, where lines
    at ``echo_level`` and above are shown too (in console form)."""
    out: TextIO = stream or sys.stderr
    if log_file:
        # A file of ours: not a link, a FIFO or someone else's file (UnsafeFile; OSError).
        fd = open_own(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "the log file")
        out = os.fdopen(fd, "a", encoding="utf-8")
    pretty = log_format == "console" or (log_format == "auto" and not log_file and out.isatty())
    flush()
    factory: Any
    renderer: Any = structlog.dev.ConsoleRenderer(colors=out.isatty()) if pretty else render_json
    writer = BackgroundWriter(out)
    echoes: list[_Echo] = []
    _Current.writers = (writer,)
    if echo is not None and log_file:
        shown = BackgroundWriter(echo)
        _Current.writers = (writer, shown)
        echoes.append(_Echo(shown, LEVELS.get(echo_level, logging.WARNING), echo.isatty()))
    factory = lambda *_: _LineLogger(writer)  # noqa: E731
    structlog.configure(
        processors=[
            merge_context,
            structlog.processors.add_log_level,
            UtcTimestamp(),
            _redact,
            *echoes,
            *((drop_unknown,) if pretty else ()),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
