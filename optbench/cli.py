"""The ``optbench`` command line: one module per verb under ``optbench.commands``, and the error boundary.

Each verb module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
a verb module imports its heavy modules (torch, the registry, scipy) inside ``run``, so that
``optbench --help`` and argument errors answer at once.

Exit codes: 0 success, 1 a failed check or a failed run, 2 a usage error. The boundary in
``main`` turns every usage error (argparse's, ``optbench.errors.UsageError`` and other
``ValueError``s raised while resolving input, a missing file) into one line on stderr that
names the bad value and the accepted ones, with no traceback; ``--debug`` adds the traceback.
Usage errors are raised before any training starts. A closed output pipe (``optbench tasks |
head``) ends quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from optbench import __version__

VERBS = ("list", "tasks", "run", "report", "check", "sweep", "snr", "study", "project")
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``optbench run: error: argument --seeds: ...`` and exit 2."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="optbench", description="Benchmark memory-efficient PyTorch optimizers.")
    parser.add_argument("--version", action="version", version=f"optbench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True
    for verb in VERBS:
        module = importlib.import_module(f"optbench.commands.{verb}")
        verb_parser = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(verb_parser)
        # --debug is accepted after the verb too; SUPPRESS keeps it from hiding one given before
        verb_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show the traceback of an error")
        verb_parser.set_defaults(_run=module.run)
    return parser


def _usage_error(verb: str, exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(exc)
    message = str(exc).strip() or type(exc).__name__
    if "\n" in message and not debug:
        message = message.splitlines()[0] + " (--debug for more)"
    print(f"optbench {verb}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null, so that the flush at exit does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    verb = next((a for a in argv if a in VERBS), "")
    try:
        args = build_parser().parse_args(argv)
        code = int(args._run(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"\noptbench {verb}: interrupted; every finished run is on disk", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        # UsageError and the ValueErrors raised while resolving names, values and paths, before any run
        return _usage_error(verb, exc, debug)


if __name__ == "__main__":
    raise SystemExit(main())
