"""APOLLO-Mini (Zhu et al., MLSys 2025, arXiv 2412.05270): APOLLO with a rank-1 random
projection and one tensor-wise gradient scale, boosted by sqrt(scale) = sqrt(128) as the paper
recommends for rank 1. Same package, grouping and state formula as ``apollo``.
"""

from __future__ import annotations

from optbench.optimizers.apollo import apollo_state_bytes, build_apollo

from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec, Requirements, signature_defaults

register_optimizer(
    OptimizerSpec(
        name="apollo-mini",
        family="low-rank",
        paper="Zhu et al., MLSys 2025 (arXiv 2412.05270), APOLLO-Mini",
        build=build_apollo,
        state_bytes=apollo_state_bytes,
        defaults={**signature_defaults(build_apollo), "rank": 1, "scale_type": "tensor", "scale": 128.0},
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        requires=Requirements(packages=("apollo_torch",)),
        needs_model_info=True,
        # As APOLLO: read p and g, write p (12 bytes in float32); rank-1 moments are O(1 / rows) of that.
        bound_bytes_per_param=12,
        description="apollo-torch APOLLOAdamW, rank 1, tensor-wise scaling, scale 128",
    )
)
