"""APOLLO (Zhu et al., "APOLLO: SGD-like Memory, AdamW-level Performance", MLSys 2025,
arXiv 2412.05270), through the ``apollo-torch`` package's ``APOLLOAdamW``.

Adam moments live in a rank-r random projection of each attention/MLP weight's gradient
(chosen by declared role); from them APOLLO estimates a per-channel (or per-tensor) scaling
of the raw gradient, with Fira's norm-growth limiter. Other tensors are plain AdamW.
Default rank 32 matches GaLore's here (a quarter of the CPU tier's d_model 128) so the two
low-rank methods compare at equal rank; scale 1 and gap 200 are the package's.
"""

from __future__ import annotations

from optbench.optimizers._common import check_betas, check_lr, check_nonnegative, check_positive_int
from optbench.optimizers._lowrank import counted, param_groups, projected_state_elements, split_projected
from torch import nn

from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec, Requirements

PROJECTIONS = ("random", "svd")
SCALE_TYPES = ("channel", "tensor")


def build_apollo(model: nn.Module, lr: float, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, rank=32,
                 proj="random", scale_type="channel", scale=1.0, update_proj_gap=200):
    check_lr(lr)
    check_betas(betas)
    check_nonnegative(eps=eps, weight_decay=weight_decay)
    check_positive_int(rank=rank, update_proj_gap=update_proj_gap)
    if proj not in PROJECTIONS:
        raise ValueError(f"proj must be one of {', '.join(PROJECTIONS)}; got {proj!r}")
    if scale_type not in SCALE_TYPES:
        raise ValueError(f"scale_type must be one of {', '.join(SCALE_TYPES)}; got {scale_type!r}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    from apollo_torch import APOLLOAdamW

    projected, plain = split_projected(model)
    groups = param_groups(model, projected, plain, weight_decay, rank=int(rank), proj=proj, scale_type=scale_type,
                          scale=float(scale),
                          update_proj_gap=int(update_proj_gap), proj_type="std")
    return counted(APOLLOAdamW)(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def apollo_state_bytes(model: nn.Module, *, rank=32, proj="random", **_: object) -> int:
    # Projected weight: projection matrix + two low-rank moments + the limiter's 0-d gradient norm
    # (`scaled_grad`). `step` and the projector seed are Python ints: no tensor bytes.
    projected, plain = split_projected(model)
    total = sum(2 * p.numel() * p.element_size() for p in plain)
    for p in projected:
        elements = projected_state_elements(p.shape, rank, "std", clip_rank=proj == "svd")
        total += p.element_size() * (elements + 1)
    return total


SPEC = register_optimizer(
    OptimizerSpec(
        name="apollo",
        family="low-rank",
        paper="Zhu et al., MLSys 2025 (arXiv 2412.05270)",
        build=build_apollo,
        state_bytes=apollo_state_bytes,
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        requires=Requirements(packages=("apollo_torch",)),
        needs_model_info=True,
        # On a projected matrix: read p and g, write p (12 bytes in float32); the rank-r moments and
        # the projection are O(r / rows) of that. Tensors left unprojected move AdamW's 28.
        bound_bytes_per_param=12,
        description="apollo-torch APOLLOAdamW (channel-wise scaling) on attention/MLP weights, AdamW elsewhere",
    )
)
