"""optbench.state counts what a tensor holds: a wrapper subclass by its inner tensors, not its logical size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from optbench.registry import get_optimizer
from optbench.state import iter_tensors, optimizer_state_bytes, state_tensors, tensor_bytes

# A 1024x1024 moment in torchao's 4-bit format: codes (two per byte), one float32 scale per 128
# elements, a 16-entry float32 code map. Its logical size is that of a float32 tensor.
N = 1024 * 1024
LOGICAL = 4 * N  # 4,194,304
REAL_4BIT = N // 2 + 4 * (N // 128) + 4 * 16  # 557,120


def test_a_4bit_moment_counts_its_codes_scales_and_map():
    subclass = pytest.importorskip("torchao.optim.subclass_4bit")
    moment = subclass.OptimState4bit.zeros((1024, 1024), signed=True, block_size=128)
    assert moment.numel() * moment.element_size() == LOGICAL
    inner = list(iter_tensors({"exp_avg": moment}))
    assert sorted(t.numel() * t.element_size() for t in inner) == sorted([N // 2, 4 * (N // 128), 64])
    assert tensor_bytes(inner) == REAL_4BIT == 557_120


def test_plain_tensors_are_counted_by_numel_and_once():
    t = torch.zeros(3, 5, dtype=torch.float16)
    assert tensor_bytes(iter_tensors({"a": t, "b": [t, (t,)]})) == 30


def test_tensors_from_the_extra_state_hook_are_opened_too():
    subclass = pytest.importorskip("torchao.optim.subclass_8bit")
    p = nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([p], lr=0.1)
    held = subclass.OptimState8bit.zeros((64, 64), signed=True, block_size=256)
    opt.optbench_extra_state = lambda: [held]
    assert all(type(t) is torch.Tensor for t in state_tensors(opt))
    assert optimizer_state_bytes(opt) == 64 * 64 + 4 * (64 * 64 // 256) + 4 * 256


def test_torchao_4bit_adamw_state_on_a_1024_square_weight():
    spec = get_optimizer("ao-adamw4bit")
    reason = spec.unavailable_reason("cpu")
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    model = nn.Linear(1024, 1024, bias=False)
    opt = spec.build(model, 1e-3, **spec.resolve_hparams())
    model(torch.randn(2, 1024)).square().mean().backward()
    opt.step()
    moments = [opt.state[model.weight][k] for k in ("exp_avg", "exp_avg_sq")]
    assert all(m.numel() * m.element_size() == LOGICAL for m in moments)  # what a naive count would sum
    assert optimizer_state_bytes(opt) == 2 * REAL_4BIT + 4 == spec.state_bytes(model)  # + the float32 step
