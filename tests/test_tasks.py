"""Every registered task, both tiers, under the smoke preset on CPU; data, roles, options, determinism."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from optbench.tasks import cifar10_data
from optbench.tasks._text import EVAL_FRACTION, cpython_topics_bytes, load_corpus

from optbench.model_info import ROLES, get_model_info
from optbench.registry import get_optimizer, tasks

TASKS = sorted(tasks())
DATA_DIR_TASKS = [n for n in TASKS if "data_dir" in tasks()[n].options]
TEXT_TASKS = [n for n in TASKS if "text_file" in tasks()[n].options]


def smoke_instance(name: str, tmp_path, seed: int = 0, **options):
    spec = tasks()[name]
    if "data_dir" in spec.options:
        options.setdefault("data_dir", str(tmp_path))  # an empty dir: never the user's real cache
    return spec.instantiate("smoke", seed, "cpu", **options)


def test_gpu_tier_tasks_declare_the_gpu_tier():  # that every designed task is registered: test_registry
    assert {tasks()[n].tier for n in ("cifar10-resnet18", "gpt2-small", "vit-s-cifar10")} == {"gpu"}


@pytest.mark.parametrize("name", TASKS)
def test_smoke_steps_learn_and_evaluate(name, tmp_path):
    inst = smoke_instance(name, tmp_path)
    opt = get_optimizer("adamw").build(inst.model, 3e-3)
    batch = next(inst.batches)
    losses = []
    for _ in range(4):  # the same batch four times: the loss must fall if gradients reach the weights
        loss = inst.loss_fn(inst.model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0], losses
    loss = inst.loss_fn(inst.model, next(inst.batches))
    assert math.isfinite(loss.item())
    result = inst.evaluate(inst.model)
    assert math.isfinite(result.metric) and math.isfinite(result.loss)
    assert inst.model.training, "evaluate must give the model back in training mode"


@pytest.mark.parametrize("name", TASKS)
def test_roles_cover_every_parameter(name, tmp_path):
    inst = smoke_instance(name, tmp_path)
    info = get_model_info(inst.model)
    info.check_covers(inst.model)
    assert set(info.roles.values()) <= set(ROLES)
    assert info.task == name
    assert info.d_model and info.n_heads


@pytest.mark.parametrize("module, name", [("cifar10_resnet18", "cifar10-resnet18"), ("vit_s_cifar10", "vit-s-cifar10"),
                                          ("gpt2_small", "gpt2-small")])
def test_full_size_gpu_models_have_roles(module, name):
    # Built on the meta device: the full shapes without allocating 163M parameters.
    with torch.device("meta"):
        model = importlib.import_module(f"optbench.tasks.{module}").build_model()
    info = get_model_info(model)
    info.check_covers(model)
    n_params = sum(p.numel() for p in model.parameters())
    assert {"cifar10-resnet18": 11_173_962, "vit-s-cifar10": 21_341_578, "gpt2-small": 163_109_376}[name] == n_params


def test_transformer_roles_are_the_expected_ones(tmp_path):
    roles = get_model_info(smoke_instance("topics-gpt", tmp_path).model).roles
    assert roles["blocks.0.attn.q_proj.weight"] == "query"
    assert roles["blocks.0.attn.k_proj.weight"] == "key"
    assert roles["blocks.0.attn.v_proj.weight"] == "value"
    assert roles["blocks.0.attn.o_proj.weight"] == "attn_out"
    assert roles["blocks.0.mlp.fc_in.weight"] == "mlp_in"
    assert roles["blocks.0.mlp.fc_out.weight"] == "mlp_out"
    assert (roles["wte.weight"], roles["wpe.weight"], roles["lm_head.weight"]) == ("embedding", "pos_embedding", "head")
    assert roles["ln_f.weight"] == roles["blocks.0.ln_1.bias"] == "norm"
    assert roles["blocks.0.attn.q_proj.bias"] == "bias"
    vit = get_model_info(smoke_instance("digits-vit", tmp_path).model).roles
    assert (vit["patch_embed.weight"], vit["classifier.weight"]) == ("conv_in", "classifier")
    cnn = get_model_info(smoke_instance("cifar10-resnet18", tmp_path).model).roles
    assert (cnn["conv1.weight"], cnn["layer1.0.conv1.weight"], cnn["fc.weight"]) == ("conv_in", "conv", "classifier")


@pytest.mark.parametrize("name", DATA_DIR_TASKS)
@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_missing_data_names_the_download_command(name, preset, tmp_path):
    with pytest.raises(cifar10_data.MissingDataError) as err:
        tasks()[name].instantiate(preset, 0, "cpu", data_dir=str(tmp_path))
    assert f"python -m tasks.cifar10_data --download --data-dir {tmp_path}" in str(err.value)


@pytest.mark.parametrize("name", DATA_DIR_TASKS)
def test_smoke_stand_in_is_declared_in_notes(name, tmp_path):
    inst = smoke_instance(name, tmp_path)
    assert any("stand-in" in note for note in inst.notes)
    assert any(note.startswith("smoke:") for note in inst.notes)
    x, y = next(inst.batches)
    assert x.shape == (tasks()[name].budget("smoke").batch_size, 3, 32, 32)


def test_real_cifar_layout_is_read(tmp_path):
    # A tiny fake dataset in torchvision's pickle layout stands for the real files.
    import pickle

    import numpy as np

    root = tmp_path / cifar10_data.FOLDER
    root.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        entry = {"data": np.full((4, 3072), i, dtype=np.uint8), "labels": [i % 10] * 4}
        (root / name).write_bytes(pickle.dumps(entry))
    x_tr, y_tr, x_te, y_te = cifar10_data.load(tmp_path)
    assert x_tr.shape == (20, 3, 32, 32) and x_te.shape == (4, 3, 32, 32)
    assert x_te.dtype == torch.uint8 and int(x_te[0, 0, 0, 0]) == 5 and y_tr.tolist()[:5] == [0, 0, 0, 0, 1]
    inst = tasks()["cifar10-resnet18"].instantiate("smoke", 0, "cpu", data_dir=str(tmp_path))
    assert not any("stand-in" in note for note in inst.notes)


def test_augment_is_a_crop_of_the_padded_image_or_its_mirror():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = cifar10_data.augment(x, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    for i in range(2):
        crops = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)


@pytest.mark.parametrize("name", TEXT_TASKS)
def test_text_file_option_replaces_the_corpus(name, tmp_path):
    path = tmp_path / "mine.txt"
    path.write_bytes(b"xyz" * 5000)
    inst = smoke_instance(name, tmp_path, text_file=str(path))
    x, y = next(inst.batches)
    assert set(x.unique().tolist()) <= {ord("x"), ord("y"), ord("z")}
    assert any("mine.txt" in note for note in inst.notes)
    assert math.isfinite(inst.evaluate(inst.model).metric)


def test_text_file_errors_name_the_file(tmp_path):
    spec = tasks()["topics-gpt"]
    with pytest.raises(ValueError, match="does not exist"):
        spec.instantiate("smoke", 0, text_file=str(tmp_path / "absent.txt"))
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ValueError, match="short.txt.*needs at least"):
        spec.instantiate("smoke", 0, text_file=str(short))
    with pytest.raises(ValueError, match="data_dir"):
        spec.instantiate("smoke", 0, data_dir=str(tmp_path))


def test_cpython_corpus_and_split_are_fixed():
    data = cpython_topics_bytes()
    assert 400_000 < len(data) < 600_000
    train, held_out = load_corpus(None, 128)
    assert len(held_out) == int(len(data) * EVAL_FRACTION)
    assert bytes(held_out[:100].tolist()) == data[len(train) : len(train) + 100]


@pytest.mark.parametrize("name", TASKS)
def test_same_seed_same_batches_and_init(name, tmp_path):
    a, b, c = (smoke_instance(name, tmp_path, seed=s) for s in (0, 0, 1))
    for (xa, ya), (xb, yb) in zip([next(a.batches) for _ in range(2)], [next(b.batches) for _ in range(2)]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize("name", TASKS)
def test_default_lrs_name_registered_optimizers(name):
    from optbench.registry import optimizers

    spec = tasks()[name]
    assert set(spec.default_lrs) <= set(optimizers()), set(spec.default_lrs) - set(optimizers())
    assert all(lr > 0 for lr in spec.default_lrs.values())
    assert {"adamw", "sgd"} <= set(spec.default_lrs)
