"""Each available optimizer against fused torch AdamW, side by side from one run: median
``optimizer.step()`` time and optimizer-state bytes, both as ratios to AdamW's, on the
topics-gpt GPT (4 layers, d_model 128, 4 heads, MLP 512, vocab 256, context 128).

    python -m benchmarks.optimizer_ratios [--steps 50] [--warmup 5] [--device cpu] [--optimizers a,b]

Gradients come from one forward/backward and stay in place, so only the step is timed.
Steps are interleaved across optimizers (round r times every optimizer's step r before any
step r+1), so a change in machine load hits all of them alike; warm-up rounds are dropped and
the median over the remaining rounds is reported. State bytes are counted from the tensors
the optimizer holds (optbench.state) and checked against the spec's formula.
On CUDA each step is followed by torch.cuda.synchronize(); that path was never run here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from tabulate import tabulate

from benchmarks._gpt import fill_gradients, gpt_model
from optbench.registry import optimizers
from optbench.state import optimizer_state_bytes

BASELINE = "adamw"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="timed steps per optimizer, after warm-up")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--optimizers", default="", help="comma-separated names (default: every available one)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    return args


def prepare(names: list[str], device: str) -> tuple[dict, list[tuple[str, str]], str]:
    """Ready (spec, model, optimizer) per name with gradients in place; skipped names with reasons."""
    specs, ready, skipped, source = optimizers(), {}, [], ""
    for name in names:
        if name not in specs:
            raise SystemExit(f"unknown optimizer {name!r}; known: {', '.join(sorted(specs))}")
        spec = specs[name]
        reason = spec.unavailable_reason(device)
        if reason is None:
            model, source = gpt_model(device=device)
            try:
                optimizer = spec.build(model, spec.default_lr, **spec.resolve_hparams())
            except ValueError as exc:
                reason = str(exc)
        if reason is not None:
            skipped.append((name, reason))
            continue
        fill_gradients(model)
        ready[name] = (spec, model, optimizer)
    return ready, skipped, source


def timed_step(optimizer: torch.optim.Optimizer, cuda: bool) -> float:
    start = time.perf_counter()
    optimizer.step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(ready: dict, steps: int, warmup: int, cuda: bool) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in ready}
    for round_ in range(warmup + steps):
        for name, (_, _, optimizer) in ready.items():
            seconds = timed_step(optimizer, cuda)
            if round_ >= warmup:
                times[name].append(seconds)
    return times


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in args.optimizers.split(",") if n] or sorted(optimizers())
    if BASELINE not in names:
        names.insert(0, BASELINE)
    ready, skipped, source = prepare(names, args.device)
    if BASELINE not in ready:
        raise SystemExit(f"baseline {BASELINE!r} cannot run here: {dict(skipped).get(BASELINE)}")
    times = measure(ready, args.steps, args.warmup, args.device.startswith("cuda"))
    median = {name: statistics.median(t) for name, t in times.items()}
    state = {name: optimizer_state_bytes(opt) for name, (_, _, opt) in ready.items()}
    rows = []
    for name, (spec, model, _) in sorted(ready.items(), key=lambda item: state[item[0]]):
        formula = spec.state_bytes(model, **spec.resolve_hparams())
        rows.append([name, spec.family, f"{median[name] * 1e3:.3f}", f"{median[name] / median[BASELINE]:.2f}",
                     state[name], f"{state[name] / state[BASELINE]:.3f}",
                     "ok" if formula == state[name] else f"MISMATCH ({formula})"])
    print(f"model: {source}; device {args.device}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.steps} timed steps after {args.warmup} warm-up, interleaved; baseline: fused torch AdamW")
    print(tabulate(rows, headers=["optimizer", "family", "step ms (median)", "step / adamw", "state bytes",
                                  "state / adamw", "formula"], tablefmt="github"))
    for name, reason in skipped:
        print(f"skipped {name}: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
