"""Exact optimizer-state bytes: count the tensors an optimizer keeps, never the allocator.

A tensor subclass that wraps others (torchao's ``OptimState4bit``/``8bit``/``Fp8``, DTensor) has a
logical ``numel() * element_size()`` that says nothing about what it holds: a 4-bit moment of a
1024x1024 weight reports 4,194,304 B while its ``codes``, ``scale`` and ``qmap`` hold 557,120 B.
Such a tensor is therefore opened with ``__tensor_flatten__`` (recursively) and its inner
tensors are counted instead, for every optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

EXTRA_STATE_HOOK = "optbench_extra_state"  # optional method: tensors kept outside .state


def leaf_tensors(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """The tensors that hold ``t``'s data: ``t`` itself, or a wrapper subclass's inner tensors
    (from ``__tensor_flatten__``, opened recursively)."""
    if is_traceable_wrapper_subclass(t):
        names, _ = t.__tensor_flatten__()
        for name in names:
            yield from leaf_tensors(getattr(t, name))
    else:
        yield t


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested dicts, lists and tuples; wrapper subclasses yield their inner tensors."""
    if isinstance(obj, torch.Tensor):
        yield from leaf_tensors(obj)
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
        tensors.extend(iter_tensors(list(extra())))
    return tensors


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Exact optimizer-state bytes: sum of numel x element size over every state tensor."""
    return tensor_bytes(state_tensors(optimizer))


def param_bytes(params: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)
