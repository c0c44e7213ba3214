"""Adam (Kingma & Ba, ICLR 2015): torch.optim.Adam with L2-coupled weight decay (default 0)."""

from __future__ import annotations

import torch
from optbench.optimizers._common import check_betas, check_lr, check_nonnegative
from optbench.optimizers.adamw import adamw_state_bytes, impl_kwargs
from torch import nn

from optbench.param_groups import decay_groups
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec


def build_adam(model: nn.Module, lr: float, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, impl="fused"):
    check_lr(lr)
    check_betas(betas)
    check_nonnegative(eps=eps, weight_decay=weight_decay)
    return torch.optim.Adam(decay_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps,
                            weight_decay=weight_decay,
                            **impl_kwargs(impl))


register_optimizer(
    OptimizerSpec(
        name="adam",
        family="adam",
        paper="Kingma & Ba, ICLR 2015 (arXiv 1412.6980)",
        build=build_adam,
        state_bytes=adamw_state_bytes,  # same two moments and step as AdamW
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        # As AdamW: read p, g, exp_avg, exp_avg_sq, write p and both moments (28 bytes in float32).
        bound_bytes_per_param=28,
        description="torch.optim.Adam, fused kernel",
    )
)
