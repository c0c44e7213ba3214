"""The shared pieces of our own optimizers: update pieces, the compiled step's fallbacks, the record."""

from __future__ import annotations

import pytest
import torch
from optbench.optimizers import _common
from optbench.optimizers._common import bias_correction, column_sums, decay_factor, ema_, run_step
from torch.utils._python_dispatch import TorchDispatchMode


def test_update_pieces_are_the_equations() -> None:
    avg, new = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 4.0])
    assert torch.allclose(ema_(avg, new, 0.9), torch.tensor([0.9 + 0.3, -1.8 + 0.4]))
    assert bias_correction(0.9, 2) == pytest.approx(1 - 0.81)
    assert decay_factor(1e-2, 0.1) == pytest.approx(0.999)


@pytest.mark.parametrize("rows", [32, 9])
def test_column_sums_in_blocks_equal_plain_sums(rows: int) -> None:
    x = torch.rand(rows, 5, generator=torch.Generator().manual_seed(rows))
    assert torch.allclose(column_sums(x), x.sum(0), rtol=1e-6)


class _Stepper(torch.optim.Optimizer):
    """A minimal optimizer stepping through run_step: p -= lr * g, chunked like ours."""

    def __init__(self, params, compiled_fn) -> None:
        super().__init__(params, {"lr": 0.5})
        self.optbench_impl = "compiled"
        self.compiled_fn = compiled_fn

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        run_step(self, self.compiled_fn, _sgd_eager, ([p for p in params], [p.grad for p in params]), [0.5],
                 [(tuple(p.shape), p.dtype) for p in params])


def _sgd_eager(params, grads, shared) -> None:
    for p, g in zip(params, grads, strict=True):
        p.sub_(g * shared[0])


def _params(n: int) -> list[torch.nn.Parameter]:
    out = []
    for i in range(n):
        p = torch.nn.Parameter(torch.full((3,), float(i)))
        p.grad = torch.ones(3)
        out.append(p)
    return out


def test_a_step_that_fails_to_compile_warns_and_steps_eagerly(monkeypatch) -> None:
    calls = []

    def compiles_then_fails(params, grads, shared):  # stands in for a compiled chunk
        calls.append(len(params))
        if len(calls) == 2:
            raise RuntimeError("inductor failed")
        _sgd_eager(params, grads, shared)

    monkeypatch.setattr(_common, "COMPILE_CHUNK", 2)
    monkeypatch.setattr(_common, "COMPILE_CHUNK_NUMEL", 0)
    monkeypatch.setattr(_common, "compiled", lambda fn, key: fn)
    params = _params(5)
    opt = _Stepper(params, compiles_then_fails)
    with pytest.warns(UserWarning, match="stepping eagerly"):
        opt.step()
    # the first chunk stepped compiled, the failed chunk and the rest eagerly: each tensor exactly once
    assert [p[0].item() for p in params] == [-0.5, 0.5, 1.5, 2.5, 3.5]
    assert opt.optbench_impl == "eager" and calls == [2, 2]
    opt.step()
    assert calls == [2, 2] and params[0][0].item() == -1.0


class _PassThrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_under_a_dispatch_mode_the_step_runs_eagerly_and_stays_compiled(monkeypatch) -> None:
    monkeypatch.setattr(_common, "compiled", lambda fn, key: pytest.fail("compiled under a dispatch mode"))
    params = _params(2)
    opt = _Stepper(params, _sgd_eager)
    with _PassThrough():  # as the memory tracker is
        opt.step()
    assert opt.optbench_impl == "compiled" and params[1][0].item() == 0.5


def test_compiled_chunks_share_a_graph_per_distinct_key(monkeypatch) -> None:
    made = []
    monkeypatch.setattr(_common, "COMPILE_CHUNK", 2)
    monkeypatch.setattr(_common, "COMPILE_CHUNK_NUMEL", 0)
    monkeypatch.setattr(_common, "_COMPILED", {})
    monkeypatch.setattr(_common.torch, "compile", lambda fn, **_: made.append(fn) or fn)
    opt = _Stepper(_params(6), _sgd_eager)  # three chunks of two (3,) float32 tensors: one key
    opt.step()
    opt.step()
    assert len(made) == 1


@pytest.mark.native
def test_the_run_record_says_which_step_ran(monkeypatch) -> None:
    from optbench.runner import run_one

    record = run_one("digits-mlp", "smmf", preset="smoke", measure_memory_pass=False)
    assert record["status"] == "ok" and record["optimizer_impl"] == "native"  # the registered default on CPU
    monkeypatch.setenv("OPTBENCH_NATIVE", "0")
    record = run_one("digits-mlp", "smmf", preset="smoke", measure_memory_pass=False)
    assert record["status"] == "ok" and record["optimizer_impl"] == "eager"  # kernels off (the suite never compiles)


def test_chunks_split_every_16_tensors_of_a_large_model_and_gather_a_small_one() -> None:
    big = [786432, 262144, 1048576, 1048576, 512, 512] * 17  # 102 tensors, the 27M GPT's layer sizes
    bounds = _common.chunk_bounds(big)
    assert bounds[:2] == [(0, 16), (16, 32)] and bounds[-1] == (96, 102)
    assert _common.chunk_bounds([16384, 128, 128] * 23) == [(0, 69)]  # 0.4M elements: one region
    assert _common.chunk_bounds([1] * 300) == [(0, 128), (128, 256), (256, 300)]
    sizes = [5, 1, 2 ** 20, 3, 7]
    flat = [i for start, end in _common.chunk_bounds(sizes) for i in range(start, end)]
    assert flat == list(range(len(sizes)))  # every tensor in exactly one region, in order
