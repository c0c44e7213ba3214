"""One weight-decay policy for every optimizer, declared once by parameter role.

Matrices and embeddings decay; norms (gains) and biases do not. This is the split of nanoGPT
(``configure_optimizers``: decay every tensor with 2+ dims), of Adam-mini's package and of
SlimAdam's reference code, stated here by role instead of by name or shape. A parameter of a
model without optbench metadata (a user's model in ``optbench project``, a test's toy model)
falls back to the shape rule: 2+ dims decay, vectors and scalars do not.

Every optimizer's ``build`` gets its param groups from :func:`decay_groups` (or
:func:`split_decay` when a package needs the names), so the policy reaches wrapped packages
through the same param groups a user would give them. The conformance suite checks it for
every registered optimizer: with zero gradients and weight decay on, a step changes exactly
the tensors this policy decays.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from optbench.model_info import get_model_info

POLICY = "decay matrices and embeddings; not norms or biases (by role; shape rule without roles)"
NO_DECAY_ROLES = frozenset({"norm", "bias"})
SHAPE_RULE_ROLES = frozenset({"other"})  # roles that say nothing about decay: decided by shape


def decays(name: str, param: nn.Parameter, roles: dict[str, str] | None) -> bool:
    """Whether the policy applies weight decay to this parameter."""
    role = (roles or {}).get(name)
    if role is None or role in SHAPE_RULE_ROLES:
        return param.ndim >= 2
    return role not in NO_DECAY_ROLES


def split_decay(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(decayed, not decayed) trainable named parameters, in model order."""
    info = get_model_info(model, required=False)
    roles = info.roles if info is not None else None
    decayed, kept = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decayed if decays(name, param, roles) else kept).append((name, param))
    return decayed, kept


def decay_groups(model: nn.Module, weight_decay: float, **group_options: Any) -> list[dict[str, Any]]:
    """Param groups under the policy: decayed tensors at ``weight_decay``, the rest at 0; empty groups left out."""
    decayed, kept = split_decay(model)
    groups = [
        {"params": [p for _, p in decayed], "weight_decay": weight_decay, **group_options},
        {"params": [p for _, p in kept], "weight_decay": 0.0, **group_options},
    ]
    return [g for g in groups if g["params"]]


def decayed_names(model: nn.Module) -> set[str]:
    return {name for name, _ in split_decay(model)[0]}


def flat_params(groups: Iterable[dict[str, Any]]) -> list[nn.Parameter]:
    return [p for g in groups for p in g["params"]]
