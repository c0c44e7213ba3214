"""Muon for hidden matrices, AdamW for every other tensor (``torch.optim.Muon``, torch >= 2.9).

Muon (Jordan et al., 2024, kellerjordan.github.io/posts/muon; Liu et al., "Muon is Scalable for
LLM Training", arXiv 2502.16982) keeps one momentum buffer per matrix and steps along the
orthogonalized momentum (five Newton-Schulz iterations in bfloat16). It is defined for the 2-D
weights of hidden layers; the Muon and Moonlight recipes train everything else with AdamW.

The split, by the role the task declares (``optbench.model_info``):
- Muon: 2-D weights of hidden layers: query, key, value, qkv, attn_out, mlp_in, mlp_out,
  linear, recurrent (the roles GaLore/APOLLO project, ``_lowrank.PROJECTED_ROLES``);
- AdamW: embeddings, position embeddings, LM heads, classifiers, norms, biases, and
  convolutions. Convs are a choice: ``torch.optim.Muon`` takes 2-D parameters only, whereas
  Keller Jordan's CIFAR-10 speedrun flattens conv filters to (out, in*k*k) for Muon.
A model without roles (or a parameter whose role is ``other``) falls back to shape: a 2-D
parameter goes to Muon unless it is an ``nn.Embedding``'s table. That fallback cannot tell an
LM head from a hidden linear, so a user model's head then goes to Muon.

One learning rate for both parts: with ``adjust_lr_fn="match_rms_adamw"`` (Moonlight's rule,
the default here) torch scales Muon's lr per matrix by ``0.2 * sqrt(max(A, B))``, which makes
the update's RMS about AdamW's (0.2 to 0.4 in the Moonlight paper), so Moonlight reuses AdamW's
lr and weight decay unchanged. Hence ``lr_vs_adamw = 1``: both parts start at the task's AdamW
lr, and the decoupled decay ``p *= 1 - lr*wd`` uses the unscaled lr in both parts.
Keller Jordan's ``"original"`` rule instead expects a Muon lr near 0.02: pass
``adjust_lr_fn="original"`` together with a suitable lr.

Weight decay follows ``optbench.param_groups``' policy in both parts (norms and biases none).
The combined optimizer is one ``torch.optim.Optimizer`` whose ``param_groups`` hold the Muon
groups and then the AdamW groups (each tagged ``algorithm``), so the runner's schedule, the
state dict and ``zero_grad`` see one optimizer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from optbench.optimizers._common import (
    STEP_BYTES,
    check_betas,
    check_lr,
    check_nonnegative,
    check_positive_int,
    closure_loss,
)
from optbench.optimizers._lowrank import PROJECTED_ROLES
from torch import nn

from optbench.model_info import get_model_info
from optbench.param_groups import split_decay
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec

MUON_ROLES = PROJECTED_ROLES  # hidden matrices
ADJUST_LR_FNS = ("match_rms_adamw", "original", "spectral_unclamped")
SHAPE_RULE_ROLES = frozenset({"other"})


def muon_names(model: nn.Module) -> set[str]:
    """Names of the trainable parameters Muon steps; AdamW takes the rest (see the module doc)."""
    info = get_model_info(model, required=False)
    roles = info.roles if info is not None else {}
    embeddings = {f"{m}.weight" if m else "weight" for m, mod in model.named_modules()
                  if isinstance(mod, (nn.Embedding, nn.EmbeddingBag))}
    names = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or p.ndim != 2:
            continue
        role = roles.get(name)
        if role is None or role in SHAPE_RULE_ROLES:
            if name not in embeddings:
                names.add(name)
        elif role in MUON_ROLES:
            names.add(name)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Muon groups first, then AdamW groups; decayed and not decayed apart (empty groups left out)."""
    muon = muon_names(model)
    decayed, kept = split_decay(model)
    groups = []
    for algorithm in ("muon", "adamw"):
        for named, wd in ((decayed, weight_decay), (kept, 0.0)):
            params = [p for n, p in named if (n in muon) == (algorithm == "muon")]
            if params:
                groups.append({"params": params, "weight_decay": wd, "algorithm": algorithm})
    if not groups:
        raise ValueError("model has no trainable parameters")
    return groups


class MuonWithAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` on the groups tagged ``algorithm="muon"``, fused ``torch.optim.AdamW`` on the rest.

    The two torch optimizers do the math; this class owns the groups and the state, and hands
    each part its groups and the shared state before every step, so that a ``load_state_dict``
    (which replaces both) reaches them.
    """

    def __init__(self, groups: list[dict], *, lr: float, momentum: float, nesterov: bool, ns_steps: int,
                 adjust_lr_fn: str, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
        muon_groups = [g for g in groups if g["algorithm"] == "muon"]
        adamw_groups = [g for g in groups if g["algorithm"] == "adamw"]
        self._parts: list[torch.optim.Optimizer] = []
        if muon_groups:
            self._parts.append(torch.optim.Muon(muon_groups, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                                nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn))
        if adamw_groups:
            self._parts.append(torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps,
                                                 weight_decay=weight_decay, fused=True))
        # The parts filled each group with their defaults; this optimizer adopts those groups as they are.
        super().__init__([g for part in self._parts for g in part.param_groups], defaults={})
        self.defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
                         "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn, "betas": betas, "eps": eps,
                         "adamw_fused": True}

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = closure_loss(closure)
        for part in self._parts:
            algorithm = "muon" if isinstance(part, torch.optim.Muon) else "adamw"
            part.param_groups = [g for g in self.param_groups if g["algorithm"] == algorithm]
            part.state = self.state
            part.step()
        return loss


def build_muon(model: nn.Module, lr: float, *, momentum=0.95, nesterov=True, ns_steps=5,
               adjust_lr_fn="match_rms_adamw", betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01) -> MuonWithAdamW:
    check_lr(lr)
    check_betas([momentum], ["momentum"])
    check_betas(betas)
    check_nonnegative(eps=eps, weight_decay=weight_decay)
    check_positive_int(ns_steps=ns_steps)
    if adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(f"adjust_lr_fn must be one of {', '.join(ADJUST_LR_FNS)}; got {adjust_lr_fn!r}")
    return MuonWithAdamW(param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=bool(nesterov),
                         ns_steps=int(ns_steps), adjust_lr_fn=adjust_lr_fn, betas=tuple(betas), eps=eps,
                         weight_decay=weight_decay)


def muon_state_bytes(model: nn.Module, **_: object) -> int:
    # Muon: one `momentum_buffer` in the parameter dtype, no step counter. AdamW: exp_avg and
    # exp_avg_sq in the parameter dtype plus a float32 `step`.
    muon = muon_names(model)
    total = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            isz, n = p.element_size(), p.numel()
            total += isz * n if name in muon else 2 * isz * n + STEP_BYTES
    return total


register_optimizer(
    OptimizerSpec(
        name="muon",
        family="orthogonalized",
        paper="Jordan et al. 2024 (kellerjordan.github.io/posts/muon); Liu et al. 2025 (arXiv 2502.16982)",
        build=build_muon,
        state_bytes=muon_state_bytes,
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # match_rms_adamw: one lr (AdamW's) serves both parts, as in Moonlight
        # Muon matrices: read param, grad and momentum, write param and momentum (float32); the
        # Newton-Schulz matmuls are compute-bound and not counted.
        bound_bytes_per_param=20.0,
        description="torch.optim.Muon on hidden matrices (by role), fused AdamW elsewhere; Moonlight lr matching",
    )
)
