"""``optbench snr``: SlimAdam's rules from the SNR of Adam's second moment, recorded here or read from a trace.

With ``--task``: train the task with Adam (the proxy run), record the statistics and derive the
rules. With ``--from-trace FILE``: read a trace recorded earlier, our own ``trace.csv`` or the
reference code's SNR log (``optbench.snr_trace``), and derive the rules from it without
training; ``--task`` then checks the trace against the task's model and takes its declared roles.

Writes ``rules.json`` (``{parameter: [axes] | null}`` plus ``_`` metadata, the format ``slimadam``
reads) and ``summary.md`` (per-role choices and the memory saved) under ``--out``, plus
``trace.csv`` (the recorded statistics) for a proxy run; ``--rules-out`` also writes the rules
where ``slimadam-snr`` finds them (``optimizers/rules/<task>.json``).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

HELP = "SNR analysis of Adam's second moment (a proxy run, or a recorded trace); writes SlimAdam rules"

# Options of the proxy run, and their defaults (None in the parser, so that giving one with
# --from-trace, where it means nothing, is caught).
PROXY_DEFAULTS = {"lr_scale": 0.1, "lr": None, "every": None, "steps": None, "seed": 0, "device": "cpu",
                  "threads": None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default=None,
                        help="registered task: train its proxy (required without --from-trace), or check the "
                             "trace against its model and use its roles")
    parser.add_argument("--from-trace", default=None, metavar="FILE",
                        help="derive the rules from this trace CSV (ours, or the reference code's SNR log) "
                             "instead of a proxy run")
    parser.add_argument("--preset", default=None, help="budget preset (smoke, cpu, gpu); default cpu")
    parser.add_argument("--lr-scale", type=float, default=None,
                        help="proxy lr = this x the task's Adam lr (default 0.1)")
    parser.add_argument("--lr", type=float, default=None, help="proxy lr, overriding --lr-scale")
    parser.add_argument("--alpha", type=float, default=1.0, help="threshold: compress when SNR > alpha (default 1)")
    parser.add_argument("--every", type=int, default=None,
                        help="record at step 1 and every this many steps (default: 10, or a tenth of the "
                             "proxy's steps when that is fewer, so a trace has about 10 points or more)")
    parser.add_argument("--steps", type=int, default=None, help="proxy steps (default: the preset's budget)")
    parser.add_argument("--criterion", default="snr",  # checked in run (snr.criterion): no torch at parse time
                        help="snr (default), variance or relerr; see optbench/snr.py for the thresholds")
    parser.add_argument("--seed", type=int, default=None, help="proxy seed (default 0)")
    parser.add_argument("--device", default=None, help="proxy device (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=None, help="output folder (default results/snr/<task or trace name>)")
    parser.add_argument("--rules-out", default=None, help="also write the rules JSON here")


def command_line(args: argparse.Namespace) -> str:
    """The canonical command that reproduces these outputs (stored as '_command')."""
    if args.from_trace is not None:
        parts = ["optbench", "snr"]
        if args.task is not None:
            parts += ["--task", args.task, "--preset", args.preset]
        parts += ["--from-trace", args.from_trace, "--alpha", f"{args.alpha:g}", "--criterion", args.criterion]
    else:
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


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def run(args: argparse.Namespace) -> int:
    from optbench import snr
    from optbench.atomic import writable_dir, writable_file
    from optbench.errors import UsageError
    from optbench.registry import check_preset, get_task

    snr.check_alpha(args.alpha)
    snr.get_criterion(args.criterion)
    if args.from_trace is not None:
        given = [_flag(k) for k in PROXY_DEFAULTS if getattr(args, k) is not None]
        if given:
            raise UsageError(f"{', '.join(given)} set(s) the proxy run, which --from-trace does not make; "
                             "leave it out, or drop --from-trace to train a proxy")
        if args.preset is not None and args.task is None:
            raise UsageError("--preset with --from-trace picks the model of --task; give --task too")
    elif args.task is None:
        raise UsageError("give --task T (train a proxy on task T) or --from-trace FILE (read a recorded trace)")
    args.preset = args.preset or "cpu"
    check_preset(args.preset)
    task = get_task(args.task) if args.task is not None else None
    if args.from_trace is None:
        for key, default in PROXY_DEFAULTS.items():
            if getattr(args, key) is None:
                setattr(args, key, default)
        if args.every is None:  # resolved here, so the rules' _command names the cadence that ran
            args.every = snr.default_every(args.steps if args.steps is not None else task.budget(args.preset).steps)
        if args.every < 1:
            raise UsageError(f"--every must be >= 1, got {args.every}")
    out = args.out or f"results/snr/{task.name if task else Path(args.from_trace).stem}"
    writable_dir(out, "--out")  # before the proxy run trains
    if args.rules_out is not None:
        writable_file(args.rules_out, "--rules-out")
    if args.from_trace is not None:
        trace = _read_trace(args, task)
    else:
        if args.threads is not None:
            if args.threads < 1:
                raise UsageError(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)
        trace = snr.proxy_run(task, args.preset, lr_scale=args.lr_scale, lr=args.lr, every=args.every,
                              steps=args.steps, seed=args.seed, device=args.device)
    paths = snr.write_outputs(trace, out, criterion=args.criterion, alpha=args.alpha, command=command_line(args),
                              rules_out=args.rules_out)
    saving = snr.memory_saving(trace.params, snr.load_rules(paths["rules"]))
    if trace.source is None:
        origin = f"{task.name}: proxy Adam lr {trace.lr:g}, {trace.steps} steps"
    else:
        origin = (f"{args.from_trace} ({trace.source['format']} format): {len(trace.params)} tensors, "
                  f"{len(trace.source['recorded_steps'])} recorded steps")
    print(f"{origin}; second moment saved {100 * saving['v_saved_share']:.1f}%, optimizer state saved "
          f"{100 * saving['state_saved_share']:.1f}%")
    for key, path in paths.items():
        print(f"  {key}: {path}")
    return 0


def _read_trace(args: argparse.Namespace, task):
    """The trace file as a ProxyTrace; with a task, checked against its model and given its roles."""
    from optbench import snr_trace
    from optbench.model_info import get_model_info

    model, roles = None, None
    if task is not None:
        model = task.instantiate(args.preset, 0, "cpu").model
        roles = get_model_info(model).roles
    trace = snr_trace.read_trace(args.from_trace, roles=roles, task=task.name if task else None)
    snr_trace.check_criterion(trace, args.criterion)
    if task is not None:
        trace.preset = args.preset
        shapes = {n: (tuple(p.shape), str(roles[n])) for n, p in model.named_parameters() if p.requires_grad}
        snr_trace.align_with_model(trace, shapes, task.name)
    return trace
