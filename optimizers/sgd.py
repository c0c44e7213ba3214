"""SGD with heavy-ball momentum 0.9 (torch.optim.SGD): one momentum buffer per tensor."""

from __future__ import annotations

import torch
from optbench.optimizers._common import check_lr, check_nonnegative, trainable
from torch import nn

from optbench.param_groups import decay_groups
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec


def build_sgd(model: nn.Module, lr: float, *, momentum=0.9, weight_decay=0.0, nesterov=False):
    check_lr(lr)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    check_nonnegative(weight_decay=weight_decay)
    return torch.optim.SGD(decay_groups(model, weight_decay), lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov, foreach=True)


def sgd_state_bytes(model: nn.Module, *, momentum=0.9, **_: object) -> int:
    # torch keeps no `step` for SGD; the momentum buffer exists only when momentum > 0.
    return sum(p.numel() * p.element_size() for p in trainable(model)) if momentum > 0 else 0


register_optimizer(
    OptimizerSpec(
        name="sgd",
        family="sgd",
        paper="Polyak 1964 (heavy ball); torch.optim.SGD",
        build=build_sgd,
        state_bytes=sgd_state_bytes,
        default_lr=0.05,
        lr_vs_adamw=None,  # no relation to AdamW's lr: each task declares SGD's
        # Read p, g and the momentum buffer, write p and the buffer: 20 bytes in float32.
        bound_bytes_per_param=20,
        description="SGD with momentum 0.9",
    )
)
