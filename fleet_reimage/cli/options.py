"""Options and parser pieces every command shares, defined once."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from fleet_reimage import logs
from fleet_reimage.journal import DEFAULT_JOURNAL_FILE, JOURNAL_ENV, default_location
from fleet_reimage.units import UnitError, parse_duration

Handler = Callable[[argparse.Namespace], Awaitable[int]]


def command_parser(
    commands: Any,
    name: str,
    common: argparse.ArgumentParser,
    handler: Handler,
    help_text: str,
    description: str,
    examples: str,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        parents=[common],
        help=help_text,
        # Raw formatting keeps the examples' lines; the prose is wrapped here instead.
        description=textwrap.fill(description, width=90, break_on_hyphens=False),
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def parse_deadline(text: str) -> float:
    """An ISO 8601 time with a timezone, or a duration from now (``2h``, ``90m``)."""
    try:
        return time.time() + parse_duration(text)
    except UnitError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (2h, 90m) nor an ISO time with a timezone "
            "(2026-11-26T06:00:00Z)"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no timezone; add Z or +HH:MM")
    return when.timestamp()


def logging_options() -> argparse.ArgumentParser:
    """Options every command shares, defined once."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("logging")
    group.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto",
        help="console on a terminal, JSON lines otherwise (default: auto)",
    )
    group.add_argument("--log-level", choices=tuple(logs.LEVELS), default="info")
    group.add_argument(
        "--log-file",
        metavar="PATH",
        help="write logs to this file (warnings show on the terminal too); run and resume "
        "with the live table log to a file next to the journal by default; - for standard "
        "error",
    )
    return parent


def journal_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--journal",
        metavar="PATH_OR_URL",
        default=default_location(),
        help=f"the journal: a SQLite file, or a postgresql:// URL for a journal shared between "
        f"machines (default: ${JOURNAL_ENV} if set, else ./{DEFAULT_JOURNAL_FILE})",
    )


def quiet_stdout() -> None:
    """After a broken pipe (``... | head``: the reader left), point standard output at
    /dev/null so that the interpreter's own flush at exit does not complain again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
