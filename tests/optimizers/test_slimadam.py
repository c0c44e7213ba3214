"""SlimAdamW: equals AdamW without compression, equals the paper's dense update with rules."""

from __future__ import annotations

import json

import pytest
import torch
import toy_model
from optbench.optimizers import slimadam
from optbench.optimizers.slimadam import SlimAdamW, build_slimadam, compression_axes, static_rules
from torch import nn
from toy_model import compiled_graphs, step_alike

from optbench.model_info import ModelInfo, attach_info
from optbench.registry import get_optimizer
from optbench.state import optimizer_state_bytes


class SlimToy(nn.Module):
    """Embedding, conv (4-D), linears (2-D), a prime-sized vector and biases (1-D)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.conv = nn.Conv2d(2, 3, 3)
        self.q = nn.Linear(6, 6)
        self.v = nn.Linear(6, 5, bias=False)
        self.prime = nn.Parameter(torch.randn(7))
        self.norm = nn.LayerNorm(5)
        self.head = nn.Linear(5, 4)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h = self.emb(tokens).mean(1) + self.conv(image).mean((1, 2, 3)).unsqueeze(1)
        h = self.norm(self.v(torch.tanh(self.q(h))) + self.prime[:5])
        return self.head(h)


ROLES = {"emb.weight": "embedding", "conv.weight": "conv_in", "conv.bias": "bias", "q.weight": "query",
         "q.bias": "bias", "v.weight": "value", "prime": "other", "norm.weight": "norm", "norm.bias": "bias",
         "head.weight": "head", "head.bias": "bias"}


def toy(seed: int = 0) -> SlimToy:
    torch.manual_seed(seed)
    return attach_info(SlimToy(), ModelInfo(roles=dict(ROLES), d_model=6, n_heads=1, task="slim-toy"))


def toy_loss(model: SlimToy, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    tokens = torch.randint(0, 11, (8, 3), generator=g)
    image = torch.randn(8, 2, 5, 5, generator=g)
    target = torch.randn(8, 4, generator=g)
    return ((model(tokens, image) - target) ** 2).mean()


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0) -> list[float]:
    return toy_model.train(model, opt, steps, start, loss_fn=toy_loss)


def assert_params_close(a: nn.Module, b: nn.Module, rtol: float) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        err = ((p - q).norm() / q.norm().clamp_min(1e-12)).item()
        assert err <= rtol, f"{name}: relative error {err:.2e} > {rtol}"


def test_no_compression_equals_torch_adamw() -> None:
    model, ref = toy(), toy()
    rules = {name: None for name in ROLES}
    opt = build_slimadam(model, 3e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, rules=rules)
    decay = [p for p in ref.parameters() if p.ndim >= 2]
    no_decay = [p for p in ref.parameters() if p.ndim < 2]
    adamw = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=3e-3,
                              betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, foreach=False)
    train(model, opt, 20)
    train(ref, adamw, 20)
    assert_params_close(model, ref, 1e-6)


def dense_slimadam(model: nn.Module, axes: dict, lr: float, betas, eps: float, wd: float, steps: int) -> None:
    """The paper's update, one tensor at a time, written from the equations."""
    b1, b2 = betas
    m = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    v = {n: None for n, _ in model.named_parameters()}
    for step in range(steps):
        model.zero_grad()
        toy_loss(model, step).backward()
        t = step + 1
        with torch.no_grad():
            for n, p in model.named_parameters():
                g = p.grad
                sq = g * g if axes[n] is None else (g * g).mean(dim=axes[n], keepdim=True)
                m[n] = b1 * m[n] + (1 - b1) * g
                v[n] = (1 - b2) * sq if v[n] is None else b2 * v[n] + (1 - b2) * sq
                if p.ndim >= 2:
                    p.mul_(1 - lr * wd)
                m_hat = m[n] / (1 - b1**t)
                v_hat = v[n] / (1 - b2**t)
                p.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def test_with_rules_equals_dense_reference(tmp_path) -> None:
    rules = {"_command": "optbench snr --task slim-toy", "_alpha": 1.0, "emb.weight": [1], "conv.weight": [1, 2, 3],
             "q.weight": [0, 1], "v.weight": [0], "head.weight": [-1], "prime": None, "norm.weight": None}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    model, ref = toy(), toy()
    opt = build_slimadam(model, 1e-2, weight_decay=0.05, rules=str(path))
    train(model, opt, 12)
    axes = compression_axes(ref, rules)
    assert axes["head.weight"] == (1,) and axes["prime"] is None and axes["q.bias"] is None
    dense_slimadam(ref, axes, 1e-2, (0.9, 0.999), 1e-8, 0.05, 12)
    assert_params_close(model, ref, 1e-5)
    assert opt.state[model.conv.weight]["exp_avg_sq"].shape == (3, 1, 1, 1)
    assert opt.state[model.q.weight]["exp_avg_sq"].shape == (1, 1)


