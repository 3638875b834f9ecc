"""The ``fleet-reimage`` command: a thin layer over ``fleet_reimage.api``.

Exit codes: 0 every selected node done; 1 some nodes failed or were skipped; 2 bad input
(plan, journal, options); 3 the run stopped (failure budget, auth, unsupported pool,
deadline, checkpoint); 130 interrupted.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

import anyio

from fleet_reimage import __version__, api, logs
from fleet_reimage.batch.errors import BatchError, ConfigurationError
from fleet_reimage.batch.explain import describe
from fleet_reimage.cli.collector import collector_for
from fleet_reimage.cli.logsetup import configure_logging, log_setup
from fleet_reimage.cli.options import logging_options, quiet_stdout
from fleet_reimage.cli.run_commands import add_run_commands
from fleet_reimage.cli.view_commands import add_view_commands
from fleet_reimage.errors import InputError
from fleet_reimage.journal import JournalError

EXAMPLES = """\
examples:
  fleet-reimage validate plans/demo.yaml
  fleet-reimage plan plans/demo.yaml --output json
  fleet-reimage run plans/demo.yaml --dry-run
  fleet-reimage run plans/demo.yaml --journal patch.db --yes
  fleet-reimage resume --journal patch.db
  fleet-reimage status --journal patch.db
  fleet-reimage status --latest --journal patch.db
  fleet-reimage report RUN_ID --journal patch.db --format markdown
  fleet-reimage emulator --fleet plans/fleets/demo.yaml --port 0

exit codes: 0 all done, 1 some nodes failed or skipped, 2 bad input,
            3 run stopped (budget, auth, unsupported pool, deadline, checkpoint),
            130 interrupted
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-reimage",
        description="Bulk, resumable, rolling reimage (or reboot) of Azure Batch compute nodes.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = logging_options()
    add_run_commands(commands, common)
    add_view_commands(commands, common)
    emulator = commands.add_parser(
        "emulator",
        help="serve the local Batch emulator",
        add_help=False,
        description="Serve the local Azure Batch emulator (see `fleet-reimage emulator -h`).",
    )
    emulator.add_argument("rest", nargs=argparse.REMAINDER)
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script for bash or zsh.",
        epilog="examples:\n"
        "  fleet-reimage completion bash > ~/.local/share/bash-completion/completions/"
        "fleet-reimage\n"
        "  fleet-reimage completion zsh > ~/.zfunc/_fleet-reimage   # with fpath+=(~/.zfunc)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=("bash", "zsh"))
    return parser


def completion_script(shell: str) -> str:
    """The completion script for ``shell``, generated from the parser itself (shtab)."""
    import shtab  # only this command needs it

    script: str = shtab.complete(build_parser(), shell=shell)
    return script


def entry() -> int:
    """The ``fleet-reimage`` command (and ``python -m fleet_reimage``): ``main``, then exit.

    Before the interpreter exits, everything is frozen out of the cycle collector: its final
    full collection would otherwise walk every object a run built (~50 ms with 20,000 nodes)
    for nothing. Exit handlers and stream flushing still run as usual.
    """
    code = main()
    gc.freeze()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["emulator"]:
        from fleet_reimage.emulator.server import emulator_main

        return emulator_main(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "completion":
        sys.stdout.write(completion_script(args.shell))
        return 0
    try:
        args.log_setup = configure_logging(args)  # see cli/logsetup.py
    except api.RefusedError as exc:  # UnsafeFile: a link, a FIFO, someone else's file
        return _fail(f"fleet-reimage: {exc}", 2)
    except OSError as exc:
        where = log_setup(args).file
        return _fail(f"fleet-reimage: cannot open the log file {where}: {exc.strerror}", 2)
    if args.log_setup.notice:
        print(args.log_setup.notice, file=sys.stderr)
    try:
        with collector_for(args.command):  # see cli/collector.py
            code: int = _run_unwrapped(args)
    except InputError as exc:
        return _fail(exc.render(), 2)
    except (api.RefusedError, JournalError, ConfigurationError) as exc:
        return _fail(f"fleet-reimage: {exc}", 2)
    except BatchError as exc:
        return _fail(f"fleet-reimage: {describe(exc)}", 3)
    except KeyboardInterrupt:
        return _fail("fleet-reimage: interrupted", 130)
    except BrokenPipeError:  # `fleet-reimage plan ... | head`: the reader left, nothing wrong
        quiet_stdout()
        return 0
    logs.flush()
    return code


def _fail(message: str, code: int) -> int:
    """Print why the command failed, as the last line (after any log line still queued)."""
    logs.flush()
    print(message, file=sys.stderr)
    return code


def _run_unwrapped(args: argparse.Namespace) -> int:
    """Run the handler; an exception raised inside task groups is re-raised on its own."""
    try:
        code: int = anyio.run(args.handler, args)
        return code
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The most telling exception in a (nested) group: ours before anything else."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseExceptionGroup):
            stack.extend(item.exceptions)
        else:
            leaves.append(item)
    ours = (InputError, api.RefusedError, JournalError, ConfigurationError, BatchError)
    return next((leaf for leaf in leaves if isinstance(leaf, ours)), leaves[0])


def run_cli() -> None:  # pragma: no cover - console script entry point
    sys.exit(main())
