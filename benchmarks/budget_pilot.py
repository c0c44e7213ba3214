"""Would another CPU budget let the board resolve more optimizers? A pilot, before any sweep is redone.

    python -m benchmarks.budget_pilot digits-cnn --steps 20 --batch 32
    python -m benchmarks.budget_pilot digits-mlp --steps 40 --batch 256 --optimizers adamw,adam,slimadam

For one candidate budget (steps, batch; the task's schedule, clipping and eval kept), in this
process only: each optimizer's lr is picked from its current tuned lr x {0.5, 1, 2, 4} by the
mean held-out loss of 2 tuning seeds (100, 101), a cheap stand-in for the sweep; then it trains
seeds 0..N-1 at that lr. Each optimizer is compared with AdamW as the board compares them
(``optbench.verdicts``: paired 95% t-interval, margin = the task's share of AdamW's mean loss),
and the pilot prints the share resolved and the spread of the paired differences relative to
AdamW's loss, the figure that decides how many seeds a task needs. Runs are not stored.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import statistics

from optbench import registry, runner
from optbench.verdicts import decide, paired_interval

DEFAULT_OPTIMIZERS = "adamw,adam,slimadam,adam-mini,adafactor,lion,sgd,ao-adamw4bit,smmf,adam8bit"
LR_FACTORS = (0.5, 1, 2, 4)
TUNING_SEEDS = (100, 101)


def patch_budget(task: str, steps: int, batch: int) -> None:
    """Swap the task's cpu budget in this process (the registry's spec and the task module's, which setup reads)."""
    spec = registry.get_task(task)
    budget = dataclasses.replace(spec.budgets["cpu"], steps=steps, batch_size=batch, eval_every=max(1, steps // 4),
                                 log_every=max(1, steps // 10))
    patched = dataclasses.replace(spec, budgets={**spec.budgets, "cpu": budget})
    registry._TASKS[task] = patched
    importlib.import_module("optbench.tasks." + task.replace("-", "_")).SPEC = patched


def held_out_loss(task: str, optimizer: str, lr: float, seed: int) -> float:
    record = runner.run_one(task, optimizer, hparams={"lr": lr}, seed=seed, preset="cpu", measure_memory_pass=False)
    value = record["metrics"].get("eval_loss") if record["status"] == "ok" else None
    return value if value is not None and math.isfinite(value) else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--optimizers", default=DEFAULT_OPTIMIZERS, help="adamw is the baseline and must be listed")
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    optimizers = args.optimizers.split(",")
    if "adamw" not in optimizers:
        parser.error(f"--optimizers must include adamw (the baseline), got {args.optimizers!r}")
    margin = registry.get_task(args.task).margin
    patch_budget(args.task, args.steps, args.batch)
    losses, factor = {}, {}
    for name in optimizers:
        tuned = runner.resolve_run(args.task, name, seed=0, preset="cpu").lr
        scores = {f: statistics.fmean(held_out_loss(args.task, name, f * tuned, s) for s in TUNING_SEEDS)
                  for f in LR_FACTORS}
        factor[name] = min(scores, key=scores.get)
        losses[name] = [held_out_loss(args.task, name, factor[name] * tuned, s) for s in range(args.seeds)]
    base = losses["adamw"]
    base_mean = statistics.fmean(base)
    rows, resolved, spreads = [], 0, []
    for name in [o for o in optimizers if o != "adamw"]:
        diffs = [c - b for c, b in zip(losses[name], base)]
        if any(math.isinf(d) for d in diffs):
            resolved += 1
            rows.append(f"| {name} | x{factor[name]:g} | diverged | | | worse |")
            continue
        mean, low, high = paired_interval(diffs)
        verdict = decide(low, high, margin * base_mean)
        resolved += verdict != "inconclusive"
        spread = statistics.stdev(diffs) / base_mean
        spreads.append(spread)
        rows.append(f"| {name} | x{factor[name]:g} | {statistics.fmean(losses[name]):.4f} | {mean / base_mean:+.2%} "
                    f"[{low / base_mean:+.2%}, {high / base_mean:+.2%}] | {spread:.2%} | {verdict} |")
    compared = len(optimizers) - 1
    print(f"{args.task}, {args.steps} steps x batch {args.batch}, seeds 0-{args.seeds - 1}: "
          f"AdamW (lr x{factor['adamw']:g}) "
          f"{base_mean:.4f} ± {statistics.stdev(base):.4f}; resolved {resolved}/{compared}; median paired-difference "
          f"sd {statistics.median(spreads):.2%} of AdamW's loss\n")
    print("| optimizer | lr vs tuned | held-out loss | diff vs AdamW [95% CI] | paired sd | verdict |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
