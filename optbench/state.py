"""Exact optimizer-state bytes: count the tensors an optimizer keeps, never the allocator."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

EXTRA_STATE_HOOK = "optbench_extra_state"  # optional method: tensors kept outside .state


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from iter_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from iter_tensors(value)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct tensors (a tensor reachable twice is counted once)."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Tensors in ``optimizer.state`` plus those an optimizer reports through its hook."""
    tensors = list(iter_tensors(list(optimizer.state.values())))
    extra = getattr(optimizer, EXTRA_STATE_HOOK, None)
    if callable(extra):
        tensors.extend(extra())
    return tensors


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Exact optimizer-state bytes: sum of numel x element size over every state tensor."""
    return tensor_bytes(state_tensors(optimizer))


def param_bytes(params: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)
