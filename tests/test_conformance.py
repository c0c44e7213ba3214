"""Conformance of every registered optimizer (timm-style: parametrized over the registry itself).

Each available optimizer, with its defaults and default learning rate, on the small model in
``conformance_model``:
1. measured state bytes after one step == ``spec.state_bytes(model, **hparams)`` exactly;
2. the loss on a fixed batch falls by at least 0.5% within 15 steps;
3. state_dict saved (through torch.save/torch.load), loaded into a fresh optimizer on a copy of
   the model, continued: parameters identical to an uninterrupted run;
4. parameters whose grad is None and all-zero gradients: no error, no NaN, untouched when None;
5. invalid hyperparameters raise ValueError naming the parameter.
An optimizer whose requirements are unmet is skipped with its reason.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conformance_model import TASK, build_model, conformance_hparams, fixed_batch, loss_fn

from optbench.loop import NO_WATCH, StepWatch, TrainingStep
from optbench.registry import optimizers
from optbench.spec import OptimizerSpec
from optbench.state import optimizer_state_bytes

NAMES = sorted(optimizers())
# At their default lr, Lion (1e-4) and MicroAdam drop 1.4-1.7% in 15 steps here, the rest 7-37%;
# a no-op or wrong-sign step gives <= 0.
LOSS_STEPS, LOSS_DROP = 15, 0.005

# hyperparameter -> (invalid value, text the error must contain); used when the spec has the key
# with a value of the same kind (a tuple-valued eps such as Adafactor's is not a number).
INVALID = {
    "betas": [((1.0, 0.999), "beta"), ((0.9, -0.1), "beta")],
    "beta": [(1.0, "beta")],
    "beta1": [(1.0, "beta1")],
    "beta2": [(-0.1, "beta2")],
    "eps": [(-1.0, "eps")],
    "weight_decay": [(-0.1, "weight_decay")],
    "momentum": [(1.5, "momentum")],
    "rank": [(0, "rank")],
    "update_proj_gap": [(0, "update_proj_gap")],
    "min_8bit_size": [(0, "min_8bit_size")],
    "beta2_decay": [(0.5, "beta2_decay")],
    "d": [(0.5, r"\bd\b")],
    "scale": [(0.0, "scale")],
    "proj_type": [("diagonal", "proj_type")],
    "proj": [("gaussian", "proj")],
    "scale_type": [("row", "scale_type")],
    "impl": [("magic", "impl")],
    "m": [(0, r"\bm\b")],
    "k_init": [(0.0, "k_init")],
    "quant_block_size": [(0, "quant_block_size")],
    "topk_block_size": [(0, "topk_block_size")],
    "decay_rate": [(0.5, "decay_rate")],
    "growth_rate": [(0.0, "growth_rate")],
    "weight_decay_mode": [("l3", "weight_decay_mode")],
    "block_size": [(0, "block_size")],
    "ns_steps": [(0, "ns_steps")],
    "adjust_lr_fn": [("moonlight", "adjust_lr_fn")],
}


def available_spec(name: str) -> OptimizerSpec:
    spec = optimizers()[name]
    reason = spec.unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(f"{name} unavailable: {reason}")
    return spec


@pytest.fixture
def hparams(request, tmp_path, monkeypatch) -> dict:
    """The spec's defaults. An optimizer that cannot build on this model for want of a rules file
    gets one written into tmp_path: through its `rules` hyperparameter when it takes one, else by
    pointing its module's RULES_DIR there (slimadam-snr reads per-task rules files from a folder).
    """
    spec = available_spec(request.param)
    hparams = conformance_hparams(spec, tmp_path, monkeypatch)
    if hparams is None:
        pytest.skip(f"{spec.name} cannot build on task {TASK!r} (no rules file it can be given)")
    return hparams


def spec_of(request) -> OptimizerSpec:
    return optimizers()[request.node.callspec.params["hparams"]]


def train(model, optimizer, steps: int, batch=None, watch: StepWatch = NO_WATCH) -> list[float]:
    """``steps`` runs of optbench's one training step on one batch (constant lr); the losses before each."""
    batch = batch if batch is not None else fixed_batch()
    train_step = TrainingStep(loss_fn)
    return [train_step(model, optimizer, batch, step, watch).item() for step in range(1, steps + 1)]


