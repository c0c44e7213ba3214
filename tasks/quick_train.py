"""A bare training loop for checking a task's budget by hand, before (and apart from) the runner.

``python -m tasks.quick_train TASK [--preset cpu] [--optimizer adamw] [--lr LR] [--seed 0]``
trains one task with one registered optimizer for the preset's budget and prints the train
loss, the evaluations and the median step time. The numbers in the task docstrings come
from here. No memory measurement, no run record: that is the runner's job.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from optbench.registry import get_optimizer, get_task


def quick_train(task: str, preset: str = "cpu", optimizer: str = "adamw", lr: float | None = None, seed: int = 0,
                device: str = "cpu", verbose: bool = True, **options: object) -> dict:
    """Train ``task`` with ``optimizer`` for the preset's budget; return the curves and the step time."""
    spec, opt_spec = get_task(task), get_optimizer(optimizer)
    budget = spec.budget(preset)
    lr = lr if lr is not None else spec.default_lrs.get(optimizer, opt_spec.default_lr)
    inst = spec.instantiate(preset, seed, device, **options)
    opt = opt_spec.build(inst.model, lr, **opt_spec.resolve_hparams())
    dev = torch.device(device)
    train, evals, step_s = [], [], []
    for step in range(1, budget.steps + 1):
        batch = next(inst.batches)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=inst.autocast_dtype, enabled=inst.autocast_dtype is not None):
            loss = inst.loss_fn(inst.model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if budget.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(inst.model.parameters(), budget.grad_clip)
        opt.step()
        step_s.append(time.perf_counter() - t0)
        if step % budget.log_every == 0 or step == 1:
            train.append((step, loss.item()))
            if not math.isfinite(loss.item()):
                break
        if step % budget.eval_every == 0 or step == budget.steps:
            result = inst.evaluate(inst.model)
            evals.append((step, result.metric))
            if verbose:
                print(f"step {step:5d}  train loss {loss.item():.4f}  {spec.metric.name} {result.metric:.4f}")
    median = statistics.median(step_s[budget.warmup_steps:] or step_s)
    if verbose:
        print(f"{task} / {optimizer} lr {lr} ({preset}): median step {median * 1e3:.1f} ms, "
              f"training {sum(step_s):.1f} s; notes: {inst.notes}")
    return {"train": train, "eval": evals, "step_s_median": median, "train_s": sum(step_s), "notes": inst.notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--text-file", default=None)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    options = {k: v for k, v in (("text_file", args.text_file), ("data_dir", args.data_dir)) if v is not None}
    quick_train(args.task, args.preset, args.optimizer, args.lr, args.seed, args.device, **options)


if __name__ == "__main__":
    main()
