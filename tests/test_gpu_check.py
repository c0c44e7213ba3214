"""optbench.gpu_check on the CPU: the same code a lent GPU runs, on two optimizers and one task."""

from __future__ import annotations

import csv

import pytest
import torch

from optbench import gpu_check

ABORTS = '''
import os
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec


def build(model, lr, **_):
    os.abort()  # what a C-level assert in a package's kernel does to the process


register_optimizer(OptimizerSpec(name="aborts-in-c", build=build, defaults={}, lr_vs_adamw=None))
'''


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
                                       (["--tasks", ""], "''")])
def test_gpu_check_names_a_bad_value(argv, bad, tmp_path, capsys):
    assert gpu_check.main(["--device", "cpu", "--out", str(tmp_path), *argv]) == 2
    assert bad in capsys.readouterr().err
