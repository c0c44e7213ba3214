"""MicroAdam: 4-bit error quantization, windowed Adam at k = 100%, the full step against a dense reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from toy_model import toy, toy_loss, train

from optbench.registry import get_optimizer
from optbench.state import optimizer_state_bytes
from optbench.optimizers.microadam import (
    MicroAdam,
    build_microadam,
    dequantize4,
    index_dtype,
    microadam_param_state_bytes,
    microadam_state_bytes,
    pack_nibbles,
    quantize4,
    topk_layout,
    unpack_nibbles,
)


@pytest.mark.parametrize("numel", [1, 2, 7, 10])
def test_nibble_pack_round_trip(numel: int) -> None:
    codes = torch.randint(0, 16, (numel,), dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.numel() == math.ceil(numel / 2)
    assert torch.equal(unpack_nibbles(packed, numel), codes)


@pytest.mark.parametrize(("numel", "block"), [(37, 8), (64, 64), (5, 100)])
def test_quantize4_error_is_within_half_a_step(numel: int, block: int) -> None:
    x = torch.randn(numel)
    packed, lo, hi = quantize4(x, block)
    assert packed.numel() == math.ceil(numel / 2) and lo.numel() == math.ceil(numel / block) == hi.numel()
    assert lo.dtype == hi.dtype == torch.bfloat16
    back = dequantize4(packed, lo, hi, numel, block)
    for b in range(lo.numel()):
        sl = slice(b * block, min((b + 1) * block, numel))
        span = x[sl].max() - x[sl].min()
        # half a quantization step, plus the bf16 rounding of the block's min and max
        bound = span / 30 + 2 * 2**-8 * x[sl].abs().max()
        assert (back[sl] - x[sl]).abs().max() <= bound


def test_quantize4_constant_and_zero() -> None:
    for x in (torch.zeros(9), torch.full((9,), 0.5)):
        packed, lo, hi = quantize4(x, 4)
        assert torch.equal(dequantize4(packed, lo, hi, 9, 4), x)


def test_layout_and_index_dtype() -> None:
    assert topk_layout(100, 32, 0.1) == (4, 25, 3)
    assert topk_layout(5, 32768, 0.01) == (1, 5, 1)
    assert index_dtype(32768) == torch.int16 and index_dtype(32769) == torch.int32
    assert topk_layout(50_000, 40_000, 0.01) == (2, 25_000, 250)  # two int16 blocks
    p = torch.zeros(70_000)
    assert topk_layout(70_000, 70_000, 0.01) == (1, 70_000, 700)  # one block: int32 indices
    assert microadam_param_state_bytes(p, m=2, topk_block_size=70_000) == 2 * 700 * (4 + 2) + 35_000 + 4


def bf16_grads(shape: tuple[int, ...], steps: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=g).to(torch.bfloat16).float() for _ in range(steps)]


@pytest.mark.parametrize("quantize_error", [False, True])
def test_full_density_equals_windowed_adam(quantize_error: bool) -> None:
    window, steps, lr, (b1, b2), eps, wd = 4, 9, 1e-2, (0.9, 0.99), 1e-8, 0.1
    grads = bf16_grads((5, 7), steps)  # bf16-exact: the window stores bf16 values
    p = nn.Parameter(torch.randn(5, 7))
    ref = p.detach().clone()
    opt = MicroAdam([p], lr=lr, m=window, k_init=1.0, quant_block_size=8, betas=(b1, b2), eps=eps,
                    weight_decay=wd, quantize_error=quantize_error)
    for t in range(1, steps + 1):
        p.grad = grads[t - 1].clone()
        opt.step()
        recent = [(age, grads[t - 1 - age]) for age in range(min(t, window))]
        m = sum((1 - b1) * b1**age * g for age, g in recent)
        v = sum((1 - b2) * b2**age * g * g for age, g in recent)
        ref.mul_(1 - lr * wd).sub_(lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps))
        assert torch.allclose(p.detach(), ref, rtol=1e-5, atol=1e-7), f"step {t}"


def dense_microadam(grads: list[torch.Tensor], p0: torch.Tensor, window: int, block: int, k: int, lr: float,
                    betas, eps: float) -> torch.Tensor:
    """The paper's algorithm with an exact error, on a dense vector split into top-k blocks."""
    b1, b2 = betas
    n = p0.numel()
    blocks = math.ceil(n / block)
    p, error, history = p0.clone().reshape(-1), torch.zeros(n), []
    for t, g in enumerate(grads, start=1):
        a = g.reshape(-1) + error
        sparse = torch.zeros(n)
        for b in range(blocks):
            sl = slice(b * block, min((b + 1) * block, n))
            top = a[sl].abs().argsort(descending=True)[:k] + b * block
            sparse[top] = a[top]
        error = a - sparse
        history.append(sparse.to(torch.bfloat16).float())
        recent = [(age, history[t - 1 - age]) for age in range(min(t, window))]
        m = sum((1 - b1) * b1**age * s for age, s in recent)
        v = sum((1 - b2) * b2**age * s * s for age, s in recent)
        p = p - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
    return p.reshape(p0.shape)


