"""Muon for hidden matrices, AdamW for the rest: the split, the math of each part, one set of groups."""

from __future__ import annotations

import copy

import pytest
import torch
from conformance_model import build_model, fixed_batch, loss_fn
from torch import nn

from optbench.optimizers.muon import MuonWithAdamW, build_muon, muon_names, muon_state_bytes
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