def params_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("hparams", NAMES, indirect=True, ids=NAMES)
def test_state_bytes_match_formula(hparams, request):
    spec = spec_of(request)
    model = build_model()
    optimizer = spec.build(model, spec.default_lr, **hparams)
    train(model, optimizer, 1)
    assert optimizer_state_bytes(optimizer) == spec.state_bytes(model, **hparams)


@pytest.mark.parametrize("hparams", NAMES, indirect=True, ids=NAMES)
def test_loss_falls(hparams, request):
    spec = spec_of(request)
    model = build_model()
    losses = train(model, spec.build(model, spec.default_lr, **hparams), LOSS_STEPS)
    assert all(map(torch.isfinite, torch.tensor(losses))), losses
    assert losses[-1] < (1 - LOSS_DROP) * losses[0], f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {LOSS_STEPS} steps"


@pytest.mark.parametrize("hparams", NAMES, indirect=True, ids=NAMES)
def test_state_dict_round_trip_continues_identically(hparams, request):
    spec = spec_of(request)
    base = build_model()
    straight = copy.deepcopy(base)
    train(straight, spec.build(straight, spec.default_lr, **hparams), 4)

    first = copy.deepcopy(base)
    optimizer = spec.build(first, spec.default_lr, **hparams)
    train(first, optimizer, 2)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed = copy.deepcopy(first)
    fresh = spec.build(resumed, spec.default_lr, **hparams)
    # weights_only=False: some wrapped packages keep Python objects (projectors) in their state.
    fresh.load_state_dict(torch.load(buffer, weights_only=False))
    train(resumed, fresh, 2)

    want, got = params_of(straight), params_of(resumed)
    differ = [n for n in want if not torch.equal(want[n], got[n])]
    assert not differ, f"parameters differ after resuming: {differ}"


@pytest.mark.parametrize("hparams", NAMES, indirect=True, ids=NAMES)
def test_none_and_zero_gradients(hparams, request):
    spec = spec_of(request)
    model = build_model()
    optimizer = spec.build(model, spec.default_lr, **hparams)
    named = list(model.named_parameters())
    never = {n for i, (n, _) in enumerate(named) if i % 3 == 0}  # grad stays None throughout
    before = params_of(model)

    class EditGradients(StepWatch):
        step = 0

        def grads_ready(self) -> None:
            self.step += 1
            for i, (name, p) in enumerate(named):
                if name in never:
                    p.grad = None
                elif i % 3 == 1 or self.step == 3:  # all-zero gradient (every tensor on the last step)
                    p.grad.zero_()

    train(model, optimizer, 3, watch=EditGradients())
    after = params_of(model)
    bad = [n for n, p in after.items() if not torch.isfinite(p).all()]
    assert not bad, f"non-finite parameters: {bad}"
    moved = [n for n in never if not torch.equal(before[n], after[n])]
    assert not moved, f"parameters with grad None changed: {moved}"


@pytest.mark.parametrize("hparams", NAMES, indirect=True, ids=NAMES)
def test_invalid_hyperparameters_raise(hparams, request):
    spec = spec_of(request)
    model = build_model()
    cases = [("lr", -1e-3, "lr")]
    for key, bad_values in INVALID.items():
        default = spec.defaults.get(key)
        if default is None or isinstance(default, (tuple, list)) != isinstance(bad_values[0][0], tuple):
            continue
        cases += [(key, bad, text) for bad, text in bad_values]
    for key, bad, text in cases:
        lr = bad if key == "lr" else spec.default_lr
        with pytest.raises(ValueError, match=text):
            spec.build(model, lr, **(hparams if key == "lr" else {**hparams, key: bad}))
