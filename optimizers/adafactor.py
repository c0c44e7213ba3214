"""Adafactor (Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
ICML 2018, arXiv 1804.04235), as torch.optim.Adafactor (torch >= 2.5).

No first moment; the second moment of every tensor with >= 2 dims is factored into row and
column variances over its last two dims; 1-D tensors keep a full variance.
"""

from __future__ import annotations

import math

import torch
from optbench.optimizers._common import STEP_BYTES, check_lr, check_nonnegative, trainable
from torch import nn

from optbench.param_groups import decay_groups
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec, Requirements


def check_adafactor(beta2_decay: float, eps: tuple, d: float, weight_decay: float) -> None:
    if not beta2_decay <= 0:
        raise ValueError(f"beta2_decay must be <= 0, got {beta2_decay}")
    if not (isinstance(eps, (tuple, list)) and len(eps) == 2):
        raise ValueError(f"eps must be a pair (eps1 or None, eps2), got {eps!r}")
    if eps[0] is not None and eps[0] < 0:
        raise ValueError(f"eps[0] must be None or >= 0, got {eps[0]}")
    if eps[1] < 0:
        raise ValueError(f"eps[1] must be >= 0, got {eps[1]}")
    if not d >= 1:
        raise ValueError(f"d (update clipping threshold) must be >= 1, got {d}")
    check_nonnegative(weight_decay=weight_decay)


def build_adafactor(model: nn.Module, lr: float, *, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0):
    check_lr(lr)
    check_adafactor(beta2_decay, eps, d, weight_decay)
    return torch.optim.Adafactor(decay_groups(model, weight_decay), lr=lr, beta2_decay=beta2_decay, eps=tuple(eps), d=d,
                                 weight_decay=weight_decay)


def factored_elements(shape: torch.Size) -> int:
    """Elements of Adafactor's second moment: row + column variances over the last two dims."""
    if len(shape) < 2:
        return math.prod(shape)
    *lead, m, n = shape
    return math.prod(lead) * (m + n)


def adafactor_state_bytes(model: nn.Module, **_: object) -> int:
    return sum(p.element_size() * factored_elements(p.shape) + STEP_BYTES for p in trainable(model))


def _has_adafactor() -> str | None:
    if hasattr(torch.optim, "Adafactor"):
        return None
    return f"torch {torch.__version__} has no torch.optim.Adafactor (needs >= 2.5)"


register_optimizer(
    OptimizerSpec(
        name="adafactor",
        family="factored",
        paper="Shazeer & Stern, ICML 2018 (arXiv 1804.04235)",
        build=build_adafactor,
        state_bytes=adafactor_state_bytes,
        default_lr=1e-2,
        lr_vs_adamw=None,  # relative steps scaled by each parameter's RMS: starts at its own default_lr
        requires=Requirements(check=_has_adafactor),
        # Read p and g, write p: 12 bytes in float32; the row and column factors of a matrix are
        # O(rows + cols) (a vector's full variance adds 8, a small share of a model).
        bound_bytes_per_param=12,
        board_note=(
            "Its step time is torch.optim.Adafactor's: a per-tensor loop with no foreach or fused kernel, so"
            " the step ÷ bound column shows the package's cost, not the method's."),
        description="torch.optim.Adafactor (factored second moment, no momentum)",
    )
)
