import json
import math

from optbench import lrs, registry
from optbench.cli import main
from optbench.sweep import score


def test_score_ranks_failures_last_and_orients_by_direction():
    ok = {"status": "ok", "metrics": {"final_metric": 0.5}}
    bad = {"status": "diverged", "metrics": {"final_metric": None}}
    assert score([ok, ok], higher_is_better=True) == 0.5
    assert score([ok], higher_is_better=False) == -0.5
    assert score([ok, bad], higher_is_better=True) == -math.inf


def test_sweep_writes_table_that_runs_then_use(tmp_path, capsys):
    table = tmp_path / "tuned.json"
    code = main(["sweep", "--task", "digits-mlp", "--optimizers", "sgd", "--lrs", "1e6,0.05", "--preset", "smoke",
                 "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path), "--table", str(table), "--no-progress"])
    assert code == 0
    assert json.loads(table.read_text()) == {"smoke": {"digits-mlp": {"sgd": 0.05}}}  # lr 1e6 diverges
    md = (tmp_path / "smoke-digits-mlp.md").read_text()
    assert "optbench sweep" in md and "diverged" in md
    lr, source = lrs.resolve_lr(registry.get_task("digits-mlp"), registry.get_optimizer("sgd"), "smoke", path=table)
    assert (lr, source) == (0.05, "sweep")


def test_best_lr_at_the_edge_extends_the_grid(tmp_path):
    from optbench.sweep import sweep

    # On the smoke budget adamw keeps improving as lr grows from 1e-5: the grid must grow upwards.
    results = sweep("digits-mlp", ["adamw"], preset="smoke", seeds=[0], runs_dir=tmp_path, lrs=[1e-5, 3e-5],
                    progress=False, max_extensions=2)
    tried = [row["lr"] for row in results["adamw"]["results"]]
    assert tried == [1e-5, 3e-5, 9e-5, 0.00027]
    assert results["adamw"]["best_lr"] == 0.00027 and results["adamw"]["at_edge"]


def test_each_preset_reads_only_its_own_sweep(tmp_path):
    table = tmp_path / "tuned.json"
    table.write_text(json.dumps({"cpu": {"digits-mlp": {"adamw": 3.3e-4}}}))
    task, adamw = registry.get_task("digits-mlp"), registry.get_optimizer("adamw")
    assert lrs.resolve_lr(task, adamw, "cpu", path=table) == (3.3e-4, "sweep")
    assert lrs.resolve_lr(task, adamw, "smoke", path=table) == (task.default_lrs["adamw"], "task")
    assert lrs.resolve_lr(task, adamw, "cpu", explicit=0.1, path=table) == (0.1, "explicit")
