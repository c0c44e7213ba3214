"""optbench.gpu_check on the CPU: the same code a lent GPU runs.

Every optimizer on every GPU-tier task (issue 19: ``gpu_check -- --device cpu`` passes in CI),
then the crash handling and resuming on one task, and the usage errors.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from optbench import gpu_check
from optbench.registry import optimizers, tasks

GPU_TASKS = sorted(name for name, spec in tasks().items() if spec.tier == "gpu")

ABORTS = '''
import os
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec


def build(model, lr, **_):
    os.abort()  # what a C-level assert in a package's kernel does to the process


register_optimizer(OptimizerSpec(name="aborts-in-c", build=build, defaults={}, lr_vs_adamw=None))
'''


def test_gpu_check_on_cpu_runs_every_optimizer_on_every_gpu_tier_task(tmp_path):
    # The project's own optimizers, by name: a plugin that another test loaded stays out of this run.
    names = sorted(n for n, spec in optimizers().items() if spec.build.__module__.startswith("optbench.optimizers."))
    out = tmp_path / "gpu"
    code = gpu_check.main(["--device", "cpu", "--out", str(out), "--optimizers", ",".join(names)])
    rows = list(csv.DictReader((out / "gpu_check.csv").open()))
    assert sorted((r["task"], r["optimizer"]) for r in rows) == [(t, n) for t in GPU_TASKS for n in names]
    not_ok = {(r["task"], r["optimizer"]): r["status"] for r in rows if r["status"] != "ok"}
    unavailable = {cell: status for cell, status in not_ok.items() if status.startswith("unavailable: ")}
    assert not_ok == unavailable and code == 0, not_ok
    assert all(len(status) > len("unavailable: ") for status in unavailable.values())
    ran = [r for r in rows if r["status"] == "ok"]
    assert {r["task"] for r in ran} == set(GPU_TASKS)
    no_peak = [(r["task"], r["optimizer"]) for r in ran if not r["tracked_peak_bytes"]]
    assert not no_peak and all(int(r["tracked_peak_bytes"]) > 0 for r in ran), no_peak
    # torchao compiles its step with fullgraph=True, which cannot run under MemTracker's dispatch mode: the
    # memory pass falls back to an estimate and says so. Any other optimizer must be tracked.
    fallback = {(r["task"], r["optimizer"]) for r in ran if r["memory_method"].startswith("fallback")}
    assert {name for _, name in fallback} <= {n for n in names if n.startswith("ao-")}, sorted(fallback)
    # Cells leave nothing behind in their task's worker: a memory pass that kept its model alive
    # made this grow by one model per cell (and the GPU's allocator peaks with it).
    held = {}
    for r in rows:
        if r["held_before_bytes"]:
            held.setdefault(r["task"], []).append(int(r["held_before_bytes"]))
    # (a package's module-level tables stay, bitsandbytes' 128 bytes among them; the smallest model
    # here, the smoke ViT, holds 419 KiB of parameters)
    assert set(held) == set(GPU_TASKS) and all(max(v) - v[0] < 64 * 1024 for v in held.values()), held
    text = (out / "GPU_CHECK.md").read_text()
    assert "device cpu" in text and "threads 1" in text and "preset `smoke`" in text  # one thread per worker
    assert text.count("\n| ") == len(rows) + 1
    for row_file in (out / "runs" / "rows").glob("*.json"):  # each cell's run record, as the run store wrote it
        record = json.loads(row_file.read_text())["record"]
        assert record["metrics"]["metric_name"] == tasks()[record["task"]].metric.name
        if record["task"] != "gpt2-small":  # the CIFAR tasks: held-out loss first, accuracy beside it
            assert record["metrics"]["metric_name"] == "loss" and 0 <= record["metrics"]["accuracy"] <= 1


def test_gpu_check_on_cpu_writes_the_table_survives_an_abort_and_resumes(tmp_path, capsys):
    plugin = tmp_path / "aborts.py"
    plugin.write_text(ABORTS)
    out = tmp_path / "gpu"
    argv = ["--device", "cpu", "--out", str(out), "--tasks", "vit-s-cifar10", "--optimizers",
            "sgd,aborts-in-c,adamw", "--plugin", str(plugin)]
    assert gpu_check.main(argv) == 1  # the aborted cell is not ok
    rows = {r["optimizer"]: r for r in csv.DictReader((out / "gpu_check.csv").open())}
    assert list(rows) == ["adamw", "aborts-in-c", "sgd"]  # the baseline first
    assert rows["aborts-in-c"]["status"] == "crashed (killed by signal 6)"
    assert rows["adamw"]["status"] == rows["sgd"]["status"] == "ok"  # the cell after the abort ran too
    assert int(rows["sgd"]["state_bytes"]) > 0 and int(rows["adamw"]["tracked_peak_bytes"]) > 0
    assert rows["sgd"]["syncs_per_step"] == ""  # not counted on the CPU
    text = (out / "GPU_CHECK.md").read_text()
    assert "| vit-s-cifar10 | aborts-in-c | crashed (killed by signal 6) |" in text and "device cpu" in text
    first = capsys.readouterr().out
    assert "going on without it" in first

    # A rerun resumes: nothing runs again, the crash is not retried, the table is the same.
    assert gpu_check.main(argv) == 1
    again = capsys.readouterr().out
    assert ": ok in" not in again and "going on without it" not in again
    assert {r["optimizer"]: r["status"] for r in csv.DictReader((out / "gpu_check.csv").open())} == {
        k: v["status"] for k, v in rows.items()}


def test_gpu_check_without_cuda_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA is not available" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv, bad", [(["--tasks", "digits-mlp"], "digits-mlp"), (["--optimizers", "adamx"], "adamx"),
                                       (["--tasks", ""], "''"), (["--threads", "0"], "--threads 0")])
def test_gpu_check_names_a_bad_value(argv, bad, tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path), *argv]) == 2
    assert bad in capsys.readouterr().err
