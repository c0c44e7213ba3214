"""8-bit AdamW (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022,
arXiv 2110.02861), as bitsandbytes ``AdamW8bit``.

Both moments are stored as uint8 codes of a dynamic quantization map, with one float32 absmax
per 256-element block; tensors smaller than ``min_8bit_size`` keep float32 moments.
CPU tensors need bitsandbytes >= 0.50, which also dropped the ``percentile_clipping`` and
``block_wise`` arguments, so only keyword arguments are passed. The CUDA path was never run here.
"""

from __future__ import annotations

import math

from optbench.optimizers._common import check_betas, check_lr, check_nonnegative, check_positive_int, trainable
from torch import nn

from optbench.param_groups import decay_groups
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec, Requirements

BLOCK = 256  # elements per absmax block (blockwise quantization)
QMAP_BYTES = 2 * 256 * 4  # signed and unsigned float32 maps of 256 codes, shared by all tensors


def _check_version() -> str | None:
    from importlib.metadata import version

    major, minor = (int(x) for x in version("bitsandbytes").split(".")[:2])
    return None if (major, minor) >= (0, 50) else f"bitsandbytes {major}.{minor} < 0.50 (no CPU support)"


def build_adam8bit(model: nn.Module, lr: float, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                   min_8bit_size=4096):
    check_lr(lr)
    check_betas(betas)
    check_nonnegative(eps=eps, weight_decay=weight_decay)
    check_positive_int(min_8bit_size=min_8bit_size)
    import bitsandbytes as bnb
    from bitsandbytes.optim import GlobalOptimManager

    # A process-wide singleton carries per-parameter overrides between optimizers: start clean,
    # without touching the manager an earlier optimizer still holds.
    GlobalOptimManager._instance = None
    return bnb.optim.AdamW8bit(decay_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps,
                               weight_decay=weight_decay,
                               min_8bit_size=int(min_8bit_size))


def adam8bit_state_bytes(model: nn.Module, *, min_8bit_size=4096, **_: object) -> int:
    # `step` is a Python int. The two quantization maps sit in every 8-bit tensor's state but are
    # the same two tensors, counted once.
    total, any_8bit = 0, False
    for p in trainable(model):
        n = p.numel()
        if n < min_8bit_size:
            total += 2 * 4 * n  # float32 state1, state2
        else:
            any_8bit = True
            total += 2 * n + 2 * 4 * math.ceil(n / BLOCK)  # uint8 codes + float32 absmax per block
    return total + (QMAP_BYTES if any_8bit else 0)


register_optimizer(
    OptimizerSpec(
        name="adam8bit",
        family="quantized",
        paper="Dettmers et al., ICLR 2022 (arXiv 2110.02861)",
        build=build_adam8bit,
        state_bytes=adam8bit_state_bytes,
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        requires=Requirements(packages=("bitsandbytes",), check=_check_version),
        # Read p and g, write p (12 bytes in float32), read and write the two uint8 moments (4);
        # the block absmax values are 1/256 of that. Tensors under min_8bit_size keep float32 moments (28).
        bound_bytes_per_param=16,
        board_note=(
            "Its step time is bitsandbytes' own: on CPU the package runs a reference path, far slower than "
            "its CUDA kernels; read the step against its bound (step ÷ bound) as the package's cost, not the"
            " method's."),
        description="bitsandbytes AdamW8bit, blockwise (256) dynamic quantization",
    )
)
