"""optbench.loop: the one training step, and proof that the timed and the memory pass both run it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from optbench import loop, registry, runner
from optbench.loop import StepWatch, TrainingStep
from optbench.schedule import Schedule


def model_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    batch = (torch.randn(32, 8) * 50, torch.randint(0, 3, (32,)))  # large inputs: large gradients
    return model, batch


def xent(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


class GradNorms(StepWatch):
    def __init__(self, model):
        self.model, self.norms = model, []

    def grads_ready(self):
        self.norms.append(float(torch.cat([p.grad.flatten() for p in self.model.parameters()]).norm()))


def test_step_clips_before_the_optimizer_sees_the_gradients():
    model, batch = model_and_batch()
    unclipped = GradNorms(model)
    TrainingStep(xent)(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, watch=unclipped)
    clipped = GradNorms(model)
    TrainingStep(xent, grad_clip=0.1)(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, watch=clipped)
    assert unclipped.norms[0] > 1.0
    assert clipped.norms[0] == pytest.approx(0.1, rel=1e-4)


def test_step_applies_the_schedule_and_leaves_no_gradients():
    model, batch = model_and_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    step = TrainingStep(xent, schedule=Schedule(warmup_fraction=0.5), total_steps=4)
    step(model, optimizer, batch, 1)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)  # step 1 of a 2-step warm-up
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="total_steps"):
        TrainingStep(xent, schedule=Schedule())


def test_autocast_is_a_no_op_without_a_dtype():
    with loop.autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")
    with loop.autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


def test_timed_and_memory_pass_run_the_same_step_clipping_included(monkeypatch):
    """run_one on a budget that clips: both passes call one TrainingStep, and clip in every step."""
    task = registry.get_task("digits-mlp")
    smoke = dataclasses.replace(task.budget("smoke"), grad_clip=0.25)
    monkeypatch.setitem(registry._TASKS, task.name,
                        dataclasses.replace(task, budgets={**task.budgets, "smoke": smoke}))
    calls: list[tuple[TrainingStep, int, str]] = []
    clip_norms: list[float] = []
    real_call, real_clip = TrainingStep.__call__, torch.nn.utils.clip_grad_norm_

    def spy(self, model, optimizer, batch, step=1, watch=loop.NO_WATCH):
        calls.append((self, step, "timed" if isinstance(watch, runner._Clock) else "memory"))
        return real_call(self, model, optimizer, batch, step, watch)

    def clip_spy(parameters, max_norm, *args, **kwargs):
        clip_norms.append(max_norm)
        return real_clip(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(TrainingStep, "__call__", spy)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_spy)
    record = runner.run_one("digits-mlp", "adamw", preset="smoke")
    assert record["status"] == "ok", record["error"]
    assert record["memory"]["peak_bytes"] > 0
    timed = [(s, k) for s, k, p in calls if p == "timed"]
    memory = [(s, k) for s, k, p in calls if p == "memory"]
    assert [k for _, k in timed] == list(range(1, smoke.steps + 1))
    assert [k for _, k in memory] == list(range(1, runner.MEMORY_PASS_STEPS + 1))
    # one step configuration for both passes: loss, autocast, clipping, schedule and its length
    assert {s for s, _ in timed} == {s for s, _ in memory} and len({s for s, _ in timed}) == 1
    assert timed[0][0].grad_clip == 0.25 and timed[0][0].schedule == smoke.schedule
    assert clip_norms == [0.25] * (smoke.steps + runner.MEMORY_PASS_STEPS)


def test_gradients_is_the_first_half_of_the_step():
    model, batch = model_and_batch()
    twin = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    twin.load_state_dict(model.state_dict())
    step = TrainingStep(xent, grad_clip=0.1)
    step.gradients(model, batch)
    seen = GradNorms(twin)
    step(twin, torch.optim.SGD(twin.parameters(), lr=0.0), batch, watch=seen)
    assert float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()) == pytest.approx(seen.norms[0])
