"""Muon for hidden matrices, AdamW for the rest: the split, the math of each part, one set of groups."""

from __future__ import annotations

import copy

import pytest
import torch
from conformance_model import build_model, fixed_batch, loss_fn
from optbench.optimizers.muon import MuonWithAdamW, build_muon, muon_names, muon_state_bytes
from torch import nn

from optbench.param_groups import split_decay
from optbench.schedule import apply_lr
from optbench.state import optimizer_state_bytes

HIDDEN = {"q.weight", "k.weight", "v.weight", "out.weight", "fc_in.weight", "fc_out.weight"}


def step(model, opt, batch=None) -> None:
    opt.zero_grad(set_to_none=True)
    loss_fn(model, batch if batch is not None else fixed_batch()).backward()
    opt.step()


def test_hidden_matrices_go_to_muon_by_role():
    model = build_model()
    assert muon_names(model) == HIDDEN  # not the embeddings, the head, the conv, norms or biases
    opt = build_muon(model, 1e-3)
    step(model, opt)
    for name, p in model.named_parameters():
        keys = set(opt.state[p])
        assert keys == ({"momentum_buffer"} if name in HIDDEN else {"step", "exp_avg", "exp_avg_sq"}), name
    assert [g["algorithm"] for g in opt.param_groups] == ["muon", "adamw", "adamw"]


def test_without_roles_2d_non_embedding_tensors_go_to_muon():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 10))
    assert muon_names(model) == {"1.weight", "3.weight"}


def test_each_part_steps_exactly_as_its_torch_optimizer():
    base = build_model()
    combined, separate = copy.deepcopy(base), copy.deepcopy(base)
    opt = build_muon(combined, 2e-3, weight_decay=0.1)

    hidden = muon_names(separate)
    decayed, kept = split_decay(separate)
    muon = torch.optim.Muon([p for n, p in decayed if n in hidden], lr=2e-3, weight_decay=0.1,
                            adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([{"params": [p for n, p in decayed if n not in hidden], "weight_decay": 0.1},
                               {"params": [p for _, p in kept], "weight_decay": 0.0}], lr=2e-3, fused=True)
    for seed in range(3):
        batch = fixed_batch(seed)
        step(combined, opt, batch)
        for o in (muon, adamw):
            o.zero_grad(set_to_none=True)
        loss_fn(separate, batch).backward()
        muon.step()
        adamw.step()
    for (name, a), b in zip(combined.named_parameters(), separate.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_schedule_reaches_both_parts_after_a_state_dict_load():
    model = build_model()
    opt = build_muon(model, 1e-3)
    step(model, opt)
    fresh = build_muon(model, 1e-3)
    fresh.load_state_dict(opt.state_dict())
    apply_lr(fresh, 0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step(model, fresh)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    apply_lr(fresh, 1.0)
    step(model, fresh)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert HIDDEN <= moved and "tok.weight" in moved


def test_state_bytes_split_between_the_parts():
    model = build_model()
    opt = build_muon(model, 1e-3)
    step(model, opt)
    muon_bytes = sum(4 * p.numel() for n, p in model.named_parameters() if n in HIDDEN)
    adamw_bytes = sum(8 * p.numel() + 4 for n, p in model.named_parameters() if n not in HIDDEN)
    assert optimizer_state_bytes(opt) == muon_bytes + adamw_bytes == muon_state_bytes(model)


def test_bad_adjust_lr_fn_names_the_accepted_ones():
    with pytest.raises(ValueError, match="match_rms_adamw, original, spectral_unclamped"):
        build_muon(build_model(), 1e-3, adjust_lr_fn="moonlight")
    with pytest.raises(ValueError, match="ns_steps"):
        build_muon(build_model(), 1e-3, ns_steps=0)


def test_is_one_optimizer():
    assert isinstance(build_muon(build_model(), 1e-3), (MuonWithAdamW, torch.optim.Optimizer))


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (48, 48)])
def test_match_rms_adamw_gives_an_update_rms_near_a_fifth_of_lr_whatever_the_shape(shape):
    # Moonlight's rule: 0.2 * sqrt(max(A, B)) x lr on an orthogonalized update (RMS about 1/sqrt(max(A, B)))
    # gives an update RMS of about 0.2 lr, AdamW's typical one: so the task's AdamW lr serves both parts.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(shape[1], shape[0], bias=False))
    lr = 1e-2
    opt = build_muon(model, lr, weight_decay=0.0)
    before = model[0].weight.detach().clone()
    model[0].weight.grad = torch.randn(shape)
    opt.step()
    rms = (model[0].weight.detach() - before).square().mean().sqrt().item()
    assert 0.15 * lr < rms < 0.25 * lr, rms / lr  # "original" gives 0.11-0.23 lr on these shapes
