"""``optbench run``: run a grid of (task, optimizer, seed) cells, resumably, one JSON record each.

Exit status: 0 when every cell's record is ok or diverged (a divergence is a result), 1 when
any run failed (an error record, run now or reused from an earlier grid: ``--rerun-failed``
retries those; a cell that cannot run here is listed, not failed), 2 a usage error, found
before anything runs.
"""

from __future__ import annotations

import argparse

from optbench.commands._common import (
    DEFAULT_RUNS_DIR,
    add_executor_arguments,
    add_plugin_argument,
    csv_list,
    executor_from_args,
    expand_optimizers,
    expand_tasks,
    int_list,
    load_plugins,
    parse_hparams,
    resolve_device_arg,
    writable_dir,
)

HELP = "train a grid of tasks x optimizers x seeds under a preset and write one run record per run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=csv_list, default=None,
                        help="comma-separated task names, or 'all' (default: every task of the preset's tier)")
    parser.add_argument("--optimizers", type=csv_list, default=None,
                        help="comma-separated optimizer names, or 'all' (default: every available optimizer)")
    parser.add_argument("--seeds", type=int_list, default=[0], help="comma-separated seeds (default: 0)")
    parser.add_argument("--preset", default="cpu", help="smoke | cpu | gpu (default: cpu)")
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                        help=f"where run records go (default: {DEFAULT_RUNS_DIR})")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for the gpu preset when present)")
    parser.add_argument("--hparam", action="append", metavar="KEY=VALUE",
                        help="hyperparameter for every optimizer of the grid, e.g. lr=3e-4 (repeatable)")
    parser.add_argument("--text-file", default=None, help="train language tasks on this text file instead")
    parser.add_argument("--data-dir", default=None, help="where GPU-tier datasets are read from")
    parser.add_argument("--rerun-failed", action="store_true", help="rerun cells whose stored run errored")
    parser.add_argument("--no-memory-pass", action="store_true", help="skip the tensor-level memory pass")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_executor_arguments(parser)
    add_plugin_argument(parser)


def task_options_for(task_names: list[str], text_file: str | None, data_dir: str | None) -> dict[str, dict]:
    """Pass each option only to the tasks that declare it."""
    from optbench import registry

    given = {"text_file": text_file, "data_dir": data_dir}
    return {name: {k: v for k, v in given.items() if v is not None and k in registry.get_task(name).options}
            for name in task_names}


def run(args: argparse.Namespace) -> int:
    from optbench import registry
    from optbench.runner import make_cells, run_grid

    load_plugins(args)
    registry.check_preset(args.preset)
    device = resolve_device_arg(args)
    writable_dir(args.runs_dir, "--runs-dir")
    tasks = expand_tasks(args.tasks, args.preset)
    optimizers = expand_optimizers(args.optimizers, device)
    hparams = parse_hparams(args.hparam)
    options = task_options_for(tasks, args.text_file, args.data_dir)
    print(f"optbench run: {len(tasks)} task(s) x {len(optimizers)} optimizer(s) x {len(args.seeds)} seed(s), "
          f"preset {args.preset}, device {device}, records in {args.runs_dir}")
    cells = make_cells(tasks, optimizers, args.seeds, hparams, options)
    executor = executor_from_args(args)
    try:
        outcome = run_grid(cells, preset=args.preset, runs_dir=args.runs_dir, device=device,
                           rerun_failed=args.rerun_failed, progress=not args.no_progress,
                           measure_memory_pass=not args.no_memory_pass, executor=executor)
    finally:
        executor.close()
    not_ok = len(outcome.failed) + len(outcome.reused_failed)
    print(f"optbench run: {outcome.ran} run(s) done, {outcome.reused} reused from {args.runs_dir}, "
          f"{not_ok} not ok ({len(outcome.reused_failed)} of them reused"
          f"{'; --rerun-failed retries errors' if outcome.reused_failed else ''})")
    for line in (outcome.failed + [f"{line} [reused]" for line in outcome.reused_failed]
                 + [f"corrupt file set aside: {p}" for p in outcome.corrupt]):
        print(f"  {line}")
    return 1 if outcome.errored else 0
