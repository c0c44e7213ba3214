"""torchao's low-bit AdamW: which tensors are quantized, the state formula, the tensor lr, availability."""

from __future__ import annotations

import optbench.optimizers.ao_adamw as ao
import pytest
import torch
from torch import nn

from optbench.registry import get_optimizer
from optbench.schedule import apply_lr
from optbench.state import optimizer_state_bytes


class Mixed(nn.Module):
    """A 4096-element matrix (quantized), 4100 elements (not a whole number of blocks) and 1024 (too small)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.big = nn.Parameter(torch.randn(64, 64))
        self.odd = nn.Parameter(torch.randn(4100))
        self.small = nn.Parameter(torch.randn(32, 32))

    def loss(self) -> torch.Tensor:
        return self.big.square().mean() + self.odd.square().mean() + self.small.square().mean()


def built(name: str, model: nn.Module, **hparams):
    spec = get_optimizer(name)
    reason = spec.unavailable_reason("cpu")
    if reason:
        pytest.skip(reason)
    return spec, spec.build(model, 1e-3, **spec.resolve_hparams(hparams))


@pytest.mark.parametrize("name", sorted(ao.FORMATS))
def test_only_whole_blocks_of_at_least_4096_are_quantized(name):
    model = Mixed()
    spec, opt = built(name, model)
    model.loss().backward()
    opt.step()
    kinds = {n: type(opt.state[p]["exp_avg"]).__name__ for n, p in model.named_parameters()}
    assert kinds["big"].startswith("OptimState") and kinds["odd"] == kinds["small"] == "Tensor"
    assert optimizer_state_bytes(opt) == spec.state_bytes(model)
    fmt = ao.FORMATS[name]
    plain = 2 * 4 * (4100 + 1024)
    assert spec.state_bytes(model) == plain + 2 * fmt.moment_bytes(4096, fmt.block_size) + 3 * 4


def test_moment_bytes_by_format():
    n = 1024 * 1024
    assert ao.FORMATS["ao-adamw4bit"].moment_bytes(n, 128) == 557_120
    assert ao.FORMATS["ao-adamw8bit"].moment_bytes(n, 256) == n + 4 * n // 256 + 4 * 256
    assert ao.FORMATS["ao-adamw-fp8"].moment_bytes(n, 256) == n + 4 * n // 256


def test_lr_stays_a_tensor_that_the_schedule_fills():
    model = Mixed()
    _, opt = built("ao-adamw8bit", model)
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor)
    apply_lr(opt, 0.5)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(5e-4)


def test_unavailable_without_a_cpp_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler++")
    reason = get_optimizer("ao-adamw4bit").unavailable_reason("cpu")
    assert reason is not None and "C++ compiler" in reason and "no-such-compiler++" in reason


def test_odd_block_size_is_refused_for_4bit():
    with pytest.raises(ValueError, match="block_size"):
        built("ao-adamw4bit", Mixed(), block_size=127)
