"""optbench.memory: the tracked peak and its breakdown against exact tensor counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optbench.memory as memory
from optbench.loop import TrainingStep
from optbench.memory import CATEGORIES, measure_optimizer_steps, measure_training_memory, to_record
from optbench.registry import get_optimizer
from optbench.state import optimizer_state_bytes, param_bytes


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 10)
    )


def stream(n: int = 4, batch: int = 32):
    """Batches made one at a time, so only the batch in use is alive (as with a task's iterator)."""
    gen = torch.Generator().manual_seed(1)
    for _ in range(n):
        yield torch.randn(batch, 1, 8, 8, generator=gen), torch.randint(0, 10, (batch,), generator=gen)


def batches(n: int = 4, batch: int = 32) -> list:
    return list(stream(n, batch))


def xent(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def build(name: str, model: nn.Module, **hparams) -> torch.optim.Optimizer:
    spec = get_optimizer(name)
    return spec.build(model, spec.default_lr, **spec.resolve_hparams(hparams))


def test_adamw_peak_breakdown_matches_exact_counts():
    model = mlp()
    opt = build("adamw", model)  # the spec's default: fused
    report = measure_training_memory(model, opt, stream(), xent, steps=2)
    p, s = param_bytes(model.parameters()), optimizer_state_bytes(opt)
    cat = report.peak_by_category
    assert set(cat) == set(CATEGORIES)
    assert cat["params"] == p
    assert cat["optimizer"] == s == 2 * p + 4 * len(list(model.parameters()))
    # fused AdamW allocates no step scratch, so the peak falls in step 2's backward: the first
    # layer's gradients are not made yet and activations are still live.
    assert 0 < cat["grads"] <= p
    assert cat["activations"] > 0
    assert sum(cat.values()) == report.peak_bytes
    # at the end of step 2's backward params, all grads and the state coexist: the peak is at least that
    assert report.peak_bytes >= 2 * p + s
    assert report.cuda_max_allocated is None and report.cuda_max_reserved is None
    assert report.method.startswith("torch MemTracker")
    assert report.optimizer_state_bytes == s


def largest_group_bytes(opt: torch.optim.Optimizer) -> int:
    """foreach AdamW updates one param group at a time: its scratch is one copy of the largest group
    (the weights, in the decay group; biases sit in the no-decay group)."""
    return max(param_bytes(group["params"]) for group in opt.param_groups)


def test_foreach_adamw_peak_is_in_step_with_full_grads_and_one_group_of_scratch():
    model = mlp()
    opt = build("adamw", model, impl="foreach")
    report = measure_training_memory(model, opt, stream(), xent, steps=2)
    p, scratch = param_bytes(model.parameters()), largest_group_bytes(opt)
    cat = report.peak_by_category
    assert cat["params"] == p
    assert cat["grads"] == p
    assert cat["optimizer"] == optimizer_state_bytes(opt)
    # scratch of the foreach step is filed as temporaries, not as optimizer state
    assert report.raw_by_category["optimizer_scratch"] == scratch
    assert cat["temporaries"] >= scratch


def test_lazily_created_state_counts_as_optimizer():
    model = mlp()
    opt = build("adamw", model)
    assert optimizer_state_bytes(opt) == 0  # torch creates Adam's state in the first step
    report = measure_training_memory(model, opt, stream(), xent, steps=1)
    assert report.peak_by_category["optimizer"] == optimizer_state_bytes(opt) > 0
    assert report.peak_by_category["grads"] == param_bytes(model.parameters())


def test_sgd_without_momentum_has_no_optimizer_memory():
    model = mlp()
    opt = build("sgd", model, momentum=0.0)
    report = measure_training_memory(model, opt, stream(), xent)
    assert report.peak_by_category["optimizer"] == 0
    assert report.peak_by_category["params"] == param_bytes(model.parameters())


class _ExtraStateSGD(torch.optim.SGD):
    """SGD that keeps one tensor outside ``.state``, reported through the optbench hook."""

    def __init__(self, params):
        params = list(params)
        super().__init__(params, lr=0.1)
        self.sidecar = torch.zeros(1000)  # made before tracking starts

    def optbench_extra_state(self):
        return [self.sidecar]


def test_state_outside_dot_state_counts_through_the_hook():
    model = mlp()
    opt = _ExtraStateSGD(model.parameters())
    report = measure_training_memory(model, opt, stream(), xent)
    assert report.peak_by_category["optimizer"] == 4000


def test_buffers_are_filed_with_params_and_inputs_with_activations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    opt = build("sgd", model)
    report = measure_training_memory(model, opt, stream(), xent)
    raw = report.raw_by_category
    buf = sum(b.numel() * b.element_size() for b in model.buffers())
    assert raw["buffers"] == buf > 0
    assert report.peak_by_category["params"] == param_bytes(model.parameters()) + buf
    assert raw["inputs"] == 32 * 64 * 4 + 32 * 8  # the current batch only: x float32, y int64
    assert report.peak_by_category["activations"] >= raw["inputs"]


def test_list_of_batches_too_short_is_an_error():
    model = mlp()
    with pytest.raises(ValueError, match="batches ran out after 1"):
        measure_training_memory(model, build("sgd", model), batches(1), xent, steps=2)


@pytest.mark.parametrize("steps", [0, -1, 1.5])
def test_bad_steps_is_an_error(steps):
    model = mlp()
    with pytest.raises(ValueError, match="steps must be an integer"):
        measure_training_memory(model, build("sgd", model), batches(), xent, steps=steps)


def test_tracker_failure_falls_back_and_says_so(monkeypatch):
    def broken(self):
        raise RuntimeError("simulated tracker failure")

    monkeypatch.setattr(memory._PeakTracker, "__enter__", broken)
    model = mlp()
    opt = build("adamw", model)
    report = measure_training_memory(model, opt, batches(), xent)  # a list: read again from its start
    p = param_bytes(model.parameters())
    assert report.method.startswith("fallback (MemTracker failed: RuntimeError: simulated tracker failure)")
    assert report.peak_by_category["params"] == p
    assert report.peak_by_category["grads"] == p
    assert report.peak_by_category["optimizer"] == optimizer_state_bytes(opt)
    assert report.peak_by_category["activations"] > 0
    assert report.peak_bytes == sum(report.peak_by_category.values())


def test_to_record_has_the_design_keys():
    model = mlp()
    report = measure_training_memory(model, build("adam", model), stream(), xent)
    rec = to_record(report)
    assert set(rec) == {"peak_bytes", "peak_by_category", "method", "cuda_max_allocated", "cuda_max_reserved"}
    assert set(rec["peak_by_category"]) == set(CATEGORIES)
    assert rec["peak_bytes"] == report.peak_bytes
    assert all(isinstance(v, int) for v in rec["peak_by_category"].values())


def test_autocast_bf16_runs_and_reports():
    model = mlp()
    report = measure_training_memory(model, build("adamw", model), stream(),
                                     TrainingStep(xent, autocast_dtype=torch.bfloat16))
    # bf16 casts of the fp32 weights are activations/temporaries, never params
    assert report.peak_by_category["params"] == param_bytes(model.parameters())


def test_optimizer_steps_alone_show_state_and_step_scratch():
    model = mlp()
    opt = build("adamw", model, impl="foreach")
    report = measure_optimizer_steps(model, opt, steps=2)
    p, s = param_bytes(model.parameters()), optimizer_state_bytes(opt)
    cat = report.peak_by_category
    assert cat["grads"] == p  # a zero gradient per parameter, as after backward
    assert cat["optimizer"] == s > 0
    assert cat["temporaries"] == largest_group_bytes(opt)  # foreach AdamW's scratch, one group at a time
    assert report.peak_bytes == 2 * p + s + largest_group_bytes(opt)


def test_the_measured_model_is_freed_afterwards():
    """ModTracker's backward hooks once kept every parameter of a transformer alive after the
    memory pass (a reference cycle through autograd's C++ nodes), one model per pass; on CUDA
    the allocator's peaks then rose cell after cell in a worker. The peak must not change."""
    import gc
    import weakref

    from optbench.tasks._transformer import GPT

    def tokens(n: int):
        gen = torch.Generator().manual_seed(2)
        for _ in range(n):
            yield torch.randint(0, 64, (4, 17), generator=gen)

    def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    def measured() -> tuple[list[weakref.ref], int]:
        torch.manual_seed(0)
        model = GPT(vocab=64, context=16, n_layers=2, d_model=32, n_heads=4, d_mlp=64)
        opt = build("adamw", model)
        report = measure_training_memory(model, opt, tokens(2), lm_loss, steps=2)
        return [weakref.ref(p) for p in model.parameters()], report.peak_bytes

    refs, peak = measured()
    gc.collect()
    alive = sum(r() is not None for r in refs)
    assert alive == 0, f"{alive} of {len(refs)} parameters outlived the memory pass"
    assert measured()[1] == peak  # a second pass in the same process sees the same peak
