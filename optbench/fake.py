"""Fake tensors for the projection: shapes, dtypes and devices without memory.

``fake_world`` is the context every projected model and batch is made in; ``skip_init`` keeps
initialisers from reading values fake tensors do not have; ``fake_copy`` and ``to_fake`` turn a
real model or batch (a registered task's, built on the CPU) into fake ones.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def fake_world(dtype: torch.dtype) -> Iterator[None]:
    """Fake tensors (real ones met inside are converted), a fixed seed, ``dtype`` as the default dtype."""
    with FakeTensorMode(allow_non_fake_inputs=True), _default_dtype(dtype):
        torch.manual_seed(0)
        yield


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s in-place initialisers no-ops while a model is built.

    Values do not matter for memory, and some initialisers read values back
    (``trunc_normal_`` calls ``.any()``), which fake tensors cannot answer.
    """
    saved = {name: fn for name, fn in vars(nn.init).items() if name.endswith("_") and not name.startswith("_")
             and callable(fn)}
    try:
        for name in saved:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def _fake_mode() -> FakeTensorMode:
    from torch._guards import active_fake_mode

    mode = active_fake_mode()
    if mode is None:
        raise RuntimeError("expected to run inside the projection's FakeTensorMode (optbench.fake.fake_world)")
    return mode


def to_fake(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested in tuples, lists, dicts) made fake."""
    if isinstance(obj, torch.Tensor):
        return _fake_mode().from_tensor(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_fake(o) for o in obj)
    if isinstance(obj, dict):
        return {k: to_fake(v) for k, v in obj.items()}
    return obj


def fake_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are fake tensors (no data is copied)."""
    mode = _fake_mode()
    memo: dict[int, Any] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        fake = mode.from_tensor(t)
        memo[id(t)] = nn.Parameter(fake, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else fake
    return copy.deepcopy(model, memo)
