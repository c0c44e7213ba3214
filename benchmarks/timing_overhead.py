"""Does the runner's instrumentation distort the training it times? Target: within 3%.

Same task, optimizer, seed and batches, two loops, run interleaved (A B, B A, ...):

- bare:  ``optbench.loop.TrainingStep`` (the one training step: lr schedule, forward, backward,
  clipping if the budget clips, step, zero_grad) in a loop; nothing else.
- timed: ``optbench.runner.train``, the runner's timed pass: the same step with its clocks, device
  syncs, ``loss.item()`` every step and curve logging. Evaluation is taken out of the comparison:
  the budget evaluates only at the last step (``eval_every = steps``) and the instance's
  ``evaluate`` is swapped for a no-op, so both loops do the same training work.

Each loop is clocked from outside (device-synchronised) and its throughput in samples/s is the
number of steps x samples per step over that wall time. The overhead is
``(bare - timed) / bare`` on the median throughputs. Also printed: the throughput the runner
itself reports (batch size / its median per-step time, warm-up steps excluded),
for comparison with the bare loop.

Run (needs a quiet machine to mean anything)::

    python benchmarks/timing_overhead.py --task digits-mlp --optimizer adamw --preset cpu --steps 300 --repeats 7
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from optbench import registry  # noqa: E402
from optbench.loop import TrainingStep  # noqa: E402
from optbench.lrs import resolve_lr  # noqa: E402
from optbench.runner import _sync, seed_everything, train  # noqa: E402
from optbench.spec import Budget, EvalResult, TaskInstance  # noqa: E402

TARGET_PCT = 3.0


def bare_loop(instance: TaskInstance, optimizer: torch.optim.Optimizer, budget: Budget) -> None:
    model, train_step = instance.model, TrainingStep.for_task(instance, budget)
    model.train()
    for step in range(1, budget.steps + 1):
        train_step(model, optimizer, next(instance.batches), step)


def one_repeat(mode: str, args: argparse.Namespace, device: torch.device) -> tuple[float, float | None]:
    """Samples/s of one fresh (model, optimizer) trained ``args.steps`` steps; and, for 'timed', the runner's own."""
    task, spec = registry.get_task(args.task), registry.get_optimizer(args.optimizer)
    budget = dataclasses.replace(task.budget(args.preset), steps=args.steps, eval_every=args.steps)
    lr, _ = resolve_lr(task, spec, args.preset)
    seed_everything(args.seed)
    instance = task.instantiate(args.preset, args.seed, device)
    instance.evaluate = lambda model: EvalResult(metric=0.0)  # evaluation is not what is being compared
    optimizer = spec.build(instance.model, lr, **spec.resolve_hparams({}))
    _sync(device)
    start = time.perf_counter()
    if mode == "bare":
        bare_loop(instance, optimizer, budget)
        reported = None
    else:
        result = train(instance, optimizer, budget, device)
        reported = instance.samples_per_step / statistics.median(result.step_s) if result.step_s else None
    _sync(device)
    elapsed = time.perf_counter() - start
    return args.steps * instance.samples_per_step / elapsed, reported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="digits-mlp")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--preset", default="cpu", help="whose batch size and model size to use (default: cpu)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per repeat (default: 300)")
    parser.add_argument("--repeats", type=int, default=7, help="repeats of each loop, interleaved (default: 7)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    registry.check_preset(args.preset)
    if args.steps < 2 or args.repeats < 1:
        raise ValueError(f"need --steps >= 2 and --repeats >= 1, got {args.steps} and {args.repeats}")
    device = torch.device(args.device)
    print(f"timing overhead: {args.task} / {args.optimizer}, preset {args.preset}, {args.steps} steps x "
          f"{args.repeats} repeats per loop, device {device}, {torch.get_num_threads()} torch threads")
    for mode in ("bare", "timed"):  # warm-up: lazy initialisation, allocator, caches
        one_repeat(mode, argparse.Namespace(**{**vars(args), "steps": min(args.steps, 20)}), device)
    bare, timed, reported = [], [], []
    for r in range(args.repeats):
        for mode in (("bare", "timed") if r % 2 == 0 else ("timed", "bare")):
            throughput, runner_says = one_repeat(mode, args, device)
            (bare if mode == "bare" else timed).append(throughput)
            if runner_says is not None:
                reported.append(runner_says)
        print(f"  repeat {r + 1}: bare {bare[-1]:,.0f} samples/s, timed {timed[-1]:,.0f} samples/s")
    bare_med, timed_med = statistics.median(bare), statistics.median(timed)
    overhead = 100.0 * (bare_med - timed_med) / bare_med
    spread = 100.0 * (max(bare) - min(bare)) / bare_med
    print(f"bare loop:          {bare_med:,.0f} samples/s (median of {len(bare)}; spread {spread:.1f}%)")
    print(f"runner's timed loop: {timed_med:,.0f} samples/s (median of {len(timed)})")
    if reported:
        print(f"runner's own figure: {statistics.median(reported):,.0f} samples/s (batch size / its median "
              "step time, warm-up excluded)")
    verdict = "yes" if abs(overhead) <= TARGET_PCT else "NO"
    print(f"instrumentation overhead: {overhead:+.2f}% (target: within {TARGET_PCT:.0f}%: {verdict})")
    if spread > TARGET_PCT:
        print(f"note: the bare loop alone varies by {spread:.1f}% between repeats; the machine is too noisy "
              "for a 3% verdict")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
