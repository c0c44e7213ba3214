"""The learning-rate schedule every budget runs: linear warm-up, then decay to a floor.

The runner applies it to every optimizer the same way, by setting each param group's ``lr``
before ``step()`` to the group's initial lr times ``Schedule.factor(step, total)``. An
optimizer therefore sees the schedule only if its update reads ``group["lr"]``; every
registered one does (torch's Adafactor takes ``min(lr, 1/sqrt(t))`` as its relative step, so
the schedule reaches it as long as lr stays below that cap, which holds for the lrs swept).

Why this shape: warm-up then cosine decay is what the field's benchmarks and the papers we
compare run (AlgoPerf's baselines, nanoGPT, SlimAdam's and Adam-mini's experiments).
Decaying to a floor of 10% rather than to zero keeps the last steps learning at short
budgets, as nanoGPT's ``min_lr = lr/10`` does. Without decay the final metric sits at the
noise floor of the last steps, and rankings between optimizers move with the seed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

DECAYS = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class Schedule:
    """Warm-up over ``warmup_fraction`` of the steps, then ``decay`` from the peak lr to ``floor`` x peak."""

    warmup_fraction: float = 0.1
    decay: str = "cosine"
    floor: float = 0.1

    def __post_init__(self) -> None:
        if self.decay not in DECAYS:
            raise ValueError(f"unknown decay {self.decay!r}; known: {', '.join(DECAYS)}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"floor must be in [0, 1], got {self.floor}")

    def warmup_steps(self, total: int) -> int:
        return round(self.warmup_fraction * total)

    def factor(self, step: int, total: int) -> float:
        """The multiplier of the peak lr at ``step`` (1-based) of ``total``."""
        warmup = self.warmup_steps(total)
        if step <= warmup:
            return step / warmup
        if self.decay == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        if self.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.floor + (1.0 - self.floor) * shape

    def describe(self, total: int) -> dict:
        """What the run record stores under ``budget.schedule``."""
        return {**asdict(self), "warmup_steps": self.warmup_steps(total), "total_steps": total,
                "applied_to": "param_groups[*]['lr']"}


CONSTANT = Schedule(warmup_fraction=0.0, decay="constant", floor=1.0)


def apply_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Set every param group's lr to its initial lr times ``factor``.

    The initial lr is kept in ``group["initial_lr"]`` (the name torch's schedulers use). A
    group whose lr is a tensor (torchao's optimizers keep it so, to avoid recompiles) is
    updated in place.
    """
    for group in optimizer.param_groups:
        lr = group["lr"]
        if "initial_lr" not in group:
            group["initial_lr"] = float(lr)
        value = group["initial_lr"] * factor
        if isinstance(lr, torch.Tensor):
            lr.fill_(value)
        else:
            group["lr"] = value
