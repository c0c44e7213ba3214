"""``optbench sweep``: tune every optimizer's lr on one task by the protocol (``optbench.sweep``)."""

from __future__ import annotations

import argparse

from optbench.commands._common import (
    add_executor_arguments,
    add_plugin_argument,
    command_line,
    csv_list,
    executor_from_args,
    expand_optimizers,
    float_list,
    int_list,
    load_plugins,
    writable_dir,
    writable_file,
)
from optbench.sweep import Protocol

HELP = ("learning-rate sweep of one task by the tuning protocol: writes results/sweeps/<preset>/<task>.{csv,md,png} "
        "and tasks/tuned_lrs.json")
DEFAULT = Protocol()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task name")
    parser.add_argument("--optimizers", type=csv_list, default=None, help="optimizers (default: all available)")
    parser.add_argument("--points", type=int, default=DEFAULT.points,
                        help="lrs in the starting grid, centred on each optimizer's starting lr "
                             f"(default: {DEFAULT.points})")
    parser.add_argument("--ratio", type=float, default=DEFAULT.ratio,
                        help=f"factor between neighbouring lrs (default: {DEFAULT.ratio:g})")
    parser.add_argument("--lrs", type=float_list, default=None,
                        help="absolute starting grid instead, e.g. 1e-4,2e-4,4e-4 (same for every optimizer)")
    parser.add_argument("--seeds", type=int_list, default=list(DEFAULT.seeds),
                        help="tuning seeds: the first runs every lr, all run the best lr and its neighbours "
                             f"(default: {','.join(map(str, DEFAULT.seeds))}, apart from the board's seeds)")
    parser.add_argument("--max-extensions", type=int, default=DEFAULT.max_extensions,
                        help=f"how often the grid may grow past an end that wins (default: {DEFAULT.max_extensions})")
    parser.add_argument("--preset", default="cpu", help="smoke | cpu | gpu (default: cpu)")
    parser.add_argument("--runs-dir", default="results/sweeps/runs", help="where sweep run records go")
    parser.add_argument("--out", default="results/sweeps", help="where the CSV, markdown and plot go (<out>/<preset>/)")
    parser.add_argument("--table", default=None, help="the tuned-lr table to update (default: tasks/tuned_lrs.json)")
    parser.add_argument("--no-write-table", action="store_true", help="report only; leave the tuned-lr table alone")
    parser.add_argument("--no-plot", action="store_true", help="skip the lr-sensitivity plot")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-progress", action="store_true")
    add_executor_arguments(parser)
    add_plugin_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optbench import registry
    from optbench.lrs import TUNED_LRS_PATH
    from optbench.sweep import sweep, update_table
    from optbench.sweep_files import audit, publish_task

    load_plugins(args)
    registry.check_preset(args.preset)
    registry.get_task(args.task).budget(args.preset)
    protocol = Protocol(points=args.points, ratio=args.ratio, seeds=tuple(args.seeds),
                        max_extensions=args.max_extensions)
    optimizers = expand_optimizers(args.optimizers, args.device or "cpu")
    table = None if args.no_write_table else Path(args.table or TUNED_LRS_PATH)
    writable_dir(args.out, "--out")  # before any run, as the table below
    if table is not None:
        writable_file(table, "--table")
    executor = executor_from_args(args)
    try:
        results = sweep(args.task, optimizers, preset=args.preset, runs_dir=args.runs_dir, protocol=protocol,
                        lrs=args.lrs, progress=not args.no_progress, device=args.device, executor=executor)
    finally:
        executor.close()
    if table is not None:
        update_table(results, args.task, args.preset, table)
    paths = publish_task(results, args.task, args.preset, command_line("sweep"), args.out, table=table,
                         plot=not args.no_plot)
    for name, result in sorted(results.items()):
        edge = " (at the grid's edge)" if result.at_edge else ""
        print(f"{args.task} {name}: chosen lr {result.chosen_lr}{edge}, {len(result.grid)} lrs, "
              f"{len(result.trials)} runs")
    problems = audit(args.out, args.preset, tasks=[args.task], optimizers=optimizers, table=table)
    for line in problems:
        print(f"  protocol: {line}")
    print(f"wrote {', '.join(map(str, paths))}" + ("" if table is None else f"; updated {table}"))
    return 0
