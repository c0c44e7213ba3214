"""How often does ``optbench check``'s default rule pass or fail known variants at a given budget?

Trains digits-mlp (default: the smoke preset) with seeds 0..N-1 for AdamW and for a few known
variants, then applies the gate's decision rule (``optbench.stats.compare_quality``, defaults)
to every 3-seed subset and prints the fail rate, the range of shortfalls, of δ and of p:

    python examples/check_calibration.py --preset smoke --seeds 10

Variants: an equivalent implementation (torch's for-loop AdamW), a hand-written AdamW
(examples/adamw_variant.py), a flipped update sign, lr x1000 (far too large) and lr /3 (a real
but modest regression), and SGD. The baseline runs at the task's default lr, which is small for
the 30-step smoke budget: there lr x100 trains faster than the baseline, so it is no regression.
Runs are single-threaded so that repeated runs are identical.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from tabulate import tabulate

from optbench import registry
from optbench.check import baseline_lr
from optbench.runner import run_one
from optbench.spec import OptimizerSpec
from optbench.stats import compare_quality

TASK = "digits-mlp"


class FlippedAdamW(torch.optim.AdamW):
    """AdamW that climbs the loss: the gradient's sign, hence the update's, is flipped."""

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.neg_()
        return super().step(closure)


def register_flipped() -> None:
    registry.register_optimizer(OptimizerSpec(
        name="calibration-flipped", family="adam", paper="-",  # no state formula: a plugin needs none
        build=lambda model, lr, **_: FlippedAdamW(model.parameters(), lr=lr, foreach=False)))


def final_metrics(optimizer: str, hparams: dict, seeds: int, preset: str) -> list[float | None]:
    out = []
    for seed in range(seeds):
        record = run_one(TASK, optimizer, hparams=hparams, seed=seed, preset=preset, measure_memory_pass=False)
        out.append(record["metrics"]["final_metric"] if record["status"] == "ok" else None)
    return out


def span(results: list, key: str) -> str:
    values = [getattr(r, key) for r in results]
    return f"{min(values):.3g} .. {max(values):.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1; every 3-seed subset is judged")
    args = parser.parse_args()
    torch.set_num_threads(1)
    registry.load_plugin(Path(__file__).with_name("adamw_variant.py"))
    register_flipped()
    lr = baseline_lr(TASK, "adamw", args.preset)
    variants = {
        "adamw (impl=forloop)": ("adamw", {"impl": "forloop"}),
        "adamw-plain (hand-written)": ("adamw-plain", {"lr": lr}),
        "flipped update sign": ("calibration-flipped", {"lr": lr}),
        "lr x1000": ("adamw", {"lr": 1000 * lr}),
        "lr /3": ("adamw", {"lr": lr / 3}),
        "sgd (its own lr)": ("sgd", {}),
    }
    base = final_metrics("adamw", {}, args.seeds, args.preset)
    higher = registry.get_task(TASK).metric.higher_is_better
    rows = []
    for label, (name, hparams) in variants.items():
        cand = final_metrics(name, hparams, args.seeds, args.preset)
        results = [compare_quality([cand[i] for i in s], [base[i] for i in s], higher)
                   for s in itertools.combinations(range(args.seeds), 3) if all(cand[i] is not None for i in s)]
        if not results:
            rows.append([label, "diverged", "", "", ""])
            continue
        fails = sum(not r.passed for r in results)
        spans = [span(results, key) for key in ("shortfall", "tolerance", "p_value")]
        rows.append([label, f"{fails}/{len(results)}", *spans])
    print(f"{TASK}, preset {args.preset}, baseline adamw at lr {lr:g}, "
          f"every 3-seed subset of seeds 0..{args.seeds - 1}")
    print(tabulate(rows, headers=["candidate", "FAIL", "shortfall", "δ", "p"], disable_numparse=True))


if __name__ == "__main__":
    main()
