"""Small helpers shared by optimizer modules: validation and analytic state sizes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

STEP_BYTES = 4  # torch keeps `step` as a 0-d float32 tensor per parameter (non-capturable)


def check_lr(lr: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")


def check_betas(betas: Sequence[float], names: Sequence[str] = ("beta1", "beta2")) -> None:
    for name, beta in zip(names, betas, strict=True):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {beta}")


def check_nonnegative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def check_positive_int(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value}")


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adam_like_state_bytes(params: Iterable[torch.Tensor], moments: int) -> int:
    """``moments`` full-size tensors in the parameter dtype plus a float32 step per tensor."""
    return sum(moments * p.numel() * p.element_size() + STEP_BYTES for p in params)


class PerParameterStep:
    """Mixin for optimizers whose update is per tensor: ``step()`` calls ``self._step_param(p, group)``
    for every parameter with a (dense) gradient; parameters whose grad is None are skipped."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # type: ignore[attr-defined]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError(f"{type(self).__name__} does not support sparse gradients")
                self._step_param(p, group)  # type: ignore[attr-defined]
        return loss
