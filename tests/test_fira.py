"""Fira: GaLore's projected state on the hidden matrices, with a full-rank update."""

from __future__ import annotations

import pytest
import torch
from conformance_model import build_model, fixed_batch, loss_fn

from optbench.registry import get_optimizer

HIDDEN = {"q.weight", "k.weight", "v.weight", "out.weight", "fc_in.weight", "fc_out.weight"}


def built(**hparams):
    spec = get_optimizer("fira")
    reason = spec.unavailable_reason("cpu")
    if reason:
        pytest.skip(reason)
    model = build_model()
    return model, spec.build(model, 1e-2, **spec.resolve_hparams(hparams))


def test_projects_the_hidden_matrices_and_updates_them_at_full_rank():
    model, opt = built(rank=2, weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_fn(model, fixed_batch()).backward()
    opt.step()
    projected = {n for n, p in model.named_parameters() if "projector" in opt.state[p]}
    assert projected == HIDDEN
    for name in HIDDEN:
        p = dict(model.named_parameters())[name]
        assert opt.state[p]["exp_avg"].shape[1] == 2 or opt.state[p]["exp_avg"].shape[0] == 2
        # GaLore's update lies in the rank-2 subspace; Fira adds the scaled residual.
        assert torch.linalg.matrix_rank(p.detach() - before[name]) > 2, name


def test_alpha_must_be_positive():
    with pytest.raises(ValueError, match="alpha"):
        built(alpha=0.0)
