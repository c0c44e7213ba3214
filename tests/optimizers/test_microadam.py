"""MicroAdam: 4-bit error quantization, windowed Adam at k = 100%, the full step against a dense reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from optbench.optimizers import microadam
from optbench.optimizers.microadam import (
    MicroAdam,
    build_microadam,
    dequantize4,
    index_dtype,
    log_or_floor,
    microadam_param_state_bytes,
    microadam_state_bytes,
    official_device_unmet,
    pack_nibbles,
    quantize4,
    topk_layout,
    unpack_nibbles,
    window_weights,
)
from torch import nn
from toy_model import compiled_graphs, step_alike, toy, toy_loss, train

from optbench.registry import get_optimizer
from optbench.state import optimizer_state_bytes


@pytest.mark.parametrize("numel", [1, 2, 7, 10])
def test_nibble_pack_round_trip(numel: int) -> None:
    codes = torch.randint(0, 16, (numel,), dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.numel() == math.ceil(numel / 2)
    assert torch.equal(unpack_nibbles(packed, numel), codes)
    # byte j holds codes 2j and 2j+1, so a piece of even length packs into bytes of its own
    if numel >= 4:
        assert torch.equal(packed[1:2], pack_nibbles(codes[2:4]))


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
    # the official layout: full blocks of B, then a shorter block with its own k
    assert topk_layout(100, 32, 0.1) == (3, 32, 4, 4, 1)
    assert topk_layout(5, 32768, 0.01) == (1, 5, 1, 0, 0)
    assert index_dtype(32768) == torch.int16 and index_dtype(32769) == torch.int32
    assert topk_layout(50_000, 40_000, 0.01) == (1, 40_000, 400, 10_000, 100)  # int32: B > 32768
    p = torch.zeros(70_000)
    assert topk_layout(70_000, 32768, 0.01) == (2, 32768, 328, 4464, 45)
    assert microadam_param_state_bytes(p, m=2) == 2 * (2 * 328 + 45) * (2 + 2) + 35_000 + 4
    assert microadam_param_state_bytes(p, m=2, topk_block_size=70_000) == 2 * 700 * (4 + 2) + 35_000 + 4


def test_window_weights_are_made_on_the_device_for_filled_slots_only() -> None:
    # step 2 of a window of 4: slot 1 written now (age 0), slot 0 a step ago (age 1), slots 2-3 empty
    w = window_weights(2.0, 4, 0.9, math.log(0.9), torch.device("cpu"))
    assert torch.allclose(w, torch.tensor([0.1 * 0.9, 0.1, 0.0, 0.0]))
    w = window_weights(6.0, 4, 0.5, math.log(0.5), torch.device("cpu"))  # slot 1 is the newest, slot 2 the oldest
    assert torch.allclose(w, torch.tensor([0.25, 0.5, 0.0625, 0.125]))
    w = window_weights(6.0, 4, 0.0, log_or_floor(0.0), torch.device("cpu"))  # beta 0: the newest slot only
    assert torch.equal(w, torch.tensor([0.0, 1.0, 0.0, 0.0]))


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


def dense_microadam(grads: list[torch.Tensor], p0: torch.Tensor, window: int, blocks: list[tuple[int, int, int]],
                    lr: float, betas, eps: float, wd: float = 0.0, alpha: float = 0.0) -> torch.Tensor:
    """The paper's algorithm with an exact error, on a dense vector; ``blocks`` = (start, end, k).

    ``alpha`` > 0: the official pre-training option (a share alpha of the new error joins the
    update; the error keeps the rest)."""
    b1, b2 = betas
    n = p0.numel()
    p, error, history = p0.clone().reshape(-1), torch.zeros(n), []
    for t, g in enumerate(grads, start=1):
        a = g.reshape(-1) + error
        sparse = torch.zeros(n)
        for start, end, k in blocks:
            top = a[start:end].abs().argsort(descending=True)[:k] + start
            sparse[top] = a[top]
        error = a - sparse
        history.append(sparse.to(torch.bfloat16).float())
        recent = [(age, history[t - 1 - age]) for age in range(min(t, window))]
        m = sum((1 - b1) * b1**age * s for age, s in recent)
        v = sum((1 - b2) * b2**age * s * s for age, s in recent)
        p = p * (1 - lr * wd) - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) - lr * alpha * error
        error = (1 - alpha) * error
    return p.reshape(p0.shape)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_sparse_step_equals_dense_reference_with_exact_error(alpha: float) -> None:
    steps, window = 8, 3
    grads = [torch.randn(5, 10, generator=torch.Generator().manual_seed(s)) for s in range(steps)]
    p = nn.Parameter(torch.randn(5, 10))
    start = p.detach().clone()
    # 50 elements in top-k blocks of 16: 3 blocks of 16 with k = 4, then 2 elements with k = 1.
    opt = MicroAdam([p], lr=1e-2, m=window, k_init=0.2, topk_block_size=16, weight_decay=0.1, alpha=alpha,
                    quantize_error=False)
    assert topk_layout(50, 16, 0.2) == (3, 16, 4, 2, 1)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    ref = dense_microadam(grads, start, window, [(0, 16, 4), (16, 32, 4), (32, 48, 4), (48, 50, 1)], 1e-2,
                          (0.9, 0.999), 1e-8, wd=0.1, alpha=alpha)
    assert torch.allclose(p.detach(), ref, rtol=1e-5, atol=1e-7)
    assert opt.state[p]["indices"].dtype == torch.int16 and opt.state[p]["values"].dtype == torch.bfloat16
    assert opt.state[p]["indices"].shape == (window, 13)


def test_pieces_equal_the_whole_tensor(monkeypatch) -> None:
    """The eager step works on pieces of the tensor; pieces of a few blocks must equal one piece."""
    model, ref = toy(), toy()
    kw = dict(k_init=0.2, quant_block_size=5, topk_block_size=8, weight_decay=0.1, alpha=0.2)
    opt, whole = build_microadam(model, 1e-2, **kw), build_microadam(ref, 1e-2, **kw)
    train(ref, whole, 4)
    monkeypatch.setattr(microadam, "CHUNK_ELEMENTS", 9)  # pieces of 2 quantization blocks, 1 top-k block
    train(model, opt, 4)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-8)
        assert torch.equal(opt.state[p]["error_codes"], whole.state[q]["error_codes"])


def test_eager_step_holds_less_than_one_float32_copy_of_a_tensor(monkeypatch) -> None:
    """Issue 13's limit: the eager step's scratch stays under one parameter-sized float32 temporary
    (a dense ``a = g + e`` alone would reach it), on a tensor cut into several pieces."""
    from optbench.memory import measure_optimizer_steps

    monkeypatch.setattr(microadam, "CHUNK_ELEMENTS", 1 << 12)
    torch.manual_seed(0)
    model = nn.Linear(256, 256, bias=False)  # 65536 elements: 16 top-k blocks, 66 quantization blocks
    opt = MicroAdam(model.parameters(), lr=1e-3, topk_block_size=4096, quant_block_size=1000, native=False)
    assert opt.optbench_impl == "eager"
    model.weight.grad = torch.randn_like(model.weight)
    report = measure_optimizer_steps(model, opt, steps=2)
    assert 0 < report.raw_by_category["optimizer_scratch"] < 4 * model.weight.numel()


def test_error_feedback_is_quantized_and_bounded() -> None:
    p = nn.Parameter(torch.zeros(40))
    opt = MicroAdam([p], lr=1e-3, m=2, k_init=0.1, quant_block_size=16)
    g = torch.randn(40)
    p.grad = g.clone()
    opt.step()
    state = opt.state[p]
    assert state["error_codes"].dtype == torch.uint8 and state["error_codes"].numel() == 20
    error = dequantize4(state["error_codes"], state["error_min"], state["error_max"], 40, 16)
    chosen = state["indices"][0].long()  # one top-k block: indices within it are global
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
               ({"eps": -1.0}, "eps"), ({"weight_decay": -1.0}, "weight_decay"), ({"impl": "cuda"}, "impl"),
               ({"alpha": 1.0}, "alpha"), ({"alpha": -2}, "alpha")]


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


def test_official_impl_needs_bf16_cuda_parameters() -> None:
    """The official kernels assert bf16 gradients in C (an abort no try/except catches): refuse first."""
    from fake_cuda import fake_cuda

    assert "CUDA" in official_device_unmet([torch.zeros(4, dtype=torch.bfloat16)])
    with fake_cuda():
        fp32 = [torch.zeros(4, device="cuda")]
        bf16 = [torch.zeros(4, device="cuda", dtype=torch.bfloat16)]
    reason = official_device_unmet(fp32)
    assert "bfloat16" in reason and "float32" in reason
    assert official_device_unmet(bf16) is None


@pytest.mark.parametrize("quantize_error", [True, False])
def test_registration_and_state_bytes(quantize_error: bool) -> None:
    spec = get_optimizer("microadam")
    assert spec.family == "sparse-error-feedback" and "NeurIPS 2024" in spec.paper
    model = toy()
    hp = spec.resolve_hparams({"quantize_error": quantize_error, "quant_block_size": 16})
    opt = spec.build(model, 1e-3, **hp)
    train(model, opt, 1)
    assert optimizer_state_bytes(opt) == spec.state_bytes(model, **hp)
    assert spec.bound_bytes_per_param == 13.4 and "m = 10" in spec.board_note


@pytest.mark.slow
def test_compiled_step_matches_eager(monkeypatch) -> None:
    monkeypatch.setenv("OPTBENCH_COMPILE", "1")
    model, ref = toy(), toy()
    kw = dict(k_init=0.2, quant_block_size=16, topk_block_size=20, weight_decay=0.1)
    opt = build_microadam(model, 1e-2, compile=True, **kw)
    eager = build_microadam(ref, 1e-2, compile=False, native=False, **kw)
    assert (opt.optbench_impl, eager.optbench_impl) == ("compiled", "eager")
    graphs = compiled_graphs()
    train(model, opt, 5)
    train(ref, eager, 5)
    assert opt.optbench_impl == "compiled", "the compiled step fell back to eager"
    assert compiled_graphs() - graphs == 1, "the step recompiled (a per-step number compiled in as a constant?)"
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        err = ((p - q).norm() / q.norm()).item()
        assert err < 1e-6, f"{name}: relative error {err:.2e}"


def test_param_groups_with_their_own_betas_and_window_step_as_each_group_alone() -> None:
    # The ring slot and window weights are made once a step per (scalar slot, window, device); a
    # key that missed the group would give the second group the first one's weights.
    torch.manual_seed(0)
    shapes, settings = [(40, 30), (25,)], [dict(betas=(0.9, 0.999), m=4), dict(betas=(0.5, 0.9), m=3)]
    together = [nn.Parameter(torch.randn(s)) for s in shapes]
    alone = [nn.Parameter(q.detach().clone()) for q in together]
    start = [q.detach().clone() for q in together]
    opt = MicroAdam([{"params": [q], **kw} for q, kw in zip(together, settings)], lr=1e-2, k_init=0.1)
    singles = [MicroAdam([q], lr=1e-2, k_init=0.1, **kw) for q, kw in zip(alone, settings)]
    for _ in range(6):
        grads = [torch.randn(s) for s in shapes]
        for q, r, g in zip(together, alone, grads):
            q.grad, r.grad = g.clone(), g.clone()
        opt.step()
        for single in singles:
            single.step()
    for q, r, q0 in zip(together, alone, start):
        assert not torch.equal(q.detach(), q0)  # it moved
        assert torch.equal(q.detach(), r.detach())


# ----------------------------------------------------------------------------- the C kernel (native)

NATIVE_CASES = [
    # 150,000 elements: 4 top-k blocks and a shorter rest, 2 quantization blocks that cut across them
    ([(300, 500), (33,)], {}),
    ([(300, 500), (7,)], dict(weight_decay=0.1, betas=(0.8, 0.99))),
    # an odd element count (the last byte of codes holds one code); blocks that do not divide it
    ([(70001,), (129, 3)], dict(m=3, k_init=0.05, topk_block_size=1000, quant_block_size=998)),
    ([(50000,)], dict(topk_block_size=40000)),  # int32 indices
    ([(64, 64)], dict(k_init=1.0, m=2, quant_block_size=100)),  # every entry chosen
]


def _native_pair(shapes, kwargs):
    torch.manual_seed(0)
    native = [nn.Parameter(torch.randn(s)) for s in shapes]
    eager = [nn.Parameter(p.detach().clone()) for p in native]
    return (native, MicroAdam(native, lr=1e-2, **kwargs)), (eager, MicroAdam(eager, lr=1e-2, native=False, **kwargs))


def _window_entries(state, block: int, full: int, k: int) -> list[list[tuple[int, int, float]]]:
    """Each ring slot's (top-k block, index, value) entries, sorted: the kernel and torch.topk list
    a block's k entries in different orders."""
    indices, values = state["indices"].long(), state["values"].float()
    columns = torch.arange(indices.shape[1]).div(k, rounding_mode="floor").clamp(max=full)
    return [sorted(zip(columns.tolist(), row.tolist(), vals.tolist())) for row, vals in zip(indices, values)]


