"""NAdam with decoupled weight decay (NAdamW), registered with optbench through an entry point.

Nesterov momentum in Adam: Dozat, "Incorporating Nesterov Momentum into Adam" (ICLR 2016
workshop); the decoupled weight decay of Loshchilov & Hutter (ICLR 2019). The optimizer is
``torch.optim.NAdam(decoupled_weight_decay=True)``; this package only declares it to optbench.

Installed (``pip install -e examples/entrypoint_plugin``), it appears in ``optbench list`` and
can be checked like any built-in:

    optbench check --candidate nadamw-example --tasks digits-mlp --preset smoke --lr-from-baseline
"""

from __future__ import annotations

import torch
from torch import nn

NAME = "nadamw-example"
SCALAR_STATE = ("step", "mu_product")  # 0-d float32 tensors torch keeps per parameter


def build(model: nn.Module, lr: float, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
          momentum_decay=4e-3) -> torch.optim.NAdam:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.NAdam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                             momentum_decay=momentum_decay, decoupled_weight_decay=True)


def state_bytes(model: nn.Module, **_: object) -> int:
    """Two full-size moments in the parameter dtype, plus two float32 scalars per parameter."""
    return sum(2 * p.numel() * p.element_size() + 4 * len(SCALAR_STATE)
               for p in model.parameters() if p.requires_grad)


def register() -> None:
    """The entry point: optbench calls it once, when its registry is first used."""
    from optbench.registry import register_optimizer
    from optbench.spec import OptimizerSpec

    register_optimizer(OptimizerSpec(
        name=NAME,
        family="adam",
        paper="Dozat, ICLR 2016 workshop; Loshchilov & Hutter, ICLR 2019",
        build=build,
        state_bytes=state_bytes,
        defaults={"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "momentum_decay": 4e-3},
        default_lr=1e-3,
        description="example entry-point plugin: torch.optim.NAdam with decoupled weight decay",
    ))
