"""Train one task with one optimizer and print what happened: a task author's check of a budget.

``python -m optbench.tasks.quick_train TASK [--preset cpu] [--optimizer adamw] [--lr LR] [--seed 0]``
runs the runner's timed pass (``optbench.runner.train``, so the same training step, schedule,
clipping and lr resolution as a benchmark run) and prints the train loss, the evaluations and
the median step time. No memory pass and no run record: ``optbench run`` makes those.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from optbench.lrs import resolve_lr
from optbench.registry import get_optimizer, get_task
from optbench.runner import TrainResult, seed_everything, train


def quick_train(task: str, preset: str = "cpu", optimizer: str = "adamw", lr: float | None = None, seed: int = 0,
                device: str = "cpu", verbose: bool = True, **options: object) -> TrainResult:
    """Train ``task`` with ``optimizer`` for the preset's budget; print and return the timed pass's result."""
    spec, opt_spec = get_task(task), get_optimizer(optimizer)
    budget = spec.budget(preset)
    lr, source = resolve_lr(spec, opt_spec, preset, lr)
    seed_everything(seed)
    instance = spec.instantiate(preset, seed, device, **options)
    opt = opt_spec.build(instance.model, lr, **opt_spec.resolve_hparams())
    result = train(instance, opt, budget, torch.device(device))
    if verbose:
        train_loss = dict(result.train_curve)
        for step, metric in result.eval_curve:
            loss = f"  train loss {train_loss[step]:.4f}" if step in train_loss else ""
            print(f"step {step:5d}{loss}  {spec.metric.name} {metric:.4f}")
        if result.diverged_at_step is not None:
            print(f"diverged at step {result.diverged_at_step}")
        median = statistics.median(result.step_s) * 1e3 if result.step_s else float("nan")
        print(f"{task} / {optimizer} lr {lr:g} ({source}, {preset}): median step {median:.1f} ms, "
              f"training {result.wall_s:.1f} s; notes: {instance.notes}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--text-file", default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    options = {k: v for k, v in (("text_file", args.text_file), ("data_dir", args.data_dir)) if v is not None}
    try:  # bad names are usage errors, named before anything trains
        get_task(args.task).budget(args.preset)
        get_optimizer(args.optimizer)
    except ValueError as exc:
        parser.error(str(exc))
    quick_train(args.task, args.preset, args.optimizer, args.lr, args.seed, args.device, **options)


if __name__ == "__main__":
    main()
