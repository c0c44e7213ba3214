"""The ``optbench`` command line: one module per verb under ``optbench.commands``.

Each verb module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Exit codes: 0 success, 1 a failed check or run, 2 a usage error (bad name, bad value).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from optbench import __version__

VERBS = ("list", "tasks", "run", "report", "check", "sweep", "snr", "study", "project")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optbench", description="Benchmark memory-efficient PyTorch optimizers.")
    parser.add_argument("--version", action="version", version=f"optbench {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb in VERBS:
        module = importlib.import_module(f"optbench.commands.{verb}")
        verb_parser = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(verb_parser)
        verb_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ValueError as exc:  # bad names and values: the message names them and the accepted ones
        print(f"optbench {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"optbench {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\noptbench {args.verb}: interrupted; every finished run is on disk", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
