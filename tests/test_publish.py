import json
import subprocess
import sys

import pytest

from optbench.lrs import TUNED_LRS_PATH
from optbench.publish import board_compute, sweep_compute
from optbench.sweep import SweepResult, Trial
from optbench.sweep_files import read_csv, write_csv


def _record(path, optimizer, seed, lr, wall_s, lr_source="sweep"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"task": "digits-mlp", "optimizer": optimizer, "seed": seed, "hparams": {"lr": lr},
                                "lr_source": lr_source, "timing": {"wall_s": wall_s}}))


def test_compute_counts_the_runs_the_sweeps_and_the_board_used(tmp_path):
    trials = [Trial(1e-3, 100, "ok", eval_loss=1.0, wall_s=2.0), Trial(2e-3, 100, "diverged", wall_s=0.5)]
    write_csv({"adamw": SweepResult("adamw", 1e-3, (100,), trials, 1e-3),
               "lion": SweepResult("lion", 1e-4, (100,), [Trial(1e-4, 100, "ok", eval_loss=2.0, wall_s=9.0)], 1e-4)},
              "digits-mlp", "smoke", tmp_path / "sweeps")
    assert sweep_compute(tmp_path / "sweeps", "smoke", "digits-mlp", ["adamw"]) == (2, 2.5)

    runs = tmp_path / "runs" / "smoke" / "digits-mlp"
    _record(runs / "a.json", "adamw", 0, 1e-3, 3.0)
    _record(runs / "b.json", "adamw", 1, 1e-3, 4.0)
    _record(runs / "c.json", "adamw", 0, 5e-4, 100.0)  # an older board at another lr: not this board's
    _record(runs / "d.json", "adamw", 7, 1e-3, 100.0)  # a seed the board does not run
    _record(runs / "e.json", "sgd", 0, 0.05, 1.0, lr_source="task")  # no sweep entry: the starting lr ran
    _record(runs / "f.json", "sgd", 1, 0.3, 100.0, lr_source="explicit")
    (runs / "g.json").write_text("{not json")
    assert board_compute(tmp_path / "runs", "smoke", "digits-mlp", ["adamw", "sgd"], [0, 1],
                         {"adamw": 1e-3}) == (3, 8.0)


@pytest.mark.slow
def test_publish_smoke_runs_the_whole_pipeline_and_resumes(tmp_path):
    committed = TUNED_LRS_PATH.read_text()
    out = tmp_path / "published"
    command = [sys.executable, "-m", "optbench.publish", "--smoke", "--out", str(out), "--no-progress"]
    first = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    tuned = json.loads((out / "tuned_lrs.json").read_text())["smoke"]["digits-mlp"]
    assert set(tuned) == {"adamw", "sgd"}
    sweeps = read_csv(out / "sweeps" / "smoke" / "digits-mlp.csv")
    assert {name: r.chosen_lr for name, r in sweeps.items()} == tuned
    board = [json.loads(p.read_text()) for p in (out / "runs").rglob("*.json")]
    assert sorted((r["optimizer"], r["seed"]) for r in board) == [("adamw", 0), ("adamw", 1), ("sgd", 0), ("sgd", 1)]
    assert all(r["hparams"]["lr"] == tuned[r["optimizer"]] and r["lr_source"] == "sweep" for r in board)
    assert (out / "LEADERBOARD.md").exists() and (out / "sweeps" / "smoke" / "digits-mlp.png").exists()
    n_runs = len(board) + sum(len(r.trials) for r in sweeps.values())
    assert f"summed over {n_runs} runs" in first.stdout and "**total**" in (out / "COMPUTE.md").read_text()
    assert TUNED_LRS_PATH.read_text() == committed  # the committed table is left alone

    stored = {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if "runs" in p.parts}
    second = subprocess.run(command, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json") if "runs" in p.parts} == stored
    assert f"summed over {n_runs} runs" in second.stdout


def test_board_seeds_come_from_each_task_unless_given(tmp_path):
    from optbench import registry
    from optbench.errors import UsageError
    from optbench.publish import board_seeds, seed_groups

    tasks = ["digits-mlp", "digits-cnn", "topics-gpt"]
    seeds = board_seeds(tasks, None)
    assert all(seeds[t] == list(range(registry.get_task(t).board_seeds)) for t in tasks)
    assert all(len(s) >= 5 for s in seeds.values())  # the protocol's floor
    # tasks sharing their seeds share one `optbench run`, in the tasks' order
    groups = seed_groups(tasks, {"digits-mlp": [0, 1], "digits-cnn": [0, 1], "topics-gpt": [0, 1, 2]})
    assert groups == [([0, 1], ["digits-mlp", "digits-cnn"]), ([0, 1, 2], ["topics-gpt"])]
    assert board_seeds(tasks, "3,4") == {t: [3, 4] for t in tasks}
    with pytest.raises(UsageError, match="--seeds"):
        board_seeds(tasks, "a,b")


def test_a_task_cannot_ask_for_fewer_board_seeds_than_the_protocol():
    from dataclasses import replace

    from optbench import registry

    with pytest.raises(ValueError, match="board_seeds 3 must be >= 5"):
        replace(registry.get_task("digits-mlp"), board_seeds=3)
