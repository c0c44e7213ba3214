"""Shared pieces of the low-rank gradient-projection optimizers (GaLore, APOLLO).

Both project the 2-D hidden weight matrices: attention and MLP linears (the layers the papers
project), plus generic hidden linears and recurrent matrices (an LSTM's gate weights), chosen
by the role the task declares for each parameter (never by module name). Every other tensor
(embeddings, heads, classifiers, norms, biases, convs) is trained by plain AdamW in a second
parameter group; on a model with no such matrix (a CNN) the optimizer is that AdamW alone.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from optbench.model_info import get_model_info
from optbench.param_groups import split_decay
from optbench.state import iter_tensors

PROJECTED_ROLES = frozenset({"query", "key", "value", "qkv", "attn_out", "mlp_in", "mlp_out", "linear", "recurrent"})


def split_projected(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(projected, plain): 2-D weights whose declared role is a hidden matrix (PROJECTED_ROLES), and the rest."""
    info = get_model_info(model)
    projected: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (projected if p.ndim == 2 and info.role(name) in PROJECTED_ROLES else plain).append(p)
    return projected, plain


def param_groups(model: nn.Module, projected: list[nn.Parameter], plain: list[nn.Parameter], weight_decay: float,
                 **projection: object) -> list[dict]:
    """Plain groups (decayed and not, by optbench.param_groups' policy) and a projected group carrying the
    projection keys; empty groups are left out. Projected tensors are hidden matrices, which the policy decays."""
    decayed = {id(p) for _, p in split_decay(model)[0]}
    groups: list[dict] = []
    plain_decayed = [p for p in plain if id(p) in decayed]
    plain_kept = [p for p in plain if id(p) not in decayed]
    if plain_decayed:
        groups.append({"params": plain_decayed, "weight_decay": weight_decay})
    if plain_kept:
        groups.append({"params": plain_kept, "weight_decay": 0.0})
    if projected:
        groups.append({"params": projected, "weight_decay": weight_decay if all(id(p) in decayed for p in projected)
                       else 0.0, **projection})
    if not groups:
        raise ValueError("model has no trainable parameters")
    return groups


def projector_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The projection matrices the packages keep inside a Python object in ``state['projector']``.

    ``optbench.state`` only walks dicts, lists and tuples, so these would go uncounted without
    this hook.
    """
    tensors: list[torch.Tensor] = []
    for state in optimizer.state.values():
        projector = state.get("projector") if isinstance(state, dict) else None
        if projector is not None and projector.ortho_matrix is not None:
            tensors.extend(iter_tensors(projector.ortho_matrix))
    return tensors


def projected_state_elements(shape: Iterable[int], rank: int, proj_type: str, clip_rank: bool) -> int:
    """Elements of projection matrix + two low-rank moments for one (m, n) weight.

    ``clip_rank``: an SVD projector can hold at most min(m, n) directions (GaLore); a random
    projector keeps the requested rank even when it exceeds the weight's sides (APOLLO).
    """
    m, n = shape
    r = min(rank, m, n) if clip_rank else rank
    if proj_type == "std":  # project the longer side away: P on the shorter side
        return r * (min(m, n) + 2 * max(m, n))
    if proj_type == "reverse_std":
        return r * (max(m, n) + 2 * min(m, n))
    if proj_type == "right":  # P (r, n), moments (m, r)
        return r * (n + 2 * m)
    if proj_type == "left":  # P (m, r), moments (r, n)
        return r * (m + 2 * n)
    if proj_type == "full":  # P_left (m, r), P_right (r, n), moments (r, r)
        return r * (m + n) + 2 * r * r
    raise ValueError(f"proj_type must be one of std, reverse_std, right, left, full; got {proj_type!r}")


def compact_projectors(optimizer: torch.optim.Optimizer) -> None:
    """Give every SVD projection matrix its own storage.

    The packages' SVD projectors keep a slice ``Vh[:r]`` or ``U[:, :r]``, a view that pins the
    whole min(m, n)-square SVD factor: for rank r << min(m, n) that is many times the r·n or
    m·r elements the method (and the state-bytes formula) accounts for. Copying the slice out
    after each step releases the factor; the values, and so the training, are unchanged.
    """
    for state in optimizer.state.values():
        projector = state.get("projector") if isinstance(state, dict) else None
        matrix = getattr(projector, "ortho_matrix", None)
        if isinstance(matrix, torch.Tensor) and _pins_more(matrix):
            projector.ortho_matrix = matrix.clone(memory_format=torch.contiguous_format)
        elif isinstance(matrix, list):
            projector.ortho_matrix = [m.clone(memory_format=torch.contiguous_format) if _pins_more(m) else m
                                      for m in matrix]


def _pins_more(t: torch.Tensor) -> bool:
    return t.untyped_storage().nbytes() > t.numel() * t.element_size()


def counted(optimizer_cls: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """A subclass of a low-rank package optimizer that reports its projection matrices to
    optbench.state (they live outside ``.state``) and keeps them compact after every step."""

    def step(self, closure=None):
        loss = optimizer_cls.step(self, closure)
        compact_projectors(self)
        return loss

    name = f"{optimizer_cls.__name__}Counted"
    return type(name, (optimizer_cls,), {"optbench_extra_state": projector_tensors, "step": step,
                                         "__qualname__": name, "__module__": __name__})
