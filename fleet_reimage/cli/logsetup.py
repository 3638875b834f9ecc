"""Where a command's log lines go: the terminal, or a file with the warnings on the terminal.

* ``run`` and ``resume`` with the live table (standard output is a terminal): every node's
  lines go to a log file next to the journal by default (``patch.db`` -> ``patch.log``; for a
  PostgreSQL journal, ``fleet-reimage.log`` here), named in the first line printed;
  warnings and errors still show on the terminal, above the table, never through it.
* ``--log-file PATH``: every line to PATH, warnings also on standard error.
  ``--log-file -``: every line to standard error, as without a terminal.
* Otherwise: standard error (JSON lines without a terminal, console form on one). Progress
  lines reach standard error whatever the log file (``views/progress.py``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, cast

from fleet_reimage import logs
from fleet_reimage.journal import is_postgres_url
from fleet_reimage.views.termstream import CURRENT_STDERR

DEFAULT_LOG_FOR_SHARED = "fleet-reimage.log"
LIVE_COMMANDS = ("run", "resume")


@dataclass(frozen=True, slots=True)
class LogSetup:
    file: str | None  # where every line goes; None: standard error
    defaulted: bool  # the file was chosen because the live table has the terminal

    @property
    def notice(self) -> str | None:
        """The first line a live run prints: where its log is."""
        if not self.defaulted:
            return None
        return (
            f"fleet-reimage: logging to {self.file} (every node's lines; warnings show here; "
            "--log-file - keeps them all on the terminal)"
        )


def has_live_table(args: argparse.Namespace) -> bool:
    """Will this command draw the live table on the terminal?"""
    return (
        args.command in LIVE_COMMANDS
        and not getattr(args, "dry_run", False)
        and sys.stdout.isatty()
    )


def default_log_file(journal: str) -> str:
    """The log file next to the journal: ``patch.db`` -> ``patch.log``."""
    if is_postgres_url(journal):
        return DEFAULT_LOG_FOR_SHARED
    path = Path(journal)
    return str(path.with_suffix(".log") if path.suffix else path.with_name(path.name + ".log"))


def log_setup(args: argparse.Namespace) -> LogSetup:
    if args.log_file == "-":
        return LogSetup(None, False)
    if args.log_file:
        return LogSetup(args.log_file, False)
    if has_live_table(args):
        return LogSetup(default_log_file(str(args.journal)), True)
    return LogSetup(None, False)


def configure_logging(args: argparse.Namespace) -> LogSetup:
    """Configure the process's logging for ``args`` (raises like ``logs.configure``)."""
    setup = log_setup(args)
    logs.configure(
        log_format=args.log_format,
        level=args.log_level,
        log_file=setup.file,
        # Through CURRENT_STDERR: the live display can then print lines above itself.
        stream=cast(TextIO, CURRENT_STDERR),
        echo=cast(TextIO, CURRENT_STDERR),
    )
    return setup
