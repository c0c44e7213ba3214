"""SMMF: pure pieces (matricization, rank-1 NNMF, 1-bit signs) and the whole step against a dense reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from toy_model import toy, toy_loss, train

from optbench.registry import get_optimizer
from optbench.state import optimizer_state_bytes
from optbench.optimizers.smmf import SMMF, build_smmf, pack_signs, rank1_nnmf, square_matricize, unpack_signs


@pytest.mark.parametrize(("numel", "shape"), [(1, (1, 1)), (36, (6, 6)), (12, (4, 3)), (13, (13, 1)),
                                              (210, (15, 14)), (54, (9, 6))])
def test_square_matricize(numel: int, shape: tuple[int, int]) -> None:
    assert square_matricize(numel) == shape


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 17, 64, 101])
def test_sign_pack_round_trip(numel: int) -> None:
    bits = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) > 0.5
    packed = pack_signs(bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel / 8)
    assert torch.equal(unpack_signs(packed, numel), bits)


def test_rank1_nnmf_closed_form() -> None:
    a = torch.rand(5, 3)
    r, c = rank1_nnmf(a)
    assert torch.allclose(torch.outer(r, c), torch.outer(a.sum(1), a.sum(0)) / a.sum())
    assert c.shape == (3,) and torch.allclose(c.sum(), torch.tensor(1.0))  # the shorter one is normalized
    r, c = rank1_nnmf(-a, absolute=True)
    assert torch.allclose(torch.outer(r, c), torch.outer(a.sum(1), a.sum(0)) / a.sum())
    r, c = rank1_nnmf(torch.zeros(4, 4))
    assert torch.equal(r, torch.zeros(4)) and torch.equal(c, torch.zeros(4))


def dense_smmf(model: nn.Module, steps: int, lr: float, beta: float, eps: float, weight_decay: float, decay_rate: float,
               growth_rate: float, mode: str = "adamw", vector_reshape: bool = True) -> None:
    """The paper's algorithm on dense matrices with a bool sign, one tensor at a time."""
    wd = weight_decay
    state: dict[str, dict] = {}
    for step in range(steps):
        model.zero_grad()
        toy_loss(model, step).backward()
        t = step + 1
        with torch.no_grad():
            for name, p in model.named_parameters():
                n, m = (p.numel(), 1) if p.ndim == 1 and not vector_reshape else square_matricize(p.numel())
                s = state.setdefault(name, {"rm": torch.zeros(n), "cm": torch.zeros(m), "rv": torch.zeros(n),
                                            "cv": torch.zeros(m), "sign": torch.zeros(n, m, dtype=torch.bool)})
                g = p.grad.reshape(n, m).clone()
                if mode == "adam":
                    g += wd * p.reshape(n, m)
                m_hat = torch.where(s["sign"], 1.0, -1.0) * torch.outer(s["rm"], s["cm"])
                v_hat = torch.outer(s["rv"], s["cv"])
                b1 = beta * growth_rate ** (t - 1)
                b2 = 1 - t**decay_rate
                mom = b1 * m_hat + (1 - b1) * g
                var = b2 * v_hat + (1 - b2) * g * g
                s["sign"] = mom > 0
                for key, mat in (("m", mom.abs()), ("v", var)):
                    rows, cols, total = mat.sum(1), mat.sum(0), mat.sum()
                    s["r" + key], s["c" + key] = (rows / total, cols) if n <= m else (rows, cols / total)
                if mode == "adamw":
                    p.mul_(1 - lr * wd)
                p.sub_(lr * (mom / (var.sqrt() + eps)).reshape(p.shape))


@pytest.mark.parametrize(("mode", "vector_reshape"), [("adamw", True), ("adam", False)])
def test_equals_dense_reference(mode: str, vector_reshape: bool) -> None:
    model, ref = toy(), toy()
    kw = dict(beta=0.9, eps=1e-8, weight_decay=0.05, decay_rate=-0.8, growth_rate=0.99)
    opt = build_smmf(model, 1e-2, weight_decay_mode=mode, vector_reshape=vector_reshape, **kw)
    train(model, opt, 6)
    dense_smmf(ref, 6, 1e-2, mode=mode, vector_reshape=vector_reshape, **kw)
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        err = ((p - q).norm() / q.norm()).item()
        assert err < 1e-5, f"{name}: relative error {err:.2e}"
    state = opt.state[model.conv.weight]  # 54 elements -> (9, 6)
    assert state["row_m"].shape == (9,) and state["col_v"].shape == (6,) and state["sign"].numel() == 7


def test_state_dict_round_trip_continues_identically() -> None:
    model, twin = toy(), toy()
    opt = build_smmf(model, 1e-2)
    train(model, opt, 3)
    twin.load_state_dict(model.state_dict())
    fresh = build_smmf(twin, 1e-2, weight_decay=0.3)  # the loaded groups bring back weight_decay=0
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert fresh.state[twin.lin.weight]["sign"].dtype == torch.uint8
    train(model, opt, 3, start=3)
    train(twin, fresh, 3, start=3)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_bf16_params_keep_float32_factors_after_load() -> None:
    model = toy().to(torch.bfloat16)
    opt = SMMF(model.parameters(), lr=1e-2)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    fresh = SMMF(model.parameters(), lr=1e-2)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.state[model.lin.weight]["row_v"].dtype == torch.float32


BAD_HPARAMS = [({"lr": -1.0}, "lr"), ({"beta": 1.0}, "beta"), ({"eps": -1}, "eps"),
               ({"weight_decay": -1}, "weight_decay"),
               ({"decay_rate": 0.5}, "decay_rate"), ({"growth_rate": 0.0}, "growth_rate"),
               ({"weight_decay_mode": "l2"}, "weight_decay_mode")]


@pytest.mark.parametrize(("kwargs", "name"), BAD_HPARAMS)
def test_invalid_hparams(kwargs: dict, name: str) -> None:
    args = {"lr": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=name):
        build_smmf(toy(), args.pop("lr"), **args)


def test_registration_and_state_bytes() -> None:
    spec = get_optimizer("smmf")
    assert spec.family == "factorized" and "2412.08894" in spec.paper
    model = toy()
    hp = spec.resolve_hparams()
    opt = spec.build(model, 1e-3, **hp)
    train(model, opt, 1)
    measured = optimizer_state_bytes(opt)
    assert measured == spec.state_bytes(model, **hp)
    # conv 54 -> (9,6); lin 72 -> (9,8); conv bias 3 -> (3,1); lin bias 6 -> (3,2); prime 13 -> (13,1); ...
    expected = sum(8 * sum(square_matricize(p.numel())) + math.ceil(p.numel() / 8) for p in model.parameters())
    assert measured == expected
