"""``optbench check``: the regression gate for a new optimizer variant (rule in ``optbench.gate``).

Exit status: 0 every task passes, 1 a quality regression, a diverged or errored candidate run,
an exceeded memory/time gate, or a baseline that did not finish; 2 a usage error.
"""

from __future__ import annotations

import argparse
import json

from optbench.commands._common import (
    add_executor_arguments,
    add_plugin_argument,
    csv_list,
    executor_from_args,
    int_list,
    load_plugins,
    parse_hparams,
    writable_file,
)
from optbench.stats import DEFAULT_ALPHA, TESTS
from optbench.store import ENV_POLICIES

HELP = "regression gate: run a candidate and a baseline on the same seeds, exit 1 if the candidate is worse"
DEFAULT_CHECK_RUNS_DIR = "results/runs-scratch/check"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidate", required=True, help="registered optimizer name to check")
    parser.add_argument("--baseline", default="adamw", help="optimizer to compare against (default: adamw)")
    parser.add_argument("--tasks", type=csv_list, default=None,
                        help="comma-separated task names, or 'all' (default: every task of the preset's tier)")
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--preset", default="cpu", help="smoke | cpu | gpu (default: cpu)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="non-inferiority margin δ in metric units (default: max(2 x baseline seed std, "
                             "1%% of |baseline mean|))")
    parser.add_argument("--hard-bound", type=float, default=None,
                        help="FAIL when worse by more than this, whatever the p-value (default: 3δ)")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help=f"significance level of the one-sided test (default: {DEFAULT_ALPHA:g})")
    parser.add_argument("--test", default="paired", choices=TESTS,
                        help="paired t on per-seed differences (default) or Welch t on the two samples")
    parser.add_argument("--max-memory-ratio", type=float, default=None,
                        help="FAIL when candidate/baseline optimizer-state bytes exceed this")
    parser.add_argument("--max-time-ratio", type=float, default=None,
                        help="FAIL when candidate/baseline median step time exceeds this")
    parser.add_argument("--hparam", action="append", metavar="KEY=VALUE",
                        help="candidate hyperparameter, e.g. lr=3e-4 or impl=forloop (repeatable)")
    parser.add_argument("--lr-from-baseline", action="store_true",
                        help="run the candidate at the baseline's learning rate on each task (default: its own: "
                             "sweep table, task default, then its spec's default_lr)")
    parser.add_argument("--tune", action="store_true",
                        help="tune the candidate's lr on each task first, by the protocol the baseline's published "
                             "lr came from (optbench sweep: >= 7 lrs, 2 tuning seeds; runs in <runs-dir>/tune)")
    parser.add_argument("--baseline-hparam", action="append", metavar="KEY=VALUE",
                        help="baseline hyperparameter (repeatable)")
    parser.add_argument("--runs-dir", default=DEFAULT_CHECK_RUNS_DIR,
                        help=f"where run records are read and written (default: {DEFAULT_CHECK_RUNS_DIR}; "
                             "results/runs reuses the leaderboard's baseline runs)")
    parser.add_argument("--reuse-candidate", action="store_true",
                        help="reuse stored candidate runs too (default: always rerun the candidate)")
    parser.add_argument("--on-env-mismatch", default="rerun", choices=ENV_POLICIES,
                        help="a stored run from another environment is rerun here (default) or refused (exit 2)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for the gpu preset when present)")
    parser.add_argument("--text-file", default=None, help="train language tasks on this text file instead")
    parser.add_argument("--data-dir", default=None, help="where GPU-tier datasets are read from")
    parser.add_argument("--no-memory-pass", action="store_true", help="skip the tensor-level peak-memory pass")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the verdicts as JSON here")
    add_executor_arguments(parser)
    add_plugin_argument(parser)


def run(args: argparse.Namespace) -> int:
    from optbench.atomic import write_text_atomic
    from optbench.check import run_check
    from optbench.check_output import format_report, report_json
    from optbench.commands._common import expand_tasks, resolve_device_arg
    from optbench.commands.run import task_options_for
    from optbench.gate import Gates
    from optbench.sweep import Protocol

    load_plugins(args)
    device = resolve_device_arg(args)
    tasks = expand_tasks(args.tasks, args.preset)
    json_path = writable_file(args.json, "--json") if args.json else None
    gates = Gates(tolerance=args.tolerance, hard_bound=args.hard_bound, alpha=args.alpha, test=args.test,
                  max_memory_ratio=args.max_memory_ratio, max_time_ratio=args.max_time_ratio)
    executor = executor_from_args(args)
    try:
        report = run_check(
            args.candidate, baseline=args.baseline, tasks=tasks, seeds=args.seeds, preset=args.preset,
            runs_dir=args.runs_dir, device=device, candidate_hparams=parse_hparams(args.hparam),
            baseline_hparams=parse_hparams(args.baseline_hparam),
            task_options=task_options_for(tasks, args.text_file, args.data_dir), gates=gates,
            reuse_candidate=args.reuse_candidate, on_mismatch=args.on_env_mismatch,
            lr_from_baseline=args.lr_from_baseline, tune=Protocol() if args.tune else None,
            measure_memory_pass=not args.no_memory_pass,
            progress=not args.no_progress, executor=executor,
        )
    finally:
        executor.close()
    print(format_report(report))
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report_json(report), indent=1, default=str) + "\n")
    return report.exit_code