@pytest.fixture(params=["this-cpu", "generic"])
def kernel_build(request, monkeypatch, tmp_path):
    """The kernel built for this CPU (the default: AVX-512 paths where the CPU has them) and with
    the generic flags, whose scalar paths are the ones other CPUs run."""
    from optbench.optimizers import _native

    if request.param == "generic":
        monkeypatch.setattr(_native, "ATTEMPTS", (_native.FLAGS + _native.OPENMP,))
        monkeypatch.setenv("OPTBENCH_KERNEL_CACHE", str(tmp_path))
        monkeypatch.setattr(_native, "_LOADED", {})
    return request.param


@pytest.mark.native
@pytest.mark.parametrize(("shapes", "kwargs"), NATIVE_CASES)
def test_native_step_matches_eager(shapes, kwargs, kernel_build) -> None:
    """The kernel's error codes, block minima and maxima and window equal the eager step's, and
    its parameters agree to a few ulps (torch's CPU sqrt is not correctly rounded; the kernel's
    is), over enough steps to fill and wrap the window."""
    (native, fast), (eager, slow) = _native_pair(shapes, kwargs)
    start = [p.detach().clone() for p in native]
    assert (fast.optbench_impl, slow.optbench_impl) == ("native", "eager")
    step_alike((native, fast), (eager, slow), kwargs.get("m", 10) + 3)
    for p, q, p0 in zip(native, eager, start, strict=True):
        a, b = fast.state[p], slow.state[q]
        for key in ("error_codes", "error_min", "error_max"):
            assert torch.equal(a[key], b[key]), key
        full, size, k, _, _ = topk_layout(p.numel(), kwargs.get("topk_block_size", 32768), kwargs.get("k_init", 0.01))
        assert _window_entries(a, size, full, k) == _window_entries(b, size, full, k)
        moved = q.detach() - p0
        assert moved.abs().max() > 0
        # A few ulps of the parameter (sqrt's rounding, step after step), against how far it moved.
        assert (p - q).abs().max() <= 1e-5 * moved.abs().max()


