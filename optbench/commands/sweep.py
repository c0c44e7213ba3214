"""``optbench sweep``: a learning-rate sweep whose winners every later run uses."""

from __future__ import annotations

import argparse
from pathlib import Path

from optbench import registry
from optbench.commands._common import (
    add_plugin_argument,
    command_line,
    csv_list,
    expand_optimizers,
    float_list,
    int_list,
    load_plugins,
)
from optbench.lrs import TUNED_LRS_PATH
from optbench.sweep import sweep, update_table, write_markdown

HELP = "learning-rate sweep for one task: writes results/sweeps/<preset>-<task>.md and tasks/tuned_lrs.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task name")
    parser.add_argument("--optimizers", type=csv_list, default=None, help="optimizers (default: all available)")
    lrs = parser.add_mutually_exclusive_group(required=True)
    lrs.add_argument("--lrs", type=float_list, help="absolute learning rates, e.g. 1e-4,3e-4,1e-3")
    lrs.add_argument("--lr-factors", type=float_list, help="multiples of each optimizer's current lr, e.g. 0.3,1,3")
    parser.add_argument("--preset", default="cpu", help="smoke | cpu | gpu (default: cpu)")
    parser.add_argument("--seeds", type=int_list, default=[0], help="seeds per lr (default: 0)")
    parser.add_argument("--runs-dir", default="results/sweeps/runs", help="where sweep run records go")
    parser.add_argument("--out", default="results/sweeps", help="where the markdown table goes")
    parser.add_argument("--table", default=str(TUNED_LRS_PATH), help="the tuned-lr table to update")
    parser.add_argument("--no-write-table", action="store_true", help="report only; leave the tuned-lr table alone")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")
    add_plugin_argument(parser)


def run(args: argparse.Namespace) -> int:
    load_plugins(args)
    registry.check_preset(args.preset)
    registry.get_task(args.task)
    optimizers = expand_optimizers(args.optimizers, args.device or "cpu")
    results = sweep(args.task, optimizers, preset=args.preset, seeds=args.seeds, runs_dir=args.runs_dir,
                    lrs=args.lrs, factors=args.lr_factors, progress=not args.no_progress, device=args.device)
    path = write_markdown(results, args.task, args.preset, args.seeds, command_line("sweep"), Path(args.out))
    if not args.no_write_table:
        update_table(results, args.task, args.preset, Path(args.table))
    for name, entry in sorted(results.items()):
        print(f"{args.task} {name}: best lr {entry['best_lr']}")
    print(f"wrote {path}" + ("" if args.no_write_table else f" and updated {args.table}"))
    return 0
