"""The typed run record and the run store: what is reused, kept, set aside and never lost.

Defects of issue 12 reproduced here: (1) check deleting stored records, (2) the report counting
copies, (3) records validated by key only, (4) torn/lost writes of the tuned-lr table, (5) the
run key ignoring a run's input files. The CLI's own defects are in test_cli_errors.py.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest

from optbench import atomic, registry
from optbench.errors import UsageError
from optbench.records import (
    SCHEMA,
    CorruptRecordError,
    NewerSchemaError,
    RunRecord,
    read_record,
    validate,
    write_record,
)
from optbench.report import load_runs
from optbench.runner import cell_key, make_cells, run_grid, run_one
from optbench.store import RunStore

SMOKE = {"preset": "smoke", "progress": False, "measure_memory_pass": False}


@pytest.fixture(scope="module")
def smoke_record() -> dict:
    return run_one("digits-mlp", "sgd", preset="smoke", measure_memory_pass=False)


def _grid(tmp_path: Path, optimizers=("adamw",), seeds=(0,), **kwargs):
    return run_grid(make_cells(["digits-mlp"], list(optimizers), list(seeds)), runs_dir=tmp_path, **SMOKE, **kwargs)


# ---------------------------------------------------------------------------------------------
# the typed record


COMMITTED_RUNS = (Path("results/runs"), Path("results/sweeps/runs"))  # the board's and the sweeps' records


def test_every_committed_record_is_a_valid_typed_record_and_round_trips():
    files = sorted(path for folder in COMMITTED_RUNS for path in folder.rglob("*.json"))
    assert len(files) >= 100
    for path in files:
        data = json.loads(path.read_text())
        assert validate(data, str(path)).to_json() == data


def test_unknown_extra_keys_survive_a_round_trip(smoke_record, tmp_path):
    record = json.loads(json.dumps(smoke_record))
    record["optimizer_impl"] = "compiled"
    record["state_bytes_source"] = "formula"
    record["timing"]["concurrent_runs"] = 3
    record["memory"]["some_future_figure"] = {"nested": [1, 2]}
    path = write_record(record, tmp_path / "r.json")
    assert read_record(path) == record


@pytest.mark.parametrize("where, value, message", [
    (("metrics",), "oops", "metrics is \"oops\", expected an object"),
    (("seed",), "zero", "seed is \"zero\", expected int"),
    (("seed",), True, "seed is true, expected int"),
    (("metrics", "final_metric"), "0.9", "final_metric is \"0.9\", expected number or null"),
    (("memory", "peak_by_category"), [1, 2], "peak_by_category"),
    (("curve", "train"), [[1, 2, 3]], "not [step, value] pairs"),
    (("status",), "fine", "status is 'fine'"),
    (("timing", "concurrent_runs"), "two", "concurrent_runs is \"two\", expected int"),
])
def test_a_record_of_the_wrong_type_is_corrupt_and_named(smoke_record, where, value, message):
    record = json.loads(json.dumps(smoke_record))
    target = record
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    with pytest.raises(CorruptRecordError, match="some/file.json") as info:
        validate(record, "some/file.json")
    assert message in str(info.value)


def test_a_missing_key_is_corrupt(smoke_record):
    record = json.loads(json.dumps(smoke_record))
    del record["timing"]["wall_s"]
    with pytest.raises(CorruptRecordError, match=r"timing is missing key\(s\) \['wall_s'\]"):
        validate(record, "f.json")


def test_a_newer_schema_is_not_corrupt(smoke_record):
    record = json.loads(json.dumps(smoke_record)) | {"schema": SCHEMA + 1, "a_new_section": {}}
    with pytest.raises(NewerSchemaError, match="newer optbench") as info:
        validate(record, "f.json")
    assert not isinstance(info.value, CorruptRecordError)


def test_records_are_built_typed(smoke_record):
    typed = RunRecord.from_json(smoke_record)
    assert typed.metrics.final_metric == smoke_record["metrics"]["final_metric"]
    assert typed.extra["lr_source"] and typed.timing.extra["train_s"] > 0
    assert typed.budget.extra["schedule"]


# ---------------------------------------------------------------------------------------------
# defect 3: a mistyped record is set aside and rerun, and the report names it instead of crashing


def test_a_mistyped_record_is_set_aside_rerun_and_named_by_the_report(tmp_path):
    _grid(tmp_path)
    (path,) = tmp_path.rglob("*.json")
    bad = json.loads(path.read_text())
    bad["metrics"] = "oops"
    path.write_text(json.dumps(bad))
    messages = []
    outcome = _grid(tmp_path, log=messages.append)
    assert outcome.ran == 1 and outcome.reused == 0 and outcome.corrupt == [str(path)]
    assert read_record(path)["metrics"]["final_metric"] is not None
    assert json.loads(path.with_name(path.name + ".corrupt").read_text())["metrics"] == "oops"
    bad_copy = tmp_path / "smoke" / "digits-mlp" / "sgd__s0__0123456789.json"
    bad_copy.write_text(json.dumps({**bad, "optimizer": "sgd"}))
    report = load_runs(tmp_path, "smoke")
    assert len(report.records) == 1 and [p for p, _ in report.corrupt] == [bad_copy]
    assert "metrics is \"oops\"" in report.corrupt[0][1]


# ---------------------------------------------------------------------------------------------
# defect 2: copies are not counted


def test_the_report_counts_each_run_once_and_lists_copies_as_ignored(tmp_path):
    _grid(tmp_path, seeds=(0, 1))
    original = sorted((tmp_path / "smoke" / "digits-mlp").glob("adamw__s0__*.json"))[0]
    (tmp_path / "smoke" / "archive").mkdir()
    shutil.copy(original, tmp_path / "smoke" / "archive" / original.name)
    shutil.copy(original, original.with_name(original.stem + " (copy).json"))
    (tmp_path / "smoke" / "digits-mlp" / "old").mkdir()
    shutil.copy(original, tmp_path / "smoke" / "digits-mlp" / "old" / original.name)
    loaded = load_runs(tmp_path, "smoke")
    assert sorted(r["seed"] for _, r in loaded.records) == [0, 1]
    assert len(loaded.ignored) == 3 and not loaded.corrupt


def test_a_record_under_another_name_is_ignored_not_counted(tmp_path):
    _grid(tmp_path)
    (path,) = tmp_path.rglob("*.json")
    shutil.copy(path, path.with_name("adamw__s0__ffffffffff.json"))  # a valid-looking name, another key
    loaded = load_runs(tmp_path, "smoke")
    assert len(loaded.records) == 1 and "misplaced" in loaded.ignored[0][1]


# ---------------------------------------------------------------------------------------------
# the store's policies


def test_a_second_corruption_does_not_overwrite_the_first(tmp_path):
    _grid(tmp_path)
    (path,) = tmp_path.rglob("*.json")
    path.write_text("{ torn")
    _grid(tmp_path, log=lambda _: None)
    path.write_text("{ torn again")
    _grid(tmp_path, log=lambda _: None)
    assert path.with_name(path.name + ".corrupt").read_text() == "{ torn"
    assert path.with_name(path.name + ".2.corrupt").read_text() == "{ torn again"
    assert read_record(path)["status"] == "ok"


def test_a_record_from_a_newer_optbench_stops_the_grid_before_it_runs(tmp_path, monkeypatch):
    _grid(tmp_path)
    (path,) = tmp_path.rglob("*.json")
    newer = json.loads(path.read_text()) | {"schema": SCHEMA + 1}
    path.write_text(json.dumps(newer))
    import optbench.executors as executors

    monkeypatch.setattr(executors, "run_one", lambda *a, **k: pytest.fail("nothing may run"))
    with pytest.raises(UsageError, match="from a newer optbench"):
        _grid(tmp_path)
    assert json.loads(path.read_text()) == newer  # left as it is, not set aside as corrupt
    scan = RunStore(tmp_path).scan()
    assert [p for p, _ in scan.newer] == [path] and not scan.corrupt


def test_stale_temporary_files_are_cleaned_up(tmp_path):
    _grid(tmp_path)
    folder = tmp_path / "smoke" / "digits-mlp"
    dead = folder / ".adamw__s0__0123456789.json.999999999.abcd.tmp"  # no such pid
    dead.write_text("{ half")
    old = folder / ".adamw__s0__0123456789.json.x7y8.tmp"  # from a writer that did not say its pid
    old.write_text("{ half")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    alive = folder / f".adamw__s0__0123456789.json.{os.getpid()}.efgh.tmp"  # this process: being written
    alive.write_text("{ half")
    _grid(tmp_path)
    assert not dead.exists() and not old.exists() and alive.exists()


def test_duplicate_cells_run_once(tmp_path, monkeypatch):
    import optbench.executors as executors

    calls, real = [], executors.run_one
    monkeypatch.setattr(executors, "run_one", lambda *a, **k: calls.append(a) or real(*a, **k))
    outcome = _grid(tmp_path, optimizers=("adamw", "adamw"), seeds=(0, 0))
    assert len(calls) == 1 and outcome.ran == 1 and len(outcome.records) == 4
    assert len(list(tmp_path.rglob("*.json"))) == 1


def test_a_bad_hyperparameter_value_is_refused_before_anything_is_stored(tmp_path):
    for hparams in ({"lr": -1}, {"betas": [0.9]}, {"betas": [0.9, 1.5]}, {"lr": None}, {"lr": True},
                    {"weight_decay": "lots"}):
        with pytest.raises(UsageError):
            run_grid(make_cells(["digits-mlp"], ["adamw"], [0], hparams), runs_dir=tmp_path, **SMOKE)
    assert not tmp_path.exists() or not list(tmp_path.rglob("*.json"))


def test_every_optimizer_accepts_its_own_defaults():
    from optbench.hparams import check_hparams

    for name, spec in registry.optimizers().items():
        check_hparams(name, spec.defaults, dict(spec.defaults))


def test_an_unwritable_runs_dir_is_a_usage_error_before_training(tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("")
    for runs_dir, message in ((afile, "is a file"), (afile / "sub", "not writable")):
        with pytest.raises(UsageError, match=message):
            run_grid(make_cells(["digits-mlp"], ["adamw"], [0]), runs_dir=runs_dir, **SMOKE)


# ---------------------------------------------------------------------------------------------
# defect 5: the run key follows the files a run reads


def test_the_run_key_and_record_follow_the_rules_file(tmp_path, monkeypatch):
    import optbench.optimizers.slimadam as slimadam

    rules_dir = tmp_path / "rules"
    shutil.copytree(slimadam.RULES_DIR, rules_dir)
    monkeypatch.setattr(slimadam, "RULES_DIR", rules_dir)
    cell = make_cells(["digits-mlp"], ["slimadam-snr"], [0])
    runs = tmp_path / "runs"
    first = run_grid(cell, runs_dir=runs, **SMOKE).records[0]
    assert list(first["input_files"].values()) != ["missing"] and len(first["input_files"]) == 1
    assert run_grid(cell, runs_dir=runs, **SMOKE).reused == 1
    rules = json.loads((rules_dir / "digits-mlp.json").read_text())
    (rules_dir / "digits-mlp.json").write_text(json.dumps({k: None for k in rules}))  # regenerated rules
    assert cell_key(cell[0], "smoke", "cpu").digest() != first["run_key"]
    messages = []
    again = run_grid(cell, runs_dir=runs, log=messages.append, **SMOKE)
    assert again.ran == 1 and again.reused == 0  # stale run not reused
    second = again.records[0]
    assert second["input_files"] != first["input_files"]
    assert second["memory"]["optimizer_state_bytes"] != first["memory"]["optimizer_state_bytes"]
    assert len(RunStore(runs).scan().records) == 1  # the stale run is set aside, not counted twice
    assert list(runs.rglob("*.json.stale")) and "set aside" in messages[0]


def test_runs_without_input_files_keep_their_keys():
    # the committed records of every optimizer without input files are still found under their keys
    path = sorted(path for folder in COMMITTED_RUNS for path in folder.glob("cpu/digits-mlp/adamw__s*.json"))[0]
    record = json.loads(path.read_text())
    from optbench.records import RunKey

    key = RunKey(record["task"], record["optimizer"], record["hparams"], record["seed"], record["preset"],
                 record["env"]["device"], record["task_options"])
    assert key.digest() == record["run_key"]


# ---------------------------------------------------------------------------------------------
# defect 4: the tuned-lr table


def _bump(path: str, worker: int, n: int) -> None:
    for i in range(n):
        atomic.update_json(path, lambda t, i=i: t | {f"w{worker}-{i}": i}, {}, "a table")


def test_concurrent_table_updates_lose_nothing(tmp_path):
    path = str(tmp_path / "table.json")
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_bump, args=(path, w, 60)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert all(w.exitcode == 0 for w in workers)
    assert len(json.loads(Path(path).read_text())) == 180


def test_an_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "table.json"
    path.write_text('{"old": 1}')
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        atomic.write_text_atomic(path, '{"new": 2}')
    assert path.read_text() == '{"old": 1}' and [p.name for p in tmp_path.iterdir()] == ["table.json"]


def test_a_torn_tuned_lr_table_names_the_file(tmp_path):
    from optbench.lrs import _load

    torn = tmp_path / "tuned_lrs.json"
    torn.write_text('{"cpu": {"digits-mlp": {"adamw": 0.00')
    with pytest.raises(ValueError, match=f"{torn}: not valid JSON"):
        _load(torn)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"cpu": {"digits-mlp": {"adamw": "fast"}}}')
    with pytest.raises(ValueError, match=r"wrong.json: cpu/digits-mlp/adamw is \"fast\""):
        _load(wrong)


def test_sweep_writes_the_table_under_the_lock(tmp_path):
    from optbench.sweep import SweepResult, update_table

    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"cpu": {"other-task": {"sgd": 0.1}}}))
    update_table({"adamw": SweepResult("adamw", 1e-3, (0,), [], 3e-3)}, "digits-mlp", "cpu", path)
    assert json.loads(path.read_text()) == {"cpu": {"digits-mlp": {"adamw": 3e-3}, "other-task": {"sgd": 0.1}}}


def test_a_stored_run_of_another_budget_is_rerun_and_kept_aside(tmp_path):
    # the run key does not name the budget: a task whose budget changed must not reuse its old runs
    first = _grid(tmp_path)
    assert first.ran == 1 and first.records[0]["budget"]["grad_clip"] is None
    path = next(tmp_path.rglob("*.json"))
    stored = json.loads(path.read_text())
    stored["budget"]["steps"] += 1  # as if trained under an older budget of the task
    path.write_text(json.dumps(stored))
    messages = []
    again = _grid(tmp_path, log=messages.append)
    assert again.ran == 1 and again.reused == 0
    assert list(tmp_path.rglob("*.json.stale")) and json.loads(path.read_text())["budget"]["steps"] == stored[
        "budget"]["steps"] - 1
    third = _grid(tmp_path)  # the rerun matches the budget: reused from now on
    assert third.reused == 1 and third.ran == 0
