"""Adam-mini: the partition is checked parameter by parameter, and decay follows the policy, not the package's names."""

from __future__ import annotations

import pytest
from conformance_model import D_MODEL, N_HEADS, ROLES, build_model

from optbench.model_info import ModelInfo
from optbench.param_groups import decayed_names
from optbench.registry import get_optimizer


def built(model=None, **hparams):
    spec = get_optimizer("adam-mini")
    reason = spec.unavailable_reason("cpu")
    if reason:
        pytest.skip(reason)
    model = model if model is not None else build_model()
    return model, spec.build(model, 1e-3, **spec.resolve_hparams(hparams))


def decayed_by_optimizer(model, opt) -> set[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}


def test_a_swap_that_keeps_the_counts_is_caught_and_named():
    from optbench.optimizers.adam_mini import check_partition, package_partition

    model, opt = built()
    kinds_before = sorted(package_partition(opt).values())
    # Value now routed per head and query per row: as many head and row blocks as before.
    opt.wqk_names.difference_update({"q_proj"})
    opt.wqk_names.add("v_proj")
    opt.wv_names.add("q_proj")
    assert sorted(package_partition(opt).values()) == kinds_before
    with pytest.raises(ValueError, match=r"partition degraded: q\.weight \(query\): expected head, package made row"
                                          r"; v\.weight \(value\): expected row, package made head"):
        check_partition(opt, model)


def test_decays_exactly_the_policy_set():
    model, opt = built()
    assert decayed_by_optimizer(model, opt) == decayed_names(model)


def test_decay_follows_the_policy_where_the_package_names_would_not():
    # A 1-D parameter of role "other": the policy's shape rule does not decay it; the package, given
    # a name without "norm", "ln" or "bias", would.
    model = build_model()
    roles = {**ROLES, "ln1.weight": "other"}
    object.__setattr__(model, "_optbench_info", ModelInfo(roles=roles, d_model=D_MODEL, n_heads=N_HEADS,
                                                          task="conformance"))
    model, opt = built(model)
    assert "ln1.weight" not in decayed_names(model)
    assert decayed_by_optimizer(model, opt) == decayed_names(model)
