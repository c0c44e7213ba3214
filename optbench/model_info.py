"""Model metadata that optimizers may need: width, heads and a role for every parameter.

Tasks declare roles explicitly (SlimAdam's static rules and Adam-mini's partition are
derived from them), so nothing downstream guesses a layer's job from its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from torch import nn


class Role(str, Enum):
    """What a parameter does in its model. A str enum: ``Role.QUERY == "query"``, and roles read
    from JSON or rules files, or written as plain strings by a task, compare and hash as members."""

    QUERY = "query"
    KEY = "key"
    VALUE = "value"
    QKV = "qkv"  # fused query/key/value projection (models that fuse them)
    ATTN_OUT = "attn_out"
    MLP_IN = "mlp_in"
    MLP_OUT = "mlp_out"
    EMBEDDING = "embedding"
    POS_EMBEDDING = "pos_embedding"
    HEAD = "head"
    NORM = "norm"
    BIAS = "bias"
    CONV_IN = "conv_in"  # the first layer of a vision model
    CONV = "conv"
    CLASSIFIER = "classifier"
    LINEAR = "linear"
    RECURRENT = "recurrent"
    OTHER = "other"

    __str__ = str.__str__  # "query", not "Role.QUERY", in messages, f-strings and file names
    __format__ = str.__format__


ROLES = tuple(Role)

_ATTR = "_optbench_info"


@dataclass(frozen=True)
class ModelInfo:
    """What an optimizer may know about a model beyond its parameters."""

    roles: dict[str, Role]  # plain strings are accepted and turned into Role members
    d_model: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    task: str | None = None  # the registered task this model belongs to (rules files are per task)
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        known = {r.value for r in Role}
        bad = {name: role for name, role in self.roles.items() if role not in known}
        if bad:
            raise ValueError(f"unknown parameter roles {bad}; accepted roles: {', '.join(sorted(known))}")
        object.__setattr__(self, "roles", {name: Role(role) for name, role in self.roles.items()})

    def role(self, name: str) -> Role:
        try:
            return self.roles[name]
        except KeyError:
            raise KeyError(f"no role declared for parameter {name!r}") from None

    def check_covers(self, model: nn.Module) -> None:
        """Every trainable parameter of ``model`` has a role, and no role names a missing one."""
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        missing = sorted(names - self.roles.keys())
        extra = sorted(self.roles.keys() - names)
        if missing or extra:
            raise ValueError(
                f"model metadata does not match the model: parameters without a role {missing}, "
                f"roles for unknown parameters {extra}"
            )


def attach_info(model: nn.Module, info: ModelInfo) -> nn.Module:
    """Attach ``info`` to ``model`` (checked against its parameters) and return the model."""
    info.check_covers(model)
    object.__setattr__(model, _ATTR, info)
    return model


def get_model_info(model: nn.Module, *, required: bool = True) -> ModelInfo | None:
    """The metadata attached by the task, or ``None``/an error when there is none."""
    info = getattr(model, _ATTR, None)
    if info is None and required:
        raise ValueError(
            f"{type(model).__name__} carries no optbench model metadata (roles, d_model, n_heads); "
            "attach it with optbench.model_info.attach_info(model, ModelInfo(...))"
        )
    return info


def roles_by_suffix(model: nn.Module, rules: list[tuple[str, str]],
                    default: str | None = None) -> dict[str, Role]:
    """Build a role map for a task's own model from (name suffix, role) pairs, first match wins.

    This is for task authors who know their module names; it is never used to guess roles
    of a foreign model. A parameter that matches no rule gets ``default`` or raises.
    """
    roles: dict[str, Role] = {}
    for name, _ in model.named_parameters():
        for suffix, role in rules:
            if name.endswith(suffix):
                roles[name] = Role(role)
                break
        else:
            if default is None:
                raise ValueError(f"no role rule matches parameter {name!r}")
            roles[name] = Role(default)
    return roles
