"""Fira (Chen et al., "Fira: Can We Achieve Full-rank Training of LLMs Under Low-rank Constraint?",
arXiv 2410.01623), through the ``fira`` package's ``FiraAdamW``.

GaLore's low-rank Adam state, plus the part of the gradient GaLore throws away: the residual
``G - P P^T G`` outside the rank-r subspace is added to the update, scaled per column (or row)
by the ratio of the low-rank Adam update's norm to the low-rank gradient's norm ("norm-based
scaling"), and its norm may grow by at most 1.01x per step ("norm-growth limiter"). The update
is full rank; the state is GaLore's: the projector and two (m x r) moments per projected
matrix, plus one scalar (the limiter's last residual norm).

Which tensors are projected is GaLore's and APOLLO's rule (``_lowrank.split_projected``): 2-D
hidden matrices by declared role; every other tensor is AdamW in the package's plain groups.
Weight decay follows ``optbench.param_groups``. The package applies it after the update
(``p -= lr*wd*p`` on the updated p), not before as torch's AdamW does.

Defaults: rank 32 is a quarter of the CPU tier's width, the ratio of the authors' LLaMA-60M
script (rank 128 at d_model 512), with its alpha (scale) 0.25 and projection gap 200.
The package's own default eps is 1e-6; 1e-8 here, as for every Adam in optbench.
"""

from __future__ import annotations

from optbench.optimizers._common import check_betas, check_lr, check_nonnegative, check_positive_int
from optbench.optimizers._lowrank import counted, param_groups, projected_state_elements, split_projected
from torch import nn

from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec, Requirements

PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")


def build_fira(model: nn.Module, lr: float, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, rank=32,
               update_proj_gap=200, alpha=0.25, proj_type="std"):
    check_lr(lr)
    check_betas(betas)
    check_nonnegative(eps=eps, weight_decay=weight_decay)
    check_positive_int(rank=rank, update_proj_gap=update_proj_gap)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if proj_type not in PROJ_TYPES:
        raise ValueError(f"proj_type must be one of {', '.join(PROJ_TYPES)}; got {proj_type!r}")
    from fira import FiraAdamW  # imports transformers: only when built

    projected, plain = split_projected(model)
    groups = param_groups(model, projected, plain, weight_decay, rank=int(rank), update_proj_gap=int(update_proj_gap),
                          alpha=float(alpha), proj_type=proj_type)
    return counted(FiraAdamW)(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                              no_deprecation_warning=True)


def fira_state_bytes(model: nn.Module, *, rank=32, proj_type="std", **_: object) -> int:
    # Plain tensors: exp_avg and exp_avg_sq; `step` is a Python int. Projected: GaLore's projector and
    # low-rank moments, plus `scaling_grad`, a 0-d tensor in the parameter dtype.
    projected, plain = split_projected(model)
    total = sum(2 * p.numel() * p.element_size() for p in plain)
    for p in projected:
        elements = projected_state_elements(p.shape, rank, proj_type, clip_rank=True) + 1
        total += p.element_size() * elements
    return total


register_optimizer(
    OptimizerSpec(
        name="fira",
        family="low-rank",
        paper="Chen et al., 2024 (arXiv 2410.01623)",
        build=build_fira,
        state_bytes=fira_state_bytes,
        default_lr=1e-3,
        lr_vs_adamw=1.0,
        # Projected matrices: read param and grad, write param (float32); the low-rank state is
        # negligible. The residual's projection and scaling read and write full-size temporaries
        # that an ideal kernel would fuse away, so they are not counted.
        bound_bytes_per_param=12.0,
        requires=Requirements(packages=("fira", "transformers")),
        needs_model_info=True,
        description="fira FiraAdamW: GaLore-style low-rank state on attention/MLP weights (by role), full-rank update",
    )
)
