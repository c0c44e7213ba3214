"""What the wrappers of outside packages add beyond the conformance suite: the Adam-mini
partition from declared roles, the role-selected GaLore/APOLLO projection, bitsandbytes'
8-bit threshold and its singleton reset."""

from __future__ import annotations

import pytest
import torch
from conformance_model import D_MODEL, N_HEADS, ROLES, build_model, fixed_batch, loss_fn

from optbench.model_info import ModelInfo
from optbench.registry import get_optimizer


def built(name: str, model=None, **hparams):
    spec = get_optimizer(name)
    reason = spec.unavailable_reason("cpu")
    if reason:
        pytest.skip(f"{name} unavailable: {reason}")
    model = model if model is not None else build_model()
    return model, spec.build(model, spec.default_lr, **spec.resolve_hparams(hparams))


def one_step(model, optimizer) -> None:
    optimizer.zero_grad()
    loss_fn(model, fixed_batch()).backward()
    optimizer.step()


def test_adam_mini_blocks_follow_roles():
    model, opt = built("adam-mini")
    one_step(model, opt)
    state = {name: opt.state[p] for name, p in model.named_parameters()}
    assert state["q.weight"]["vmean"].shape == (N_HEADS, 1)  # one v per head
    assert state["k.weight"]["vmean"].shape == (N_HEADS, 1)
    assert state["v.weight"]["vmean"].shape == (D_MODEL, 1)  # one v per output row
    assert state["tok.weight"]["vmean"].shape == (128, 1)  # one v per token
    assert state["ln1.weight"]["vmean"].shape == ()  # one v per tensor
    assert state["q.bias"]["v"].shape == (D_MODEL,)  # plain Adam
    decay = {g["name"].split(".")[0]: g["weight_decay"] for g in opt.param_groups}
    assert decay["norm"] == 0.0 and decay["bias"] == 0.0 and decay["q_proj"] > 0


def test_adam_mini_raises_when_the_package_partition_degrades():
    from optbench.optimizers.adam_mini import check_partition

    model, opt = built("adam-mini")
    opt.wqk_names.clear()  # as if a package release stopped recognising query/key names
    with pytest.raises(ValueError, match="partition degraded"):
        check_partition(opt, model)


def test_adam_mini_rejects_heads_that_do_not_split():
    model = build_model()
    info = ModelInfo(roles=dict(ROLES), d_model=D_MODEL, n_heads=3, task="conformance")
    object.__setattr__(model, "_optbench_info", info)
    with pytest.raises(ValueError, match="n_heads"):
        built("adam-mini", model)


def test_adam_mini_runs_in_one_process_when_cuda_reports_several_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    model, opt = built("adam-mini")
    assert opt.world_size == 1
    one_step(model, opt)  # would all_gather without an initialised process group otherwise


@pytest.mark.parametrize("name", ["galore", "apollo", "apollo-mini"])
def test_low_rank_projects_exactly_the_attention_and_mlp_weights(name):
    model, opt = built(name)
    one_step(model, opt)
    projected = {n for n, p in model.named_parameters() if "projector" in opt.state[p]}
    assert projected == {"q.weight", "k.weight", "v.weight", "out.weight", "fc_in.weight", "fc_out.weight"}


def test_apollo_mini_is_rank_one_tensor_scaled():
    _, opt = built("apollo-mini")
    group = next(g for g in opt.param_groups if "rank" in g)
    assert (group["rank"], group["scale_type"], group["scale"]) == (1, "tensor", 128.0)


def test_adam8bit_threshold_and_fresh_manager():
    from bitsandbytes.optim import GlobalOptimManager

    model = build_model()
    GlobalOptimManager.get_instance().override_config(model.tok.weight, "optim_bits", 32)
    model, opt = built("adam8bit", model)
    one_step(model, opt)
    assert opt.state[model.tok.weight]["state1"].dtype == torch.uint8  # 4096 elements: 8-bit, override gone
    assert opt.state[model.conv.weight]["state1"].dtype == torch.float32  # 3072 < 4096: float32


def test_galore_rank_below_one_is_refused():
    with pytest.raises(ValueError, match="rank"):
        built("galore", rank=0)


def test_role_metadata_is_required_for_projection():
    model = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="metadata"):
        built("galore", model)


@pytest.mark.parametrize("name, hparams", [("galore", {"rank": 4}), ("apollo", {"rank": 4, "proj": "svd"})])
def test_svd_projectors_hold_only_their_rank(name, hparams):
    # The packages slice Vh[:r] / U[:, :r] out of a full SVD; the wrapper copies the slice out.
    model, opt = built(name, **hparams)
    one_step(model, opt)
    for state in opt.state.values():
        if "projector" in state:
            matrix = state["projector"].ortho_matrix
            assert 4 in matrix.shape
            assert matrix.untyped_storage().nbytes() == matrix.numel() * matrix.element_size()
