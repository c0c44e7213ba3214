"""The GPU-tier tasks: safe CIFAR-10 loading, no per-batch host copies, held-out loss first, margins, any preset."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
import torch
from fake_cuda import fake_cuda
from optbench.tasks import cifar10_data, gpt2_small

from optbench.errors import UsageError
from optbench.registry import GPU_PRESETS, PRESETS, get_task, tasks

GPU_TASKS = sorted(name for name, spec in tasks().items() if spec.tier == "gpu")
needs_cuda_build = pytest.mark.skipif(not torch.backends.cuda.is_built(), reason="no CUDA build of torch to fake")


class _RunsACommand:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_batches(root, entry_for):
    root.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (root / name).write_bytes(pickle.dumps(entry_for(i), protocol=2))


def test_a_cifar_file_that_would_run_code_is_refused_by_name(tmp_path):
    marker = tmp_path / "ran"
    _write_batches(tmp_path / cifar10_data.FOLDER,
                   lambda i: {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "x": _RunsACommand(marker)})
    with pytest.raises(pickle.UnpicklingError, match=r"data_batch_1: refusing to load (posix|os)\.system"):
        cifar10_data.load(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_in_any_pickle_protocol_still_load(tmp_path, protocol):
    root = tmp_path / cifar10_data.FOLDER
    root.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        entry = {"batch_label": f"batch {i}", "data": np.full((3, 3072), i, np.uint8), "labels": [i] * 3,
                 "filenames": [b"a.png", b"b.png", b"c.png"]}
        (root / name).write_bytes(pickle.dumps(entry, protocol=protocol))
    x_tr, y_tr, x_te, y_te = cifar10_data.load(tmp_path)
    assert x_tr.shape == (15, 3, 32, 32) and int(x_te[0, 0, 0, 0]) == 5 and y_tr.tolist()[-1] == 4


def test_gpu_check_trains_on_full_size_stand_in_data_always(tmp_path):
    (x_tr, y_tr, x_te, y_te), notes = cifar10_data.get("gpu_check", tmp_path)
    assert (x_tr.shape, x_te.shape) == ((50_000, 3, 32, 32), (10_000, 3, 32, 32))
    assert x_tr.dtype == torch.uint8 and set(y_te.unique().tolist()) == set(range(10))
    assert "stand-in" in notes[0] and "not CIFAR-10" in notes[0]
    again, _ = cifar10_data.get("gpu_check", tmp_path)
    assert torch.equal(again[0][:100], x_tr[:100])  # same data on every call (and cached)


def test_the_normaliser_matches_the_per_channel_formula():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mean, std = torch.tensor(cifar10_data.MEAN).view(1, 3, 1, 1), torch.tensor(cifar10_data.STD).view(1, 3, 1, 1)
    torch.testing.assert_close(cifar10_data.Normalizer(torch.device("cpu"))(x), (x.float() / 255 - mean) / std)


@needs_cuda_build
@pytest.mark.parametrize("task", ["cifar10-resnet18", "vit-s-cifar10"])
def test_cifar_batches_on_the_device_cost_no_host_copy(task):
    with fake_cuda() as fake:
        instance = get_task(task).instantiate("smoke", 0, "cuda")
        first = next(instance.batches)  # the epoch's one copy (order and augmentation draws)
        with fake.syncs.recording() as syncs:
            batches = [next(instance.batches) for _ in range(3)]
    assert not syncs, dict(syncs)
    assert all(x.device.type == "cuda" and y.device.type == "cuda" for x, y in [first, *batches])
    assert first[0].dtype == torch.float32 and first[0].shape[1:] == (3, 32, 32)


@needs_cuda_build
@pytest.mark.parametrize("task", ["cifar10-resnet18", "vit-s-cifar10"])
def test_cifar_evaluation_on_the_device_reads_its_sums_once(task, tmp_path):
    with fake_cuda() as fake:
        instance = get_task(task).instantiate("smoke", 0, "cuda", data_dir=str(tmp_path))
        with fake.syncs.recording() as syncs:
            result = instance.evaluate(instance.model)  # a device mismatch would raise here
    assert dict(syncs) == {"blocking copy cuda->cpu": 1}  # the (loss sum, correct count) pair, read together
    assert set(result.extra) == {"accuracy"} and result.metric == result.loss


def test_cifar_batches_depend_on_the_seed_only():
    data = cifar10_data.stand_in(64, 8)
    a = cifar10_data.train_batches(data[0], data[1], 16, 3, torch.device("cpu"))
    b = cifar10_data.train_batches(data[0], data[1], 16, 3, torch.device("cpu"))
    c = cifar10_data.train_batches(data[0], data[1], 16, 4, torch.device("cpu"))
    xa, xb, xc = next(a)[0], next(b)[0], next(c)[0]
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)


@needs_cuda_build
def test_gpt2_small_evaluates_on_the_whole_held_out_part_under_any_preset_but_smoke():
    from optbench.tasks._text import load_corpus

    _, held_out = load_corpus(None, gpt2_small.FULL["context"])
    whole = (len(held_out) - 1) // gpt2_small.FULL["context"]  # every full window; only a partial one is left
    with fake_cuda():
        instance = get_task("gpt2-small").instantiate("gpu_check", 0, "cuda")
    assert f"held-out: {whole} windows of 1024 bytes, the whole held-out part" in instance.notes, instance.notes
    assert set(gpt2_small.EVAL_WINDOWS) == {"smoke"}  # a new preset needs no entry (issue 19 item 6)
    smoke = get_task("gpt2-small").instantiate("smoke", 0, "cpu")
    assert "held-out: 4 windows of 64 bytes, the first 4" in smoke.notes


@pytest.mark.parametrize("task", GPU_TASKS)
def test_every_gpu_tier_task_has_a_budget_for_every_gpu_preset(task):
    for preset in GPU_PRESETS:
        assert get_task(task).budget(preset).steps >= 1
    assert set(GPU_PRESETS) <= set(PRESETS)


def test_a_gpu_preset_without_cuda_is_a_usage_error_not_a_cpu_fallback(monkeypatch):
    from optbench.env import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for preset in GPU_PRESETS:
        with pytest.raises(UsageError, match=f"preset '{preset}' runs on CUDA.*--device cpu"):
            default_device(preset)
    assert default_device("cpu") == "cpu"


@pytest.mark.parametrize("argv", [["run", "--preset", "gpu", "--no-progress"],
                                  ["run", "--preset", "smoke", "--device", "cuda", "--tasks", "digits-mlp"]])
def test_the_cli_refuses_cuda_without_cuda_in_one_line(argv, monkeypatch, tmp_path, capsys):
    from optbench.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*argv, "--runs-dir", str(tmp_path / "runs"), "--optimizers", "sgd"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


@pytest.mark.parametrize("task", GPU_TASKS)
def test_slimadam_snr_without_rules_is_unavailable_for_the_task_with_a_command_that_parses(task):
    import shlex

    from optbench.optimizers.slimadam import snr_rules_path

    from optbench.cli import build_parser
    from optbench.registry import get_optimizer

    reason = get_optimizer("slimadam-snr").unavailable_for(task)
    assert reason and f"no SNR rules for task {task!r}" in reason
    argv = shlex.split(reason.split("`")[1])
    assert argv[:2] == ["optbench", "snr"]
    args = build_parser().parse_args(argv[1:])
    assert args.task == task and args.device == "cuda" and args.preset in get_task(task).budgets
    assert args.preset in GPU_PRESETS and str(snr_rules_path(task)) == args.rules_out


def test_a_run_of_slimadam_snr_on_a_task_without_rules_is_an_unavailable_record():
    from optbench.runner import run_one

    record = run_one("gpt2-small", "slimadam-snr", preset="smoke", device="cpu")
    assert record["status"] == "error" and record["error"].startswith("unavailable: no SNR rules for task")


def test_the_command_slimadam_snr_suggests_makes_the_rules_it_needs(tmp_path, monkeypatch):
    import shlex

    from optbench.optimizers import slimadam

    from optbench.cli import main
    from optbench.registry import get_optimizer

    monkeypatch.setattr(slimadam, "RULES_DIR", tmp_path / "rules")
    spec = get_optimizer("slimadam-snr")
    reason = spec.task_check("digits-mlp")  # (with no rules at all, `optbench list` says so first)
    assert reason
    argv = shlex.split(reason.split("`")[1])[1:] + ["--steps", "3", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert spec.unavailable_for("digits-mlp") is None
    model = get_task("digits-mlp").instantiate("smoke", 0, "cpu").model
    assert spec.build(model, 1e-3, **spec.resolve_hparams({})) is not None


def test_the_memory_tracker_fits_this_torch_and_a_misfit_falls_back_with_a_reason(monkeypatch):
    from torch import nn

    from optbench import memory

    assert memory.tracker_incompatibility() is None
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [(torch.randn(4, 8), torch.randint(0, 2, (4,))) for _ in range(2)]
    loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    monkeypatch.delattr(memory.MemTracker, "_update_peak_stats")
    assert "has no _update_peak_stats()" in memory.tracker_incompatibility()
    report = memory.measure_training_memory(model, opt, batches, loss, steps=2)
    assert report.method.startswith("fallback (MemTracker failed: RuntimeError: torch")
    assert "_update_peak_stats" in report.method and report.peak_by_category["params"] > 0


CIFAR_TASKS = ["cifar10-resnet18", "vit-s-cifar10"]


@pytest.mark.parametrize("task", CIFAR_TASKS)
def test_cifar_tasks_score_held_out_loss_with_accuracy_secondary(task, tmp_path):
    spec = get_task(task)
    assert (spec.metric.name, spec.metric.higher_is_better) == ("loss", False)
    assert all(b.target is None or 0 < b.target < math.log(10) for b in spec.budgets.values())  # losses, not rates
    instance = spec.instantiate("smoke", 0, "cpu", data_dir=str(tmp_path))  # stand-in images
    result = instance.evaluate(instance.model)
    _, _, x_te, y_te = cifar10_data.stand_in(*cifar10_data.STAND_IN_SMOKE)
    n = {"cifar10-resnet18": 32, "vit-s-cifar10": 64}[task]  # the smoke test subsets
    with torch.no_grad():
        instance.model.eval()
        logits = instance.model(cifar10_data.normalize(x_te[:n]))
        instance.model.train()
    expected_loss = torch.nn.functional.cross_entropy(logits, y_te[:n]).item()
    assert result.metric == result.loss == pytest.approx(expected_loss, rel=1e-5)
    assert result.extra == {"accuracy": pytest.approx((logits.argmax(-1) == y_te[:n]).float().mean().item())}


def test_a_cifar_run_records_loss_as_the_metric_and_accuracy_beside_it(tmp_path):
    from optbench.runner import run_one

    record = run_one("vit-s-cifar10", "sgd", preset="smoke", device="cpu", task_options={"data_dir": str(tmp_path)},
                     measure_memory_pass=False)
    metrics = record["metrics"]
    assert record["status"] == "ok", record["error"]
    assert (metrics["metric_name"], metrics["higher_is_better"]) == ("loss", False)
    assert metrics["final_metric"] == metrics["eval_loss"] and 0 <= metrics["accuracy"] <= 1


def test_every_gpu_tier_task_states_its_margin_in_its_spec_docstring_and_the_task_list(capsys):
    import importlib
    import json

    from optbench.cli import main

    assert main(["tasks", "--json"]) == 0
    shown = {row["name"]: row["margin"] for row in json.loads(capsys.readouterr().out)}
    modules = {"cifar10-resnet18": "cifar10_resnet18", "vit-s-cifar10": "vit_s_cifar10", "gpt2-small": "gpt2_small"}
    assert sorted(modules) == GPU_TASKS
    for task, module in modules.items():
        margin = get_task(task).margin
        assert 0 < margin <= 0.02 and shown[task] == margin
        doc = importlib.import_module(f"optbench.tasks.{module}").__doc__
        assert f"Verdict margin (``margin={margin}``, fixed before any result" in doc, task
