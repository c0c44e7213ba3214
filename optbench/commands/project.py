"""``optbench project``: optimizer state and peak training memory at scale, without allocating it."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from optbench.commands._common import add_plugin_argument, csv_list, load_plugins
from optbench.zoo import DEFAULT_STEPS, DTYPES, SHAPES

HELP = "project optimizer state and peak training memory for a model at scale, on fake tensors (no memory)"
ALL_BUILTIN = "builtin"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=csv_list, metavar="NAME[,NAME..]",
                        help=f"built-in shape ({', '.join(SHAPES)}), '{ALL_BUILTIN}' for all of them, "
                             "task:NAME, a torchvision model name, or module:factory")
    parser.add_argument("--optimizers", type=csv_list, default=None, metavar="O,..",
                        help="optimizers to project (default: every registered one); adamw is always added as "
                             "the ratio baseline")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: the shape's own)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (language models)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="dtype of parameters, gradients and activations (default fp32)")
    parser.add_argument("--preset", default="smoke", help="preset whose batches a task:NAME model uses")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"optimizer steps per projection (default {DEFAULT_STEPS})")
    parser.add_argument("--full-steps", action="store_true",
                        help="track whole training steps per optimizer instead of one shared forward/backward "
                             "(slower)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--out", default=None, metavar="FILE.md", help="also write the tables as markdown")
    parser.add_argument("--command", default=None, help="the outer command (e.g. a nox session) to name in the "
                                                        "markdown header besides this command line")
    add_plugin_argument(parser)


def _models(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        out.extend(SHAPES if name == ALL_BUILTIN else [name])
    return out


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from optbench import project as proj
    from optbench.projection_tables import METHOD_LEGEND, TABLE_HEADERS, markdown, summary_line, table_rows
    from optbench.workloads import resolve_workload

    load_plugins(args)
    projections = []
    started = time.perf_counter()
    for name in _models(args.model):
        workload = resolve_workload(name, batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype,
                                         preset=args.preset)
        t0 = time.perf_counter()
        projection = proj.project(
            workload, args.optimizers, steps=args.steps, full_steps=args.full_steps,
            progress=None if args.json else lambda n, m=name: print(f"  {m}: {n}", file=sys.stderr, flush=True),
        )
        projection.notes.append(f"projected in {time.perf_counter() - t0:.0f} s wall")
        projections.append(projection)
    if args.json:
        print(json.dumps({"legend": METHOD_LEGEND, "projections": [p.to_dict() for p in projections]},
                         indent=1, default=str))
    else:
        for p in projections:
            print(summary_line(p))
            print(tabulate(table_rows(p), headers=TABLE_HEADERS))
            print()
        print(METHOD_LEGEND)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(markdown(projections, canonical_command(args), time.perf_counter() - started, outer=args.command))
        if not args.json:
            print(f"wrote {args.out}")
    return 0


def canonical_command(args: argparse.Namespace) -> str:
    """This projection as an ``optbench project`` command line, rebuilt from the parsed arguments."""
    words = ["optbench", "project", "--model", ",".join(args.model)]
    if args.optimizers:
        words += ["--optimizers", ",".join(args.optimizers)]
    for flag, value in (("--batch-size", args.batch_size), ("--seq-len", args.seq_len)):
        if value is not None:
            words += [flag, str(value)]
    if args.dtype != "fp32":
        words += ["--dtype", args.dtype]
    if any(m.startswith("task:") for m in args.model):
        words += ["--preset", args.preset]
    if args.steps != DEFAULT_STEPS:
        words += ["--steps", str(args.steps)]
    if args.full_steps:
        words.append("--full-steps")
    words += [f"--plugin={p}" for p in args.plugin] + ["--out", args.out]
    return shlex.join(words)