@pytest.mark.native
def test_native_top_k_among_ties_is_a_top_k(kernel_build) -> None:
    """Where many |a| tie, the kernel may choose other entries than torch.topk, but always k of the
    largest: every chosen |a| is at least every unchosen one, and the error holds the rest."""
    p = nn.Parameter(torch.zeros(5000))
    opt = MicroAdam([p], lr=1e-3, k_init=0.1, topk_block_size=2500, quant_block_size=5000)
    g = torch.tensor([1.0, -1.0, 2.0, -2.0, 0.5]).repeat(1000)  # 400 of |2| in each block of 2500, k = 250
    p.grad = g.clone()
    opt.step()
    state = opt.state[p]
    assert opt.optbench_impl == "native"
    local = state["indices"][0].long()
    chosen = local + torch.arange(local.numel()).div(250, rounding_mode="floor") * 2500
    assert chosen.unique().numel() == 500
    assert torch.equal(g[chosen].abs(), torch.full((500,), 2.0))
    assert torch.equal(state["values"][0].float(), g[chosen])
    error = dequantize4(state["error_codes"], state["error_min"], state["error_max"], 5000, 5000)
    rest = g.clone()
    rest[chosen] = 0
    assert (error - rest).abs().max() <= (rest.max() - rest.min()) / 30 + 1e-6


