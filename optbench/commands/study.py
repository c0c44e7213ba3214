"""``optbench study NAME``: the SNR studies of SlimAdam (optbench.studies), as tables and plots.

Every arm runs at every ``--seeds`` seed through the run store under ``--runs-dir`` (default
``<out>/runs``, never the board's ``results/runs``): a second call with the same runs folder
trains only what is missing. ``--dry-run`` lists what would run and trains nothing. Exit status:
0 done, 1 a run failed (its tables still written, the verdicts say inconclusive), 2 a usage
error, found before anything runs.
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from pathlib import Path

from optbench.commands._common import DEFAULT_RUNS_DIR, csv_list, float_list, int_list, writable_dir
from optbench.errors import UsageError

HELP = "SNR studies for SlimAdam: alpha, criterion, proxy, lr, eos, stability, cost, curves, seeds (or all)"
# Each study NAME runs optbench.studies.STUDIES[NAME]; NAME -> its tasks when --tasks is not given.
DEFAULT_TASKS = {  # the many-arm studies use one vision and one language task to stay cheap
    "alpha": ("digits-mlp", "topics-gpt"),
    "criterion": ("digits-mlp", "topics-gpt"),
    "proxy": ("digits-mlp", "topics-gpt"),
    "lr": ("digits-mlp", "topics-gpt"),
    "eos": ("digits-mlp", "topics-gpt"),
    "stability": None,  # None = every registered CPU task
    "cost": None,
    "curves": None,
    "seeds": None,
}
SEEDS = (0, 1, 2)
ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
CRITERION_ALPHAS = (0.015625, 0.0625, 0.25, 1.0, 2.0, 4.0)
LR_SCALES = (0.03, 0.1, 0.3, 1.0)
EOS_CAP = 16.0


def _join(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=(*DEFAULT_TASKS, "all"), help="which study")
    parser.add_argument("--tasks", type=csv_list, default=None,
                        help="comma-separated tasks (default: per study: " + "; ".join(
                            f"{k} {','.join(v) if v else 'every CPU task'}" for k, v in DEFAULT_TASKS.items()) + ")")
    parser.add_argument("--preset", default="cpu", help="budget preset (cpu for the committed results, smoke to test)")
    parser.add_argument("--seeds", type=int_list, default=list(SEEDS),
                        help=f"seeds every arm trains at (default {_join(SEEDS)}; at least 2: the verdict is paired)")
    parser.add_argument("--proxy-seed", type=int, default=0, help="seed of the proxy runs (default 0)")
    parser.add_argument("--proxy-steps", type=int, default=None, help="proxy run steps (default: the budget's)")
    parser.add_argument("--every", type=int, default=None,
                        help="record V at step 1 and every this many steps (default: 10, or a tenth of a "
                             "shorter proxy's steps)")
    parser.add_argument("--alphas", type=float_list, default=list(ALPHAS), help=f"alpha grid ({_join(ALPHAS)})")
    parser.add_argument("--criterion-alphas", type=float_list, default=list(CRITERION_ALPHAS),
                        help=f"alpha grid of the criterion study ({_join(CRITERION_ALPHAS)}; wide: the variance "
                             "criterion needs small alpha)")
    parser.add_argument("--lr-scales", type=float_list, default=list(LR_SCALES),
                        help=f"proxy lr scales of the lr study, x the tuned AdamW lr ({_join(LR_SCALES)}; "
                             "must include 0.1)")
    parser.add_argument("--eos-cap", type=float, default=EOS_CAP,
                        help=f"the eos study doubles the proxy lr from 0.1 x the tuned AdamW lr up to this multiple "
                             f"of it, or until the proxy diverges (default {EOS_CAP:g})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine more threads oversubscribe; "
                             "the studies compare losses and memory, not time)")
    parser.add_argument("--out", default="results/snr", help="output folder (default results/snr)")
    parser.add_argument("--runs-dir", default=None,
                        help="run records of the studies (default <out>/runs; never the board's results/runs)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the planned proxy and training runs (upper bounds) and train nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def command_of(args: argparse.Namespace) -> str:
    """The command that reproduces this call: the study, its preset, seeds and tasks, and every option
    that differs from its default."""
    parts = ["optbench", "study", args.name, "--preset", args.preset, "--seeds", _join(args.seeds)]
    if args.tasks:
        parts += ["--tasks", ",".join(args.tasks)]
    optional = {"--proxy-seed": (args.proxy_seed, 0), "--proxy-steps": (args.proxy_steps, None),
                "--every": (args.every, None), "--alphas": (args.alphas, list(ALPHAS)),
                "--criterion-alphas": (args.criterion_alphas, list(CRITERION_ALPHAS)),
                "--lr-scales": (args.lr_scales, list(LR_SCALES)), "--eos-cap": (args.eos_cap, EOS_CAP),
                "--threads": (args.threads, 1), "--out": (args.out, "results/snr"), "--runs-dir": (args.runs_dir, None)}
    for flag, (value, default) in optional.items():
        if value != default:
            parts += [flag, _join(value) if isinstance(value, list) else str(value)]
    return shlex.join(parts)


def _positive(flag: str, values, least: float = 0.0) -> None:
    for v in values:
        if not (math.isfinite(v) and v > least):
            raise UsageError(f"{flag} {v:g}: expected finite numbers > {least:g}")


def check_args(args: argparse.Namespace) -> dict[str, list[str]]:
    """Every value checked before anything runs (UsageError naming the bad value and the accepted ones);
    returns the plan: study -> its tasks."""
    from optbench import registry, studies

    registry.check_preset(args.preset)
    if len(set(args.seeds)) < 2 or len(set(args.seeds)) != len(args.seeds):
        raise UsageError(f"--seeds {_join(args.seeds)}: expected at least 2 distinct seeds (the verdict pairs "
                         "seeds; the default is 0,1,2)")
    _positive("--alphas", args.alphas)
    _positive("--criterion-alphas", args.criterion_alphas)
    _positive("--lr-scales", args.lr_scales)
    if not any(abs(s - studies.REFERENCE_SCALE) < 1e-12 for s in args.lr_scales):
        raise UsageError(f"--lr-scales {_join(args.lr_scales)}: must include 0.1 (the reference scale)")
    if not (math.isfinite(args.eos_cap) and args.eos_cap >= studies.REFERENCE_SCALE):
        raise UsageError(f"--eos-cap {args.eos_cap:g}: expected a number >= 0.1 (the first scale probed)")
    for flag, value in (("--every", args.every), ("--threads", args.threads), ("--proxy-steps", args.proxy_steps)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: expected an integer >= 1")
    known = registry.tasks()
    for task in args.tasks or []:
        if task not in known:
            raise UsageError(f"unknown task {task!r}; known: {', '.join(sorted(known))}")
        known[task].budget(args.preset)  # a task without this preset's budget: ValueError naming the presets
    runs_dir = Path(args.runs_dir or Path(args.out) / "runs")
    if runs_dir.resolve() == Path(DEFAULT_RUNS_DIR).resolve():
        raise UsageError(f"--runs-dir {runs_dir}: that is the board's runs folder; give another one "
                         "(default <out>/runs)")
    plan = {}
    for name in (tuple(DEFAULT_TASKS) if args.name == "all" else (args.name,)):
        tasks = list(args.tasks or DEFAULT_TASKS[name] or studies.cpu_tasks())
        if name == "proxy":
            unsupported = [t for t in tasks if t not in studies.NARROW_TASKS]
            if unsupported and args.name == "proxy":
                raise UsageError(f"study proxy: no narrow proxy model for task(s) {', '.join(unsupported)}; "
                                 f"accepted: {', '.join(studies.NARROW_TASKS)}")
            tasks = [t for t in tasks if t in studies.NARROW_TASKS]
        if tasks:
            plan[name] = tasks
    return plan


def run(args: argparse.Namespace) -> int:
    plan = check_args(args)
    out = Path(args.out)
    runs_dir = Path(args.runs_dir or out / "runs")
    writable_dir(out, "--out")
    writable_dir(runs_dir, "--runs-dir")
    import torch

    from optbench import studies
    from optbench.env import default_device

    torch.set_num_threads(args.threads)
    ctx = studies.Context(args.preset, tuple(args.seeds), out, runs_dir, proxy_seed=args.proxy_seed,
                          proxy_steps=args.proxy_steps, every=args.every, alphas=tuple(args.alphas),
                          criterion_alphas=tuple(args.criterion_alphas),
                          lr_scales=tuple(studies._scale(s) for s in args.lr_scales), eos_cap=args.eos_cap,
                          device=default_device(args.preset), command=command_of(args), dry_run=args.dry_run,
                          progress=not args.no_progress)
    if "proxy" in plan and args.tasks and len(plan["proxy"]) < len(args.tasks):
        print(f"study proxy: only {', '.join(plan['proxy'])} (a narrow proxy model exists for "
              f"{', '.join(studies.NARROW_TASKS)})")
    if args.dry_run:
        print("\n".join(studies.describe_plan(ctx, plan)))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    studies.run_studies(ctx, plan)
    proxies = sum(1 for _ in ctx.traces)
    print(f"done in {time.perf_counter() - start:.0f} s: {proxies} proxy runs; {ctx.ran} training runs done, "
          f"{ctx.reused} reused from {runs_dir}; {len(ctx.failed)} not ok")
    for line in ctx.failed:
        print(f"  {line}")
    return 1 if ctx.errored else 0
