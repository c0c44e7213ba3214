"""``optbench study NAME``: the SNR studies of SlimAdam (optbench.studies), as tables and plots."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

HELP = "SNR studies for SlimAdam: alpha, criterion, proxy, lr, cost, curves, seeds (or all)"
# Each study NAME runs optbench.studies.study_NAME; NAME -> its tasks when --tasks is not given.
DEFAULT_TASKS = {  # the two-task studies use one vision and one language task to stay cheap
    "alpha": ("digits-mlp", "topics-gpt"),
    "criterion": ("digits-mlp", "topics-gpt"),
    "proxy": ("digits-mlp", "topics-gpt"),
    "lr": ("digits-mlp", "topics-gpt"),
    "cost": None,  # None = every registered CPU task
    "curves": None,
    "seeds": None,
}
ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LR_SCALES = (0.03, 0.1, 0.3, 1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=(*DEFAULT_TASKS, "all"), help="which study")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: per study, see --help)")
    parser.add_argument("--preset", default="cpu", help="budget preset (cpu for the committed results, smoke to test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proxy-steps", type=int, default=None, help="proxy run steps (default: the budget's)")
    parser.add_argument("--every", type=int, default=10, help="record V at step 1 and every this many steps")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS), help="alpha grid")
    parser.add_argument("--lr-scales", default=",".join(f"{s:g}" for s in LR_SCALES), help="proxy lr scales")
    parser.add_argument("--criterion-alphas", default="0.015625,0.0625,0.25,1,2,4",
                        help="alpha grid of the criterion study (wide: the variance criterion needs small alpha)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine more threads oversubscribe; "
                             "the studies compare metrics and memory, not time)")
    parser.add_argument("--out", default="results/snr", help="output folder (default results/snr)")


def run(args: argparse.Namespace) -> int:
    from optbench import registry, snr, studies

    registry.check_preset(args.preset)
    alphas = tuple(snr.check_alpha(float(a)) for a in args.alphas.split(","))
    criterion_alphas = tuple(snr.check_alpha(float(a)) for a in args.criterion_alphas.split(","))
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    scales = tuple(float(s) for s in args.lr_scales.split(","))
    if 0.1 not in scales:
        raise ValueError(f"--lr-scales must include 0.1 (the reference scale), got {args.lr_scales}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.every < 1:
        raise ValueError(f"--every must be >= 1, got {args.every}")
    ctx = studies.Context(args.preset, args.seed, out, args.proxy_steps, args.every, alphas, criterion_alphas, scales)
    names = tuple(DEFAULT_TASKS) if args.name == "all" else (args.name,)
    start = time.perf_counter()
    for name in names:
        tasks = args.tasks.split(",") if args.tasks else list(DEFAULT_TASKS[name] or studies.cpu_tasks())
        available = set(registry.tasks())
        missing = [t for t in tasks if t not in available]
        if missing:
            raise ValueError(f"unknown task(s) {missing}; known: {', '.join(sorted(available))}")
        print(f"study {name}: {', '.join(tasks)}")
        rows = getattr(studies, f"study_{name}")(ctx, tasks)
        drop = ("rules_json", "train_curve", "eval_curve")
        studies.write_table(rows, out, name, drop=drop)
        if name == "criterion":
            studies.write_table(studies.matched_criteria(rows), out, "criterion_matched")
        print(f"  wrote {out / name}.md, .csv" + (", .png" if name != "seeds" else ""))
    print(f"done in {time.perf_counter() - start:.0f} s; {len(ctx.traces)} proxy runs, {len(ctx.runs)} training runs")
    return 0