def test_sparse_step_equals_dense_reference_with_exact_error() -> None:
    steps, window = 8, 3
    grads = [torch.randn(5, 10, generator=torch.Generator().manual_seed(s)) for s in range(steps)]
    p = nn.Parameter(torch.randn(5, 10))
    start = p.detach().clone()
    # 50 elements in top-k blocks of at most 16: 4 blocks of 13 (the last padded by 2), k = 3 each.
    opt = MicroAdam([p], lr=1e-2, m=window, k_init=0.2, topk_block_size=16, quantize_error=False)
    assert topk_layout(50, 16, 0.2) == (4, 13, 3)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    ref = dense_microadam(grads, start, window, 13, 3, 1e-2, (0.9, 0.999), 1e-8)
    assert torch.allclose(p.detach(), ref, rtol=1e-5, atol=1e-7)
    assert opt.state[p]["indices"].dtype == torch.int16 and opt.state[p]["values"].dtype == torch.bfloat16


def test_error_feedback_is_quantized_and_bounded() -> None:
    p = nn.Parameter(torch.zeros(40))
    opt = MicroAdam([p], lr=1e-3, m=2, k_init=0.1, quant_block_size=16)
    g = torch.randn(40)
    p.grad = g.clone()
    opt.step()
    state = opt.state[p]
    assert state["error_codes"].dtype == torch.uint8 and state["error_codes"].numel() == 20
    error = dequantize4(state["error_codes"], state["error_min"], state["error_max"], 40, 16)
    chosen = state["indices"][0].long().reshape(-1)
    expected = g.clone()
    expected[chosen] = 0
    assert (error - expected).abs().max() <= (g.max() - g.min()) / 30 + 0.02


def test_loss_decreases_and_state_dict_round_trip() -> None:
    model, twin = toy(), toy()
    opt = build_microadam(model, 1e-2, k_init=0.3)
    before = toy_loss(model, 0).item()
    for _ in range(15):  # one fixed batch, so the loss must fall
        opt.zero_grad()
        toy_loss(model, 0).backward()
        opt.step()
    assert toy_loss(model, 0).item() < 0.9 * before
    twin.load_state_dict(model.state_dict())
    fresh = build_microadam(twin, 1e-2, k_init=0.3)
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert fresh.state[twin.lin.weight]["indices"].dtype == torch.int16
    train(model, opt, 3, start=15)
    train(twin, fresh, 3, start=15)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


BAD_HPARAMS = [({"lr": -1.0}, "lr"), ({"m": 0}, "m"), ({"k_init": 0.0}, "k_init"), ({"k_init": 1.5}, "k_init"),
               ({"quant_block_size": 0}, "quant_block_size"), ({"betas": (0.9, 1.0)}, "beta2"),
               ({"eps": -1.0}, "eps"), ({"weight_decay": -1.0}, "weight_decay"), ({"impl": "cuda"}, "impl")]


@pytest.mark.parametrize(("kwargs", "name"), BAD_HPARAMS)
def test_invalid_hparams(kwargs: dict, name: str) -> None:
    args = {"lr": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=name):
        build_microadam(toy(), args.pop("lr"), **args)


def test_official_impl_refuses_without_cuda_or_package() -> None:
    with pytest.raises(ValueError, match="impl='official'"):
        build_microadam(toy(), 1e-3, impl="official")
    # its state bytes are an estimate from the published layout: 13 elements, k = 1, one quantization block
    assert microadam_state_bytes(nn.Linear(13, 1, bias=False), impl="official") == 4 * 10 * 1 + 7 + 4


@pytest.mark.parametrize("quantize_error", [True, False])
def test_registration_and_state_bytes(quantize_error: bool) -> None:
    spec = get_optimizer("microadam")
    assert spec.family == "sparse-error-feedback" and "NeurIPS 2024" in spec.paper
    model = toy()
    hp = spec.resolve_hparams({"quantize_error": quantize_error, "quant_block_size": 16})
    opt = spec.build(model, 1e-3, **hp)
    train(model, opt, 1)
    assert optimizer_state_bytes(opt) == spec.state_bytes(model, **hp)
