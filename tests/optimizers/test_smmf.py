"""SMMF: pure pieces (matricization, rank-1 NNMF, 1-bit signs) and the whole step against a dense reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from optbench.optimizers import smmf
from optbench.optimizers.smmf import (
    SMMF,
    build_smmf,
    factorizes,
    pack_signs,
    rank1_nnmf,
    smmf_param_state_bytes,
    square_matricize,
    unpack_signs,
)
from torch import nn
from toy_model import compiled_graphs, step_alike, toy, toy_loss, train

from optbench.param_groups import decayed_names
from optbench.registry import get_optimizer
from optbench.state import optimizer_state_bytes


@pytest.mark.parametrize(("numel", "shape"), [(1, (1, 1)), (36, (6, 6)), (12, (4, 3)), (13, (13, 1)),
                                              (210, (15, 14)), (54, (9, 6))])
def test_square_matricize(numel: int, shape: tuple[int, int]) -> None:
    assert square_matricize(numel) == shape


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (32, 5), (33, 2), (64, 4), (101, 1)])
def test_sign_pack_round_trip(shape: tuple[int, int]) -> None:
    rows, cols = shape
    bits = torch.rand(shape, generator=torch.Generator().manual_seed(rows)) > 0.5
    packed = pack_signs(bits)
    assert packed.dtype == torch.int32 and packed.shape == (math.ceil(rows / 32), cols)
    assert torch.equal(unpack_signs(packed, rows), bits)
    # bit i of word (r, c) is element (32r+i, c): every block of 32 rows packs into a row of words of its own
    word = sum(int(bits[i, 0]) << i for i in range(min(32, rows)))
    assert int(packed[0, 0]) % 2**32 == word
    if rows >= 64:
        assert torch.equal(packed[1:2], pack_signs(bits[32:64]))


def test_rank1_nnmf_closed_form() -> None:
    a = torch.rand(5, 3)
    r, c = rank1_nnmf(a)
    assert torch.allclose(torch.outer(r, c), torch.outer(a.sum(1), a.sum(0)) / a.sum())
    assert c.shape == (3,) and torch.allclose(c.sum(), torch.tensor(1.0))  # the shorter one is normalized
    r, c = rank1_nnmf(a.T)
    assert r.shape == (3,) and torch.allclose(r.sum(), torch.tensor(1.0))
    r, c = rank1_nnmf(-a, absolute=True)
    assert torch.allclose(torch.outer(r, c), torch.outer(a.sum(1), a.sum(0)) / a.sum())
    r, c = rank1_nnmf(torch.zeros(4, 4))
    assert torch.equal(r, torch.zeros(4)) and torch.equal(c, torch.zeros(4))


def dense_smmf(model: nn.Module, steps: int, lr: float, beta: float, eps: float, weight_decay: float, decay_rate: float,
               growth_rate: float, mode: str = "adamw", vector_reshape: bool = True,
               loss_fn=toy_loss) -> None:
    """The paper's algorithm on dense matrices with a bool sign, one tensor at a time.

    Weight decay reaches the tensors optbench's policy decays (2+ dims on these models). A tensor
    whose squeezed shape is 1-D, without vector_reshape, takes the unfactorized update (the
    reference's ``_adam``)."""
    decayed = decayed_names(model)
    state: dict[str, dict] = {}
    for step in range(steps):
        model.zero_grad()
        loss_fn(model, step).backward()
        t = step + 1
        b1 = beta * growth_rate ** (t - 1)
        b2 = 1 - t**decay_rate
        with torch.no_grad():
            for name, p in model.named_parameters():
                wd = weight_decay if name in decayed else 0.0
                if not vector_reshape and len(p.squeeze().shape) == 1:
                    n, m = p.numel(), 1
                else:
                    n, m = square_matricize(p.numel())
                s = state.setdefault(name, {"mom": torch.zeros(n, m), "var": torch.zeros(n, m)})
                g = p.grad.reshape(n, m).clone()
                if mode == "adam":
                    g += wd * p.reshape(n, m)
                mom = b1 * s["mom"] + (1 - b1) * g
                var = b2 * s["var"] + (1 - b2) * g * g
                if m == 1 and not vector_reshape:  # plain Adam: the moments are kept as they are
                    s["mom"], s["var"] = mom, var
                else:  # compressed: sign and rank-1 factors, as the paper keeps them
                    s["mom"] = torch.where(mom > 0, 1.0, -1.0) * rank1(mom.abs())
                    s["var"] = rank1(var)
                if mode == "adamw":
                    p.mul_(1 - lr * wd)
                p.sub_(lr * (mom / (var.sqrt() + eps)).reshape(p.shape))


def rank1(matrix: torch.Tensor) -> torch.Tensor:
    total = matrix.sum()
    return torch.outer(matrix.sum(1), matrix.sum(0)) / total if total > 0 else torch.zeros_like(matrix)


def assert_close(model: nn.Module, ref: nn.Module, rtol: float) -> None:
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        err = ((p - q).norm() / q.norm()).item()
        assert err < rtol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize(("mode", "vector_reshape"), [("adamw", True), ("adam", False)])
def test_equals_dense_reference(mode: str, vector_reshape: bool) -> None:
    model, ref = toy(), toy()
    kw = dict(beta=0.9, eps=1e-8, weight_decay=0.05, decay_rate=-0.8, growth_rate=0.99)
    opt = build_smmf(model, 1e-2, weight_decay_mode=mode, vector_reshape=vector_reshape, **kw)
    train(model, opt, 6)
    dense_smmf(ref, 6, 1e-2, mode=mode, vector_reshape=vector_reshape, **kw)
    assert_close(model, ref, 1e-5)
    state = opt.state[model.conv.weight]  # 54 elements -> (9, 6)
    assert state["row_m"].shape == (9,) and state["col_v"].shape == (6,) and state["sign"].shape == (1, 6)


class Singletons(nn.Module):
    """Tensors whose squeezed shape is 1-D: (1, 48), (48, 1), (1, 1, 40); and a real matrix."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.row = nn.Parameter(torch.randn(1, 48, generator=g))
        self.col = nn.Parameter(torch.randn(48, 1, generator=g))
        self.deep = nn.Parameter(torch.randn(1, 1, 40, generator=g))
        self.matrix = nn.Parameter(torch.randn(6, 8, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.row.T + x @ self.col).tanh().sum() + (self.deep.sin() * x[:, :40].mean()).sum() \
            + (self.matrix @ x[:, :8].T).square().mean()


def singleton_loss(model: Singletons, step: int) -> torch.Tensor:
    return model(torch.randn(4, 48, generator=torch.Generator().manual_seed(step)))


@pytest.mark.parametrize("vector_reshape", [False, True])
def test_singleton_dims_decide_on_the_squeezed_shape(vector_reshape: bool) -> None:
    """Without vector_reshape, the reference gives (1, 48), (48, 1) and (1, 1, 40) plain Adam (they
    squeeze to 1-D); factorizing their unsqueezed shape instead differs by 14-28% from step 2."""
    model, ref = Singletons(), Singletons()
    kw = dict(beta=0.9, eps=1e-8, weight_decay=0.05, decay_rate=-0.8, growth_rate=0.99)
    opt = build_smmf(model, 1e-2, vector_reshape=vector_reshape, **kw)
    train(model, opt, 5, loss_fn=singleton_loss)
    dense_smmf(ref, 5, 1e-2, vector_reshape=vector_reshape, loss_fn=singleton_loss, **kw)
    assert_close(model, ref, 1e-5)
    for p in (model.row, model.col, model.deep):
        assert factorizes(p.shape, vector_reshape) == vector_reshape
        assert ("exp_avg" in opt.state[p]) == (not vector_reshape)
    assert "sign" in opt.state[model.matrix] and factorizes((1, 1), False)  # squeezes to 0-D: factorized
    assert optimizer_state_bytes(opt) == sum(smmf_param_state_bytes(p, vector_reshape) for p in model.parameters())
    if not vector_reshape:
        assert smmf_param_state_bytes(model.deep, False) == 2 * 40 * 4


def test_a_non_contiguous_parameter_steps_as_its_contiguous_copy() -> None:
    base = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    strided, dense = nn.Parameter(base.clone().t()), nn.Parameter(base.t().contiguous())  # (6, 8) both
    assert not strided.is_contiguous()
    opt_s, opt_d = SMMF([strided], lr=1e-2), SMMF([dense], lr=1e-2)
    for step in range(3):
        g = torch.randn(6, 8, generator=torch.Generator().manual_seed(step))
        strided.grad, dense.grad = g.clone(), g.clone()
        opt_s.step()
        opt_d.step()
    assert torch.equal(strided.detach(), dense.detach()) and not strided.is_contiguous()


def wide_loss(model: nn.Linear, step: int) -> torch.Tensor:
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(step))
    return model(x).tanh().square().mean()


def test_blocks_of_rows_equal_the_whole_matrix(monkeypatch) -> None:
    """The eager step works on blocks of rows; with blocks of 32 rows it must equal one block."""
    model, ref = (nn.Linear(40, 80, bias=False) for _ in range(2))
    ref.load_state_dict(model.state_dict())
    opt, whole = (build_smmf(m, 1e-2, weight_decay=0.05, native=False) for m in (model, ref))  # the torch step
    train(ref, whole, 4, loss_fn=wide_loss)
    monkeypatch.setattr(smmf, "CHUNK_ELEMENTS", 8)  # 3200 elements -> (64, 50): two blocks of 32 rows
    train(model, opt, 4, loss_fn=wide_loss)
    assert_close(model, ref, 1e-6)
    assert opt.state[model.weight]["sign"].shape == (2, 50)
    assert torch.equal(opt.state[model.weight]["sign"], whole.state[ref.weight]["sign"])


def test_state_dict_round_trip_continues_identically() -> None:
    model, twin = toy(), toy()
    opt = build_smmf(model, 1e-2)
    train(model, opt, 3)
    twin.load_state_dict(model.state_dict())
    fresh = build_smmf(twin, 1e-2, weight_decay=0.3)  # the loaded groups bring back weight_decay=0
    fresh.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert fresh.state[twin.lin.weight]["sign"].dtype == torch.int32
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
    shapes = [square_matricize(p.numel()) for p in model.parameters()]
    expected = sum(8 * (rows + cols) + 4 * math.ceil(rows / 32) * cols for rows, cols in shapes)
    assert measured == expected
    assert spec.bound_bytes_per_param == 12.25


@pytest.mark.slow
def test_compiled_step_matches_eager(monkeypatch) -> None:
    monkeypatch.setenv("OPTBENCH_COMPILE", "1")
    model, ref = toy(), toy()
    opt = build_smmf(model, 1e-2, weight_decay=0.05, decay_rate=-0.8, compile=True)
    eager = build_smmf(ref, 1e-2, weight_decay=0.05, decay_rate=-0.8, native=False)
    assert (opt.optbench_impl, eager.optbench_impl) == ("compiled", "eager")
    graphs = compiled_graphs()
    train(model, opt, 5)
    train(ref, eager, 5)
    assert opt.optbench_impl == "compiled", "the compiled step fell back to eager"
    assert compiled_graphs() - graphs == 1, "the step recompiled (a per-step number compiled in as a constant?)"
    assert_close(model, ref, 1e-6)


# ----------------------------------------------------------------------------- the C kernel (native)

NATIVE_SHAPES = [(300, 500), (64, 8, 3, 3), (37,), (128,), (5, 3), (96, 64)]
NATIVE_KWARGS = [{}, dict(weight_decay=0.1, decay_rate=-0.8),
                 dict(weight_decay=0.1, weight_decay_mode="adam", vector_reshape=False)]


@pytest.mark.native
@pytest.mark.parametrize("batches", ["one batch", "a batch per tensor"])
@pytest.mark.parametrize("kwargs", NATIVE_KWARGS)
def test_native_step_matches_the_torch_step(kwargs, batches, monkeypatch) -> None:
    """The kernel's signs equal the torch step's and its factors, moments and parameters agree to
    float rounding, whether the tensors' column sums share one batch of the kernel's scratch or go
    in a batch each. (Its sums add in another order than torch's: where M lands within rounding
    of 0, the two can pick different signs, after which that row and column differ by a sign's
    worth; on these sizes and steps none does.)"""
    def make(native: bool):
        torch.manual_seed(0)
        params = [nn.Parameter(torch.randn(shape)) for shape in NATIVE_SHAPES]
        return params, SMMF(params, lr=1e-2, native=native, **kwargs)

    if batches != "one batch":  # a scratch too small for two tensors' column sums: one batch each
        monkeypatch.setattr(smmf, "COLSUM_FLOATS", 1)
    (native, fast), (torch_params, slow) = make(True), make(False)
    start = [p.detach().clone() for p in native]
    assert (fast.optbench_impl, slow.optbench_impl) == ("native", "eager")
    step_alike((native, fast), (torch_params, slow), 8)
    for p, q, p0, shape in zip(native, torch_params, start, NATIVE_SHAPES, strict=True):
        a, b = fast.state[p], slow.state[q]
        assert a.keys() == b.keys()
        for key in set(a) - {"step"}:
            if key == "sign":
                assert torch.equal(a[key], b[key]), shape
            else:
                assert (a[key] - b[key]).abs().max() <= 1e-5 * b[key].abs().max(), (shape, key)
        moved = (q - p0).detach()
        assert moved.abs().max() > 0
        assert (p - q).abs().max() <= 1e-4 * moved.abs().max(), shape


@pytest.mark.native
def test_native_scratch_is_counted_and_under_one_parameter() -> None:
    """The kernel's column sums per work item and its per-thread sign words are torch tensors, so
    the memory tracker counts them; together under one parameter-sized float32 temporary."""
    from optbench.memory import measure_optimizer_steps

    torch.manual_seed(0)
    model = nn.Linear(1024, 1024, bias=False)
    opt = SMMF(model.parameters(), lr=1e-3)
    model.weight.grad = torch.randn_like(model.weight)
    report = measure_optimizer_steps(model, opt, steps=2)
    assert opt.optbench_impl == "native"
    items = 1024 // smmf.item_rows(1024, 1024, plain=False)
    assert report.raw_by_category["optimizer_scratch"] >= items * 2 * 1024 * 4
    assert report.raw_by_category["optimizer_scratch"] < 4 * model.weight.numel()
