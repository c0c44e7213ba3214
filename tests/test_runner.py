import json

import pytest
import torch

from optbench import registry
from optbench.records import read_record, write_record
from optbench.runner import make_cells, run_grid, run_one


def test_same_seed_gives_identical_curve():
    a = run_one("digits-mlp", "adamw", seed=3, preset="smoke", measure_memory_pass=False)
    b = run_one("digits-mlp", "adamw", seed=3, preset="smoke", measure_memory_pass=False)
    assert a["status"] == "ok"
    assert a["curve"] == b["curve"] and len(a["curve"]["train"]) > 3
    c = run_one("digits-mlp", "adamw", seed=4, preset="smoke", measure_memory_pass=False)
    assert c["curve"]["train"] != a["curve"]["train"]


def test_adamw_state_bytes_are_two_fp32_moments_plus_step_counters():
    record = run_one("digits-mlp", "adamw", preset="smoke", measure_memory_pass=False)
    model = registry.get_task("digits-mlp").instantiate("smoke", 0).model
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    assert record["memory"]["optimizer_state_bytes"] == 2 * 4 * n + 4 * len(params)


def test_record_round_trip_is_unchanged(tmp_path):
    record = run_one("digits-mlp", "sgd", preset="smoke", measure_memory_pass=False)
    path = write_record(record, tmp_path / "r.json")
    assert read_record(path) == json.loads(json.dumps(record))


def test_diverging_run_is_recorded_and_grid_goes_on(tmp_path):
    cells = make_cells(["digits-mlp"], ["sgd"], [0], {"lr": 1e6}) + make_cells(["digits-mlp"], ["adamw"], [0])
    outcome = run_grid(cells, preset="smoke", runs_dir=tmp_path, progress=False, measure_memory_pass=False)
    diverged, ok = outcome.records
    assert diverged["status"] == "diverged" and diverged["diverged_at_step"] >= 1
    assert diverged["metrics"]["final_metric"] is None
    assert ok["status"] == "ok" and ok["metrics"]["final_metric"] > 0.5
    assert len(list(tmp_path.rglob("*.json"))) == 2


def test_error_in_one_run_is_recorded_and_grid_goes_on(tmp_path, monkeypatch):
    sgd = registry.get_optimizer("sgd")

    def broken_build(model, lr, **hp):
        raise RuntimeError("boom from a broken optimizer")

    monkeypatch.setitem(registry._OPTIMIZERS, "sgd", type(sgd)(**{**sgd.__dict__, "build": broken_build}))
    cells = make_cells(["digits-mlp"], ["sgd", "adamw"], [0])
    outcome = run_grid(cells, preset="smoke", runs_dir=tmp_path, progress=False, measure_memory_pass=False)
    errored, ok = outcome.records
    assert errored["status"] == "error" and "boom from a broken optimizer" in errored["error"]
    assert ok["status"] == "ok"
    assert len(outcome.failed) == 1


def test_grid_resumes_without_redoing_finished_runs(tmp_path, monkeypatch):
    cells = make_cells(["digits-mlp"], ["adamw", "sgd"], [0, 1])
    first = run_grid(cells[:2], preset="smoke", runs_dir=tmp_path, progress=False, measure_memory_pass=False)
    assert first.ran == 2
    calls = []
    import optbench.executors as executors  # where the local executor calls run_one

    real = executors.run_one
    monkeypatch.setattr(executors, "run_one", lambda *a, **k: calls.append(a) or real(*a, **k))
    second = run_grid(cells, preset="smoke", runs_dir=tmp_path, progress=False, measure_memory_pass=False)
    assert (second.reused, second.ran, len(calls)) == (2, 2, 2)


def test_interrupted_grid_keeps_finished_runs(tmp_path, monkeypatch):
    import optbench.executors as executors

    real, count = executors.run_one, []

    def interrupt_on_second(*a, **k):
        count.append(1)
        if len(count) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(executors, "run_one", interrupt_on_second)
    cells = make_cells(["digits-mlp"], ["adamw", "sgd"], [0])
    with pytest.raises(KeyboardInterrupt):
        run_grid(cells, preset="smoke", runs_dir=tmp_path, progress=False, measure_memory_pass=False)
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1 and read_record(files[0])["optimizer"] == "adamw"
    assert not list(tmp_path.rglob("*.tmp"))


def test_corrupt_run_file_is_named_set_aside_and_rerun(tmp_path):
    cells = make_cells(["digits-mlp"], ["adamw"], [0])
    run_grid(cells, preset="smoke", runs_dir=tmp_path, progress=False, measure_memory_pass=False)
    (path,) = tmp_path.rglob("*.json")
    path.write_text('{"schema": 1, "task": "digits-mlp"')  # a torn write from some other tool
    messages = []
    outcome = run_grid(cells, preset="smoke", runs_dir=tmp_path, progress=False, measure_memory_pass=False,
                       log=messages.append)
    assert outcome.corrupt == [str(path)] and str(path) in messages[0]
    assert path.with_name(path.name + ".corrupt").exists()
    assert read_record(path)["status"] == "ok"


def test_failed_runs_are_rerun_only_on_request(tmp_path, monkeypatch):
    cells = make_cells(["digits-mlp"], ["adamw"], [0])
    import optbench.executors as executors

    real = executors.run_one
    monkeypatch.setattr(executors, "run_one", lambda *a, **k: {**real(*a, **k), "status": "error", "error": "x"})
    run_grid(cells, preset="smoke", runs_dir=tmp_path, progress=False, measure_memory_pass=False)
    monkeypatch.setattr(executors, "run_one", real)
    again = run_grid(cells, preset="smoke", runs_dir=tmp_path, progress=False, measure_memory_pass=False)
    assert again.reused == 1 and again.records[0]["status"] == "error"
    rerun = run_grid(cells, preset="smoke", runs_dir=tmp_path, progress=False, measure_memory_pass=False,
                     rerun_failed=True)
    assert rerun.ran == 1 and rerun.records[0]["status"] == "ok"


def test_bad_names_fail_before_anything_runs():
    with pytest.raises(ValueError, match="unknown optimizer"):
        run_one("digits-mlp", "adamx", preset="smoke")
    with pytest.raises(ValueError, match="unknown preset"):
        run_one("digits-mlp", "adamw", preset="tiny")
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        run_one("digits-mlp", "adamw", preset="smoke", hparams={"momentum": 0.9})


def test_record_has_every_design_key():
    record = run_one("digits-mlp", "adamw", preset="smoke", measure_memory_pass=False)
    from optbench.records import SECTION_KEYS, TOP_KEYS

    assert set(TOP_KEYS) <= set(record)
    for section, keys in SECTION_KEYS.items():
        assert set(keys) <= set(record[section]), section
    assert record["env"]["torch"] == torch.__version__
    assert record["timing"]["step_s_median"] > 0 and record["timing"]["samples_per_s"] > 0
