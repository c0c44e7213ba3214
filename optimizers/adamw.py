"""AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019).

The baseline of every ratio optbench reports, so it is the fastest AdamW torch offers:
``fused=True`` on CPU and CUDA (torch >= 2.4). The implementation that ran is recorded
in the run record through ``optimizer.defaults``.
"""

from __future__ import annotations

import torch
from optbench.optimizers._common import adam_like_state_bytes, check_betas, check_lr, check_nonnegative, trainable
from torch import nn

from optbench.param_groups import decay_groups
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec


def build_adamw(model: nn.Module, lr: float, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, impl="fused"):
    check_lr(lr)
    check_betas(betas)
    check_nonnegative(eps=eps, weight_decay=weight_decay)
    return torch.optim.AdamW(decay_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps,
                             weight_decay=weight_decay,
                             **impl_kwargs(impl))


def impl_kwargs(impl: str) -> dict:
    """torch.optim's implementation switches for one of 'fused', 'foreach', 'forloop'."""
    choices = {"fused": {"fused": True}, "foreach": {"foreach": True}, "forloop": {"foreach": False}}
    if impl not in choices:
        raise ValueError(f"impl must be one of {', '.join(choices)}, got {impl!r}")
    return choices[impl]


def adamw_state_bytes(model: nn.Module, **_: object) -> int:
    # exp_avg and exp_avg_sq in the parameter dtype, plus a float32 `step` per tensor.
    return adam_like_state_bytes(trainable(model), moments=2)


register_optimizer(
    OptimizerSpec(
        name="adamw",
        family="adam",
        paper="Loshchilov & Hutter, ICLR 2019 (arXiv 1711.05101)",
        build=build_adamw,
        state_bytes=adamw_state_bytes,
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        # Read the parameter, gradient, exp_avg and exp_avg_sq, write the parameter and both
        # moments: 7 float32 tensors, 28 bytes per element.
        bound_bytes_per_param=28,
        description="torch.optim.AdamW, fused kernel: the baseline",
    )
)
