"""Standard error as a stream that is looked up at each write.

The logger keeps the stream it was configured with for the whole process. Handing it this
object instead of ``sys.stderr`` itself means that whoever replaces ``sys.stderr`` later
receives the log lines too: the live progress display (``rich.live.Live`` with
``redirect_stderr``) does, and prints them above itself instead of being torn by them.
"""

from __future__ import annotations

import sys


class CurrentStderr:
    """A text stream that forwards to whatever ``sys.stderr`` is at the time of the call."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()

    def fileno(self) -> int:
        return sys.stderr.fileno()


CURRENT_STDERR = CurrentStderr()
