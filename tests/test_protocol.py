"""The protocol reaches every registered optimizer: the lr schedule and the weight-decay policy.

Parametrized over the registry, so an optimizer is checked the moment it is registered:
- the schedule: the runner sets each param group's lr; at factor 0 a step with real gradients
  leaves every parameter as it was, at factor 1 it moves them — so the update reads the lr
  the schedule set, wrapped packages included;
- the decay policy: with all-zero gradients and weight decay on, one step changes exactly the
  tensors ``optbench.param_groups`` declares decayed (matrices and embeddings), and no other.
"""

from __future__ import annotations

import pytest
import torch
from conformance_model import build_model, conformance_hparams, fixed_batch, loss_fn

from optbench.param_groups import decayed_names, decays
from optbench.registry import optimizers
from optbench.schedule import CONSTANT, Schedule, apply_lr

NAMES = sorted(optimizers())
WEIGHT_DECAY = 0.1


@pytest.fixture
def build(tmp_path, monkeypatch):
    def _build(name: str, model, **hparams):
        spec = optimizers()[name]
        reason = spec.unavailable_reason("cpu")
        if reason:
            pytest.skip(f"{name}: {reason}")
        defaults = conformance_hparams(spec, tmp_path, monkeypatch)
        if defaults is None:
            pytest.skip(f"{name} cannot build on the conformance model")
        return spec.build(model, spec.default_lr, **{**defaults, **hparams})
    return _build


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", NAMES)
def test_schedule_reaches_the_update(name, build):
    model = build_model()
    optimizer = build(name, model)
    batch = fixed_batch()
    # A first real step at full lr, so that optimizers which skip or warm up their first step are past it.
    loss_fn(model, batch).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    apply_lr(optimizer, 0.0)
    assert all(float(g["lr"]) == 0.0 for g in optimizer.param_groups)
    before = _snapshot(model)
    loss_fn(model, batch).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert not moved, f"{name}: lr set to 0 by the schedule, yet a step moved {moved}"

    apply_lr(optimizer, 1.0)
    assert all(float(g["lr"]) == pytest.approx(g["initial_lr"]) for g in optimizer.param_groups)
    loss_fn(model, batch).backward()
    optimizer.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert moved, f"{name}: lr restored by the schedule, yet a step moved nothing"


@pytest.mark.parametrize("name", NAMES)
def test_weight_decay_policy(name, build):
    spec = optimizers()[name]
    if "weight_decay" not in spec.defaults:
        pytest.skip(f"{name} declares no weight_decay hyperparameter")
    model = build_model()
    optimizer = build(name, model, weight_decay=WEIGHT_DECAY)
    before = _snapshot(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    nonfinite = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert not nonfinite, f"{name}: zero gradients gave non-finite parameters {nonfinite}"
    expected = decayed_names(model)
    assert changed == expected, (
        f"{name}: decayed {sorted(changed)}, the policy decays {sorted(expected)} "
        f"(missing {sorted(expected - changed)}, extra {sorted(changed - expected)})"
    )


def test_policy_by_role_and_by_shape():
    model = build_model()
    names = decayed_names(model)
    assert {"tok.weight", "pos.weight", "q.weight", "fc_in.weight", "head.weight", "conv.weight"} <= names
    assert not {n for n in names if n.endswith(".bias") or n.startswith("ln")}
    # Without roles the shape rule decides: matrices decay, vectors do not.
    assert decays("w", torch.nn.Parameter(torch.zeros(3, 3)), None)
    assert not decays("g", torch.nn.Parameter(torch.zeros(3)), None)
    assert not decays("w", torch.nn.Parameter(torch.zeros(3, 3)), {"w": "norm"})


def test_schedule_shape():
    s = Schedule(warmup_fraction=0.1, decay="cosine", floor=0.1)
    factors = [s.factor(step, 100) for step in range(1, 101)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)  # linear warm-up over 10 steps
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))  # then non-increasing
    assert factors[-1] == pytest.approx(0.1)  # to the floor
    assert Schedule(decay="linear", floor=0.0).factor(100, 100) == pytest.approx(0.0)
    assert CONSTANT.factor(1, 100) == CONSTANT.factor(100, 100) == 1.0
    with pytest.raises(ValueError, match="decay"):
        Schedule(decay="step")


def test_apply_lr_fills_tensor_lrs_in_place():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.5)
    lr = torch.tensor(0.5)
    opt.param_groups[0]["lr"] = lr
    apply_lr(opt, 0.2)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.1)