def test_static_rules_follow_table_1() -> None:
    model = toy()
    shapes = {n: p.shape for n, p in model.named_parameters()}
    rules = static_rules(model._optbench_info, shapes)
    assert rules["q.weight"] == (1,)  # query: fan-in
    assert rules["v.weight"] == (0,)  # value: fan-out
    assert rules["conv.weight"] == (1,)  # vision first layer: input channels, as the reference's rule
    assert rules["emb.weight"] == (1,)  # one value per token
    assert rules["head.weight"] == (1,)
    assert all(rules[n] is None for n in ("norm.weight", "norm.bias", "q.bias", "prime"))
    assert set(slimadam.ROLE_AXES) == set(__import__("optbench.model_info").model_info.ROLES)


def test_rules_for_missing_parameters_are_refused() -> None:
    model = toy()
    with pytest.raises(ValueError, match=r"module\.q\.weight"):
        compression_axes(model, {"module.q.weight": [1], "q.weight": [1]})
    with pytest.raises(ValueError, match="out of range"):
        compression_axes(model, {"prime": [1]})


def test_compile_prefix_is_stripped() -> None:
    class Wrapped(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    wrapped = Wrapped(toy())
    axes = compression_axes(wrapped, {"_orig_mod.v.weight": [0], "q.weight": [1]})
    assert axes["v.weight"] == (0,) and axes["q.weight"] == (1,)


def test_static_rules_reach_a_compiled_model() -> None:
    compiled = torch.compile(toy())  # parameters are named "_orig_mod.*"; nothing is compiled until a forward
    opt = build_slimadam(compiled, 1e-3)
    names = [n.removeprefix("_orig_mod.") for n, _ in compiled.named_parameters()]
    by_param = {id(p): a for g in opt.param_groups for p, a in zip(g["params"], g["compress_axes"], strict=True)}
    axes = {n: by_param[id(p)] for n, p in zip(names, compiled.parameters(), strict=True)}
    assert axes == {"prime": None, "emb.weight": (1,), "conv.weight": (1,), "conv.bias": None,
                    "q.weight": (1,), "q.bias": None, "v.weight": (0,), "norm.weight": None, "norm.bias": None,
                    "head.weight": (1,), "head.bias": None}


@pytest.mark.parametrize(("kwargs", "name"), [({"lr": -1.0}, "lr"), ({"betas": (1.0, 0.9)}, "beta1"),
                                              ({"betas": (0.9, -0.1)}, "beta2"), ({"eps": -1.0}, "eps"),
                                              ({"weight_decay": -0.1}, "weight_decay")])
def test_invalid_hparams(kwargs: dict, name: str) -> None:
    args = {"lr": 1e-3, **kwargs}
    with pytest.raises(ValueError, match=name):
        build_slimadam(toy(), args.pop("lr"), **args)


def test_registration_and_state_bytes() -> None:
    spec = get_optimizer("slimadam")
    assert spec.family == "compressed-second-moment" and spec.needs_model_info
    model = toy()
    opt = spec.build(model, 1e-3, **spec.resolve_hparams())
    train(model, opt, 1)
    assert optimizer_state_bytes(opt) == spec.state_bytes(model, **spec.resolve_hparams())
    full = sum(2 * 4 * p.numel() + 4 for p in model.parameters())
    assert optimizer_state_bytes(opt) < full


def test_snr_variant_needs_a_rules_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(slimadam, "RULES_DIR", tmp_path)
    spec = get_optimizer("slimadam-snr")
    assert spec.family == "compressed-second-moment"
    assert "optbench snr --task" in spec.unavailable_reason()
    with pytest.raises(ValueError, match=r"slim-toy.*optbench snr --task slim-toy"):
        spec.build(toy(), 1e-3, **spec.resolve_hparams())
    (tmp_path / "slim-toy.json").write_text(json.dumps({"_alpha": 1.0, "v.weight": [0], "norm.weight": None}))
    assert spec.unavailable_reason() is None
    model = toy()
    opt = spec.build(model, 1e-3, **spec.resolve_hparams())
    train(model, opt, 1)
    assert opt.state[model.v.weight]["exp_avg_sq"].shape == (1, 6)
    assert opt.state[model.q.weight]["exp_avg_sq"].shape == (6, 6)
    assert optimizer_state_bytes(opt) == spec.state_bytes(model)


def test_optimizer_class_checks_axes_length() -> None:
    p = nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match="axes"):
        SlimAdamW([p], [None, None])


