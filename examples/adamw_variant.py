"""A worked optbench plugin: AdamW written out by hand, registered as ``adamw-plain``.

A plugin is a Python file whose top level calls ``optbench.registry.register_optimizer``
with an ``OptimizerSpec``. Give it to any verb with ``--plugin``; for example, the
regression gate against torch's fused AdamW on the smoke preset (seconds):

    optbench check --candidate adamw-plain --plugin examples/adamw_variant.py \\
        --tasks digits-mlp --preset smoke --seeds 0,1,2 --lr-from-baseline

What the spec must give (see ``optbench/spec.py``):

- ``build(model, lr, **hparams)``: the optimizer, built over ``model``'s trainable parameters;
  it receives ``defaults`` overlaid with the user's ``--hparam key=value`` pairs.
- ``state_bytes(model, **hparams)``: the exact bytes of every tensor the optimizer keeps
  after its first step; optbench's conformance tests compare it with the measured state.
- ``defaults``: every hyperparameter the optimizer accepts (unknown keys are refused).
- ``default_lr``: used on tasks that name no learning rate for this optimizer;
  ``--lr-from-baseline`` runs it at the baseline's lr instead.

The math follows Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019),
in the same order as ``torch.optim.AdamW``, so on the same seeds it tracks fused AdamW to
float rounding. Edit a piece (say, ``adam_direction``) and rerun the check to see what
your change costs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec

# --- the update as small named pieces ------------------------------------------------------


def decay_weights_(param: torch.Tensor, lr: float, weight_decay: float) -> None:
    """Decoupled weight decay: shrink the weights before the Adam step."""
    param.mul_(1.0 - lr * weight_decay)


def update_moments_(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, grad: torch.Tensor,
                    beta1: float, beta2: float) -> None:
    """Exponential moving averages of the gradient and of its square."""
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)


def adam_direction(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int, beta1: float, beta2: float,
                   eps: float) -> torch.Tensor:
    """Bias-corrected first moment over the bias-corrected root second moment (+ eps)."""
    bias_correction1 = 1.0 - beta1**step
    bias_correction2 = 1.0 - beta2**step
    denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
    return (exp_avg / bias_correction1) / denom


# --- the optimizer ---------------------------------------------------------------------------


class PlainAdamW(torch.optim.Optimizer):
    """AdamW, one parameter at a time. State per parameter: ``exp_avg``, ``exp_avg_sq`` and a step count."""

    def __init__(self, params: Iterable[nn.Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0  # a Python int: not a tensor, so no state bytes
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                decay_weights_(param, group["lr"], group["weight_decay"])
                update_moments_(state["exp_avg"], state["exp_avg_sq"], param.grad, beta1, beta2)
                direction = adam_direction(state["exp_avg"], state["exp_avg_sq"], state["step"], beta1, beta2,
                                           group["eps"])
                param.add_(direction, alpha=-group["lr"])
        return loss


# --- the registration --------------------------------------------------------------------------


def build(model: nn.Module, lr: float, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) -> PlainAdamW:
    return PlainAdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=tuple(betas), eps=eps,
                      weight_decay=weight_decay)


def state_bytes(model: nn.Module, **_: object) -> int:
    # two full-size moments in the parameter dtype; the step count is a Python int
    return sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


register_optimizer(
    OptimizerSpec(
        name="adamw-plain",
        family="adam",
        paper="Loshchilov & Hutter, ICLR 2019 (arXiv 1711.05101)",
        build=build,
        state_bytes=state_bytes,
        defaults={"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01},
        default_lr=1e-3,
        description="example plugin: AdamW written out by hand (examples/adamw_variant.py)",
    )
)