@pytest.mark.parametrize("kwargs", [dict(alpha=0.3), dict(quantize_error=False), dict(quant_block_size=999),
                                    dict(native=False)])
def test_options_the_kernel_lacks_take_the_torch_step(kwargs) -> None:
    p = nn.Parameter(torch.randn(100))
    opt = MicroAdam([p], lr=1e-3, **kwargs)
    assert opt.optbench_impl == "eager"
    p.grad = torch.randn(100)
    opt.step()
    assert opt.optbench_impl == "eager"


@pytest.mark.native
def test_a_group_the_kernel_cannot_take_switches_to_the_torch_step_with_a_warning() -> None:
    p, q = nn.Parameter(torch.randn(100)), nn.Parameter(torch.randn(50))
    opt = MicroAdam([p], lr=1e-3)
    assert opt.optbench_impl == "native"
    p.grad = torch.randn(100)
    opt.step()
    opt.add_param_group({"params": [q], "alpha": 0.5})
    q.grad = torch.randn(50)
    with pytest.warns(UserWarning, match="C kernel cannot take"):
        opt.step()
    assert opt.optbench_impl == "eager"
    assert opt.state[q]["step"] == 1


def test_native_disabled_by_the_environment_or_a_missing_compiler(monkeypatch, tmp_path) -> None:
    from optbench.optimizers import _native

    monkeypatch.setenv("OPTBENCH_NATIVE", "0")
    assert MicroAdam([nn.Parameter(torch.randn(10))]).optbench_impl == "eager"
    monkeypatch.setenv("OPTBENCH_NATIVE", "1")
    monkeypatch.setenv("OPTBENCH_KERNEL_CACHE", str(tmp_path))  # an empty cache: the kernel must be built
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(_native, "_LOADED", {})
    with pytest.warns(UserWarning, match="no C compiler"):
        opt = MicroAdam([nn.Parameter(torch.randn(10))])
    assert opt.optbench_impl == "eager"
    assert "no C compiler" in _native.why_unavailable("microadam")


@pytest.mark.native
def test_native_scratch_is_counted_and_under_one_parameter(monkeypatch) -> None:
    """The kernel's per-thread scratch is a torch tensor, so the memory tracker sees it; it holds a
    few blocks per thread, under issue 13's limit of one parameter-sized float32 temporary."""
    from optbench.memory import measure_optimizer_steps

    torch.manual_seed(0)
    model = nn.Linear(512, 512, bias=False)
    opt = MicroAdam(model.parameters(), lr=1e-3, topk_block_size=8192, quant_block_size=4096)
    model.weight.grad = torch.randn_like(model.weight)
    report = measure_optimizer_steps(model, opt, steps=2)
    assert opt.optbench_impl == "native"
    scratch = report.raw_by_category["optimizer_scratch"]
    assert 4 * (4 * 8192) <= scratch < 4 * model.weight.numel()