@pytest.mark.slow
def test_compiled_step_matches_eager(monkeypatch) -> None:
    monkeypatch.setenv("OPTBENCH_COMPILE", "1")
    model, ref = toy(), toy()
    opt = build_slimadam(model, 1e-2, weight_decay=0.1, compile=True)
    monkeypatch.setenv("OPTBENCH_NATIVE", "0")  # the reference: the eager torch step
    eager = build_slimadam(ref, 1e-2, weight_decay=0.1, compile=False)
    assert (opt.optbench_impl, eager.optbench_impl) == ("compiled", "eager")
    graphs = compiled_graphs()
    train(model, opt, 5)
    train(ref, eager, 5)
    assert opt.optbench_impl == "compiled", "the compiled step fell back to eager"
    assert compiled_graphs() - graphs == 1, "the step recompiled (a per-step number compiled in as a constant?)"
    assert_params_close(model, ref, 1e-6)


# ----------------------------------------------------------------------------- the C kernel (native)

NATIVE_SHAPES = [
    ((300, 500), (0,)),  # fan-out: column sums over rows
    ((64, 3000), (0,)),  # wider than the kernel's column strips (2048)
    ((300, 500), (1,)),  # fan-in: one value per row
    ((64, 8, 3, 3), (1,)),  # a conv's input channels: (outer, mid, inner) = (64, 8, 9)
    ((64, 8, 3, 3), (1, 2, 3)),
    ((7, 5, 9), (1,)),
    ((1000,), None),  # kept full: Adam
    ((50, 40), None),
    ((37, 1, 5), (0, 1)),  # a dim of size 1 inside the axes
]


@pytest.mark.native
def test_native_step_matches_the_torch_step() -> None:
    """The kernel's m, v and parameters agree with the eager (foreach) torch step to float rounding,
    on every kind of axes, with weight decay, across two param groups with their own betas."""
    def make(native: bool):
        torch.manual_seed(0)
        params = [nn.Parameter(torch.randn(shape)) for shape, _ in NATIVE_SHAPES]
        half = len(params) // 2
        axes = [a for _, a in NATIVE_SHAPES]
        groups = [{"params": params[:half], "compress_axes": axes[:half], "weight_decay": 0.1},
                  {"params": params[half:], "compress_axes": axes[half:], "betas": (0.8, 0.99)}]
        return params, SlimAdamW(groups, lr=1e-2, native=native)

    (native, fast), (torch_params, slow) = make(True), make(False)
    start = [p.detach().clone() for p in native]
    assert (fast.optbench_impl, slow.optbench_impl) == ("native", "eager")
    step_alike((native, fast), (torch_params, slow), 8)
    for p, q, p0, (shape, axes) in zip(native, torch_params, start, NATIVE_SHAPES, strict=True):
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = fast.state[p][key], slow.state[q][key]
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 1e-6 * b.abs().max(), (shape, axes, key)
        moved = (q - p0).detach()
        assert (p - q).abs().max() <= 1e-5 * moved.abs().max(), (shape, axes)


def test_axes_that_are_not_consecutive_take_the_torch_step() -> None:
    p = nn.Parameter(torch.randn(4, 5, 6))
    opt = SlimAdamW([p], [(0, 2)])
    assert opt.optbench_impl == "eager"
    p.grad = torch.randn(4, 5, 6)
    opt.step()
    assert opt.state[p]["exp_avg_sq"].shape == (1, 5, 1)


@pytest.mark.native
def test_native_runs_by_default_and_trains() -> None:
    model = toy()
    opt = build_slimadam(model, 1e-2)
    assert opt.optbench_impl == "native"
    before = toy_loss(model, 0).item()
    train(model, opt, 20)
    assert toy_loss(model, 0).item() < before
