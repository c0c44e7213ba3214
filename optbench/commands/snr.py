"""``optbench snr``: train a task with Adam (the proxy run) and derive SlimAdam's rules from the SNR.

Writes ``trace.csv`` (the recorded statistics), ``rules.json`` (``{parameter: [axes] | null}`` plus
``_`` metadata, the format ``slimadam`` reads) and ``summary.md`` (per-role choices and the
memory saved) under ``--out``; ``--rules-out`` also writes the rules where ``slimadam-snr`` finds
them (``optimizers/rules/<task>.json``).
"""

from __future__ import annotations

import argparse
import shlex

HELP = "SNR analysis of Adam's second moment on a task; writes SlimAdam rules"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="registered task name")
    parser.add_argument("--preset", default="cpu", help="budget preset (smoke, cpu, gpu); default cpu")
    parser.add_argument("--lr-scale", type=float, default=0.1,
                        help="proxy lr = this x the task's Adam lr (default 0.1)")
    parser.add_argument("--lr", type=float, default=None, help="proxy lr, overriding --lr-scale")
    parser.add_argument("--alpha", type=float, default=1.0, help="threshold: compress when SNR > alpha (default 1)")
    parser.add_argument("--every", type=int, default=10, help="record at step 1 and every this many steps")
    parser.add_argument("--steps", type=int, default=None, help="proxy steps (default: the preset's budget)")
    parser.add_argument("--criterion", default="snr",  # checked in run (snr.criterion): no torch at parse time
                        help="snr (default), variance or relerr; see optbench/snr.py for the thresholds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=None, help="output folder (default results/snr/<task>)")
    parser.add_argument("--rules-out", default=None, help="also write the rules JSON here")


def command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces these outputs (stored as '_command')."""
    parts = ["optbench", "snr", "--task", args.task, "--preset", args.preset]
    if args.lr is not None:
        parts += ["--lr", f"{args.lr:g}"]
    else:
        parts += ["--lr-scale", f"{args.lr_scale:g}"]
    parts += ["--alpha", f"{args.alpha:g}", "--every", str(args.every), "--criterion", args.criterion]
    if args.steps is not None:
        parts += ["--steps", str(args.steps)]
    if args.seed != 0:
        parts += ["--seed", str(args.seed)]
    if args.device != "cpu":
        parts += ["--device", args.device]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    if args.out is not None:
        parts += ["--out", args.out]
    if args.rules_out is not None:
        parts += ["--rules-out", args.rules_out]
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from optbench import snr
    from optbench.atomic import writable_dir, writable_file
    from optbench.registry import check_preset, get_task

    check_preset(args.preset)
    snr.check_alpha(args.alpha)
    snr.get_criterion(args.criterion)
    if args.every < 1:
        raise ValueError(f"--every must be >= 1, got {args.every}")
    task = get_task(args.task)
    writable_dir(args.out or f"results/snr/{task.name}", "--out")  # before the proxy run trains
    if args.rules_out is not None:
        writable_file(args.rules_out, "--rules-out")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    trace = snr.proxy_run(task, args.preset, lr_scale=args.lr_scale, lr=args.lr, every=args.every, steps=args.steps,
                          seed=args.seed, device=args.device)
    out = args.out or f"results/snr/{task.name}"
    paths = snr.write_outputs(trace, out, criterion=args.criterion, alpha=args.alpha, command=command_line(args),
                              rules_out=args.rules_out)
    saving = snr.memory_saving(trace.params, snr.load_rules(paths["rules"]))
    print(f"{task.name}: proxy Adam lr {trace.lr:g}, {trace.steps} steps; second moment saved "
          f"{100 * saving['v_saved_share']:.1f}%, optimizer state saved {100 * saving['state_saved_share']:.1f}%")
    for key, path in paths.items():
        print(f"  {key}: {path}")
    return 0
