"""Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023,
arXiv 2302.06675), through the ``lion-pytorch`` package with ``use_triton=False``
(``use_triton=True`` without triton exits the process).

One momentum tensor; the update is the sign of an interpolation of momentum and gradient.
The paper advises a learning rate 3-10x below AdamW's and a weight decay 3-10x above it, so
the defaults are lr 1e-4 and weight decay 0.1 against the adamw baseline's 1e-3 and 0.01.
"""

from __future__ import annotations

from optbench.optimizers._common import check_betas, check_lr, check_nonnegative, trainable
from torch import nn

from optbench.param_groups import decay_groups
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec, Requirements


def build_lion(model: nn.Module, lr: float, *, betas=(0.9, 0.99), weight_decay=0.1):
    check_lr(lr)
    check_betas(betas)
    check_nonnegative(weight_decay=weight_decay)
    from lion_pytorch import Lion

    return Lion(decay_groups(model, weight_decay), lr=lr, betas=tuple(betas), weight_decay=weight_decay,
                use_triton=False)


def lion_state_bytes(model: nn.Module, **_: object) -> int:
    # `exp_avg` only, in the parameter dtype; the package keeps no step counter.
    return sum(p.numel() * p.element_size() for p in trainable(model))


register_optimizer(
    OptimizerSpec(
        name="lion",
        family="sign",
        paper="Chen et al., NeurIPS 2023 (arXiv 2302.06675)",
        build=build_lion,
        state_bytes=lion_state_bytes,
        default_lr=1e-4,
        lr_vs_adamw=1 / 3,  # sign update, larger norm than Adam's: its paper uses a 3-10x smaller lr than AdamW
        requires=Requirements(packages=("lion_pytorch",)),
        # Read p, g and the momentum, write p and the momentum: 20 bytes in float32.
        bound_bytes_per_param=20,
        description="lion-pytorch Lion, pure-PyTorch update (no triton)",
    )
)
