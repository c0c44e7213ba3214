"""GaLore (Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
ICML 2024, arXiv 2403.03507), through the ``galore-torch`` package's ``GaLoreAdamW``.

The 2-D weights of attention and MLP linears (by declared role) get Adam moments in a rank-r
subspace found by an SVD of the gradient every ``update_proj_gap`` steps; all other tensors are
plain AdamW in a second group. ``GaLoreAdamW8bit`` is deliberately not offered: it calls
``torch.cuda.synchronize()`` unconditionally and misbinds bitsandbytes >= 0.50 arguments.

Default rank 32 is a quarter of the CPU tier's width (d_model 128), the paper's ratio
(rank 128 at d_model 512 for LLaMA-60M); scale 0.25 and gap 200 are the paper's.
"""

from __future__ import annotations

from optbench.optimizers._common import check_betas, check_lr, check_nonnegative, check_positive_int
from optbench.optimizers._lowrank import counted, param_groups, projected_state_elements, split_projected
from torch import nn

from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec, Requirements

PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")


def check_projection(rank: int, update_proj_gap: int, scale: float, proj_type: str) -> None:
    check_positive_int(rank=rank, update_proj_gap=update_proj_gap)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if proj_type not in PROJ_TYPES:
        raise ValueError(f"proj_type must be one of {', '.join(PROJ_TYPES)}; got {proj_type!r}")


def build_galore(model: nn.Module, lr: float, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, rank=32,
                 update_proj_gap=200, scale=0.25, proj_type="std"):
    check_lr(lr)
    check_betas(betas)
    check_nonnegative(eps=eps, weight_decay=weight_decay)
    check_projection(rank, update_proj_gap, scale, proj_type)
    from galore_torch import GaLoreAdamW

    projected, plain = split_projected(model)
    groups = param_groups(model, projected, plain, weight_decay, rank=int(rank), update_proj_gap=int(update_proj_gap),
                          scale=float(scale),
                          proj_type=proj_type)
    return counted(GaLoreAdamW)(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                              no_deprecation_warning=True)


def galore_state_bytes(model: nn.Module, *, rank=32, proj_type="std", **_: object) -> int:
    # The package keeps `step` as a Python int: no tensor bytes for it.
    projected, plain = split_projected(model)
    total = sum(2 * p.numel() * p.element_size() for p in plain)
    for p in projected:
        total += p.element_size() * projected_state_elements(p.shape, rank, proj_type, clip_rank=True)
    return total


register_optimizer(
    OptimizerSpec(
        name="galore",
        family="low-rank",
        paper="Zhao et al., ICML 2024 (arXiv 2403.03507)",
        build=build_galore,
        state_bytes=galore_state_bytes,
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        requires=Requirements(packages=("galore_torch",)),
        needs_model_info=True,
        # On a projected matrix: read p and g, write p (12 bytes in float32); the rank-r moments are
        # O(r / rows) of that. Tensors left unprojected (embeddings, norms) move AdamW's 28.
        bound_bytes_per_param=12,
        description="galore-torch GaLoreAdamW on attention/MLP weights (by role), AdamW elsewhere",
    )
)
