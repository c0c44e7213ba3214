"""The leaderboard: aggregation, baselines, failures and corrupt files, CSV columns, markdown header."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from optbench.board import aggregate, geometric_mean, overall, pareto_front, runs_frame
from optbench.cli import main
from optbench.records import RunKey, write_record
from optbench.report import load_runs, write_report

ENV = {"optbench": "0.1.0", "torch": "2.14.1", "python": "3.11.7", "device": "cpu", "device_name": "Test CPU 9000",
       "cpu": "Test CPU 9000", "threads": 2, "git_commit": "abc1234"}


def make_record(task: str, optimizer: str, seed: int, metric: float | None, *, status: str = "ok",
                error: str | None = None, state: int = 1000, peak: int | None = 4000, step_s: float = 0.01,
                lr: float = 1e-3, lr_source: str = "sweep", higher_is_better: bool = True, env: dict | None = None,
                preset: str = "smoke", steps_to_target: int | None = 10) -> dict:
    by_category = None if peak is None else {"params": 1000, "grads": 1000, "optimizer": state, "activations": 500,
                                             "temporaries": peak - 2500 - state}
    return {
        "schema": 1, "task": task, "optimizer": optimizer, "hparams": {"lr": lr}, "seed": seed, "preset": preset,
        "status": status, "error": error, "diverged_at_step": 7 if status == "diverged" else None,
        "env": dict(ENV, **(env or {})),
        "budget": {"steps": 20, "batch_size": 8, "tokens_per_step": None},
        "metrics": {"metric_name": "accuracy" if higher_is_better else "loss", "final_metric": metric,
                    "higher_is_better": higher_is_better, "final_train_loss": 0.5, "eval_loss": 0.6,
                    "steps_to_target": steps_to_target if status == "ok" else None, "target": 0.5},
        "memory": {"optimizer_state_bytes": state if status != "error" else None, "peak_bytes": peak,
                   "peak_by_category": by_category, "method": "synthetic tracker", "cuda_max_allocated": None,
                   "cuda_max_reserved": None},
        "timing": {"step_s_median": step_s if status == "ok" else None, "optimizer_step_s_median": step_s / 4,
                   "samples_per_s": 8 / step_s, "tokens_per_s": None, "wall_s": 1.0, "train_s": 0.9},
        "curve": {"train": [[1, 2.0], [10, 1.0], [20, 0.5]], "eval": [[10, 0.4], [20, metric or 0.0]]},
        "lr_source": lr_source, "notes": [], "run_key": "k", "optimizer_class": "torch.optim.X", "task_options": {},
    }


def put(runs_dir, record: dict):
    key = RunKey(record["task"], record["optimizer"], record["hparams"], record["seed"], record["preset"])
    return write_record({**record, "run_key": key.digest()}, key.path(runs_dir))  # as the store names it


@pytest.fixture
def runs_dir(tmp_path):
    """Task A: adamw 0.8/0.9/1.0, sgd 0.5/0.7 + one diverged + one error. Task B (lower is better): adamw, sgd."""
    runs = tmp_path / "runs"
    for seed, metric in enumerate((0.8, 0.9, 1.0)):
        put(runs, make_record("task-a", "adamw", seed, metric, state=1000, peak=8000, step_s=0.010))
    for seed, metric in enumerate((0.5, 0.7)):
        put(runs, make_record("task-a", "sgd", seed, metric, state=500, peak=6000, step_s=0.005))
    put(runs, make_record("task-a", "sgd", 2, None, status="diverged"))
    put(runs, make_record("task-a", "sgd", 3, None, status="error", error="RuntimeError: boom | in step"))
    put(runs, make_record("task-b", "adamw", 0, 2.0, state=2000, peak=8000, higher_is_better=False))
    put(runs, make_record("task-b", "sgd", 0, 1.5, state=250, peak=8000, higher_is_better=False, lr_source="task"))
    return runs


def board_of(runs_dir, preset="smoke") -> pd.DataFrame:
    return aggregate(runs_frame(load_runs(runs_dir, preset).records)).set_index(["task", "optimizer"])


def test_aggregation_mean_std_and_delta_vs_adamw(runs_dir):
    board = board_of(runs_dir)
    adamw, sgd = board.loc[("task-a", "adamw")], board.loc[("task-a", "sgd")]
    assert adamw["metric_mean"] == pytest.approx(0.9) and adamw["metric_std"] == pytest.approx(0.1)
    assert sgd["metric_mean"] == pytest.approx(0.6) and sgd["metric_std"] == pytest.approx(math.sqrt(0.02))
    assert sgd["metric_n"] == 2 and (sgd["n_ok"], sgd["n_diverged"], sgd["n_error"]) == (2, 1, 1)
    assert sgd["delta_vs_adamw"] == pytest.approx(-0.3) and adamw["delta_vs_adamw"] == 0
    assert sgd["state_pct_of_adamw"] == pytest.approx(50.0)
    assert sgd["peak_ratio_to_adamw"] == pytest.approx(0.75)
    assert sgd["step_time_ratio_to_adamw"] == pytest.approx(0.5) and sgd["step_ms"] == pytest.approx(5.0)
    assert board.loc[("task-b", "sgd"), "delta_vs_adamw"] == pytest.approx(-0.5)


def test_geometric_mean_and_overall_ratios(runs_dir):
    assert geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert geometric_mean([0.5, 0.0]) == 0.0
    assert geometric_mean([4.0, math.nan]) == pytest.approx(4.0)
    assert math.isnan(geometric_mean([]))
    with pytest.raises(ValueError, match="negative"):
        geometric_mean([1.0, -1.0])
    summary = overall(board_of(runs_dir).reset_index()).set_index("optimizer")
    # sgd's state is 0.5 of AdamW's on task-a and 0.125 on task-b: geometric mean 0.25
    assert summary.loc["sgd", "state_ratio_gmean"] == pytest.approx(0.25)
    assert summary.loc["sgd", "peak_ratio_gmean"] == pytest.approx(math.sqrt(0.75 * 1.0))
    # adamw wins task-a (higher is better), sgd wins task-b (lower is better)
    assert summary.loc["adamw", "mean_rank"] == 1.5 and summary.loc["adamw", "wins"] == 1
    assert summary.loc["sgd", "wins"] == 1


def test_a_task_where_every_run_failed_gives_no_wins_and_no_rank(runs_dir):
    for optimizer in ("adamw", "sgd"):
        put(runs_dir, make_record("task-c", optimizer, 0, None, status="error", error="ImportError: x", peak=None))
    summary = overall(board_of(runs_dir).reset_index()).set_index("optimizer")
    assert summary.loc["adamw", "wins"] == 1 and summary.loc["sgd", "wins"] == 1
    assert summary.loc["adamw", "mean_rank"] == 1.5  # task-c does not count


def test_pareto_front_respects_direction():
    x, y = [1.0, 2.0, 3.0, 4.0], [0.5, 0.4, 0.9, 0.8]
    assert pareto_front(x, y, higher_is_better=True) == [0, 2]
    assert pareto_front(x, y, higher_is_better=False) == [0, 1]


def test_corrupt_file_reported_by_name_and_skipped(runs_dir, tmp_path):
    bad = runs_dir / "smoke" / "task-a" / "adamw__s9__deadbeef00.json"
    bad.write_text("{ torn write")
    loaded = load_runs(runs_dir, "smoke")
    assert [p.name for p, _ in loaded.corrupt] == [bad.name]
    files = write_report(runs_dir, tmp_path / "out", "smoke", plots=False)
    assert files.n_corrupt == 1 and files.n_runs == 9
    md = files.leaderboard_md.read_text()
    assert bad.name in md.split("## Corrupt run files")[1]
    assert bad.name not in pd.read_csv(files.runs_csv)["file"].str.cat()


def test_failed_runs_section_lists_error_text(runs_dir, tmp_path):
    md = write_report(runs_dir, tmp_path / "out", "smoke", plots=False).leaderboard_md.read_text()
    failed = md.split("## Failed runs")[1].split("## Corrupt")[0]
    assert "RuntimeError: boom \\| in step" in failed  # the pipe is escaped so the table stays a table
    assert "diverged at step 7" in failed
    assert "2 ok, 1 diverged, 1 error" in md


def test_csv_columns(runs_dir, tmp_path):
    files = write_report(runs_dir, tmp_path / "out", "smoke", plots=False)
    board, runs = pd.read_csv(files.leaderboard_csv), pd.read_csv(files.runs_csv)
    assert len(board) == 4 and set(zip(board["task"], board["optimizer"])) == {
        ("task-a", "adamw"), ("task-a", "sgd"), ("task-b", "adamw"), ("task-b", "sgd")}
    for col in ("metric_mean", "metric_std", "metric_n", "delta_vs_adamw", "optimizer_state_bytes",
                "state_pct_of_adamw", "peak_bytes", "peak_params_bytes", "peak_grads_bytes", "peak_optimizer_bytes",
                "peak_activations_bytes", "peak_temporaries_bytes", "memory_method", "step_ms",
                "step_time_ratio_to_adamw", "steps_to_target_mean", "n_ok", "n_diverged", "n_error", "lr_source"):
        assert col in board.columns, col
    assert len(runs) == 9
    for col in ("task", "optimizer", "seed", "status", "error", "final_metric", "optimizer_state_bytes",
                "peak_bytes", "step_s_median", "env_device_name", "env_torch", "env_git_commit", "file"):
        assert col in runs.columns, col


def test_markdown_header_fields(runs_dir, tmp_path):
    md = write_report(runs_dir, tmp_path / "out", "smoke", produced_by="optbench run --preset smoke --seeds 0,1,2",
                      report_command="optbench report --preset smoke", plots=False).leaderboard_md.read_text()
    header = md.split("## task-a")[0]
    for text in ("Test CPU 9000", "2 torch threads", "torch 2.14.1", "optbench 0.1.0", "`abc1234`", "`smoke`",
                 "seeds: 0, 1, 2, 3", "`optbench run --preset smoke --seeds 0,1,2`", "optbench report --preset smoke",
                 "Date: ", "tuned learning rates", "exact optimizer-state bytes", "tracked peak"):
        assert text in header, text
    assert "Mixed environments" not in header
    assert "(task, not swept)" in md.split("## task-b")[1]  # task-b sgd's lr came from the task default
    assert "[1] peak method: synthetic tracker" in md


def test_mixed_environments_flagged(runs_dir, tmp_path):
    put(runs_dir, make_record("task-a", "adamw", 7, 0.9, env={"device_name": "Other CPU", "cpu": "Other CPU"}))
    md = write_report(runs_dir, tmp_path / "out", "smoke", plots=False).leaderboard_md.read_text()
    assert "Mixed environments" in md.split("## task-a")[0] and "Other CPU" in md


def test_other_configurations_are_listed_not_mixed(runs_dir, tmp_path):
    for seed in (0, 1):  # an explicit-lr configuration of adamw on task-a, e.g. left by a sweep
        put(runs_dir, make_record("task-a", "adamw", seed, 0.1, lr=0.5, lr_source="explicit"))
    board = board_of(runs_dir)
    assert board.loc[("task-a", "adamw"), "metric_mean"] == pytest.approx(0.9)  # the swept configuration
    md = write_report(runs_dir, tmp_path / "out", "smoke", plots=False).leaderboard_md.read_text()
    assert '{"lr": 0.5}' in md.split("## Other configurations")[1]


def test_no_records_for_preset_is_a_clear_error(runs_dir, capsys):
    with pytest.raises(ValueError, match=r"no run records for preset 'cpu' in .*runs; presets found there: smoke"):
        load_runs(runs_dir, "cpu")
    assert main(["report", "--runs-dir", str(runs_dir), "--preset", "cpu", "--out", str(runs_dir / "x")]) == 2
    assert "presets found there: smoke" in capsys.readouterr().err


def test_real_smoke_run_through_the_cli(tmp_path):
    from optbench.runner import cell_key, make_cells, run_one

    runs, out = tmp_path / "runs", tmp_path / "out"
    record = run_one("digits-mlp", "adamw", seed=0, preset="smoke", measure_memory_pass=False)
    write_record(record, cell_key(make_cells(["digits-mlp"], ["adamw"], [0])[0], "smoke", "cpu").path(runs))
    assert main(["report", "--runs-dir", str(runs), "--out", str(out), "--preset", "smoke",
                 "--command", "pytest smoke"]) == 0
    md = (out / "LEADERBOARD.md").read_text()
    assert "## digits-mlp" in md and "baseline" in md and "`pytest smoke`" in md
    for name in ("digits-mlp_curves.png", "digits-mlp_pareto.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    assert "(plots/digits-mlp_curves.png)" in md
    board = pd.read_csv(out / "leaderboard.csv")
    assert board.loc[0, "metric_mean"] == pytest.approx(record["metrics"]["final_metric"])


def test_metric_ci_is_the_t_interval_of_the_mean(runs_dir):
    adamw = board_of(runs_dir).loc[("task-a", "adamw")]  # 0.8, 0.9, 1.0: std 0.1, t(0.975, 2) = 4.3027
    assert adamw["metric_ci_low"] == pytest.approx(0.9 - 4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert adamw["metric_ci_high"] == pytest.approx(0.9 + 4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(board_of(runs_dir).loc[("task-b", "sgd"), "metric_ci_low"])  # one seed: no interval


def test_step_times_compare_only_within_one_hardware_and_concurrency(runs_dir, tmp_path):
    for seed, metric in enumerate((0.5, 0.7)):  # task-a sgd again, but measured while 4 runs shared the node
        record = make_record("task-a", "sgd", seed, metric, state=500, peak=6000, step_s=0.005)
        record["timing"]["concurrent_runs"] = 4
        put(runs_dir, record)
    board = board_of(runs_dir)
    sgd = board.loc[("task-a", "sgd")]
    assert not sgd["step_time_comparable"] and math.isnan(sgd["step_time_ratio_to_adamw"])
    assert sgd["step_ms"] == pytest.approx(5.0)  # the time itself is still shown
    assert board.loc[("task-b", "sgd"), "step_time_comparable"]
    md = write_report(runs_dir, tmp_path / "out", "smoke", plots=False).leaderboard_md.read_text()
    task_a = md.split("## task-a")[1].split("## task-b")[0]
    assert "| n/c " in task_a and "n/c: step time measured on other hardware" in task_a
    assert "n/c" not in md.split("## task-b")[1].split("## Overall")[0]


def test_columns_the_board_gains_are_rendered_when_present(runs_dir):
    from optbench.board import build_board
    from optbench.tables import task_table, texts

    board = build_board(load_runs(runs_dir, "smoke").records)
    plain = texts(task_table(board.task_cells("task-a")))
    assert not any("verdict" in label or "bound" in label for label in plain[0])
    cells = board.cells.assign(verdict=["equivalent", "worse", "equivalent", "better"], diff=[0.0, -0.3, 0.0, -0.5],
                               ci_low=[0.0, -0.5, 0.0, -0.9], ci_high=[0.0, -0.1, 0.0, -0.1],
                               step_bound_ratio=[1.5, 2.25, 1.0, 3.0])
    rows = {r["optimizer"]: r for r in texts(task_table(cells[cells["task"] == "task-a"]))}
    assert rows["sgd"]["verdict vs AdamW"] == "worse"
    assert rows["sgd"]["held-out loss diff vs AdamW (95% CI)"] == "-0.3000 [-0.5000, -0.1000]"
    assert rows["sgd"]["step ÷ bound"] == "2.25×"
    labels = list(rows["sgd"])
    assert labels.index("verdict vs AdamW") == labels.index("accuracy (mean ± std)") + 1


def test_board_note_from_the_spec_is_shown_under_the_table(runs_dir, tmp_path, monkeypatch):
    import dataclasses
    from types import SimpleNamespace

    from optbench import registry

    sgd, note = registry.get_optimizer("sgd"), "defaults tuned for the sparse regime"
    noted = (dataclasses.replace(sgd, board_note=note) if "board_note" in {f.name for f in dataclasses.fields(sgd)}
             else SimpleNamespace(family=sgd.family, board_note=note))
    monkeypatch.setattr(registry, "optimizers", lambda: {"adamw": registry.get_optimizer("adamw"), "sgd": noted})
    md = write_report(runs_dir, tmp_path / "out", "smoke", plots=False).leaderboard_md.read_text()
    assert "Note on `sgd`: defaults tuned for the sparse regime" in md.split("## task-b")[0]
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert set(board["family"]) == {"adam", "sgd"}


def test_board_carries_verdicts_discrimination_and_profiles(tmp_path):
    """On a registered task (its margin declared on the spec), each optimizer gets a verdict vs AdamW from the
    paired held-out losses, and the markdown states the rule and the share of resolved verdicts."""
    from optbench.board import build_board

    runs = tmp_path / "runs"
    losses = {"adamw": [0.30, 0.32, 0.31, 0.33, 0.30], "sgd": [0.40, 0.43, 0.41, 0.42, 0.41],
              "lion": [0.30, 0.32, 0.31, 0.33, 0.30], "slimadam": [0.2, 0.5, 0.25, 0.45, 0.3]}
    for optimizer, values in losses.items():
        for seed, loss in enumerate(values):
            record = make_record("digits-mlp", optimizer, seed, loss, higher_is_better=False,
                                 state={"adamw": 2000, "sgd": 1000, "lion": 1000, "slimadam": 1100}[optimizer])
            record["metrics"]["eval_loss"] = loss
            record["metrics"]["accuracy"] = 1.0 - loss  # a secondary figure, shown beside the loss
            put(runs, record)
    board = build_board(load_runs(runs, "smoke").records)
    verdicts = board.cells.set_index("optimizer")["verdict"]
    assert verdicts["sgd"] == "worse" and verdicts["lion"] == "equivalent" and verdicts["slimadam"] == "inconclusive"
    assert isinstance(verdicts.get("adamw"), float)  # the baseline has no verdict against itself
    disc = board.discrimination.set_index("task")
    assert disc.loc["digits-mlp", "resolved_share"] == pytest.approx(2 / 3)
    memory = board.profiles["optimizer state"].set_index("optimizer")
    assert memory.loc["sgd", "τ=1"] == 1.0 and memory.loc["adamw", "τ=1"] == 0.0 and memory.loc["adamw", "τ=2"] == 1.0
    write_report(runs, tmp_path / "out", preset="smoke", plots=False)
    text = (tmp_path / "out" / "LEADERBOARD.md").read_text()
    assert "## Verdicts against AdamW" in text and "Resolved (better, equivalent or worse): **67%**" in text
    assert "accuracy (secondary)" in text and board.cells.set_index("optimizer").loc["sgd", "accuracy_mean"] == \
        pytest.approx(1 - 0.414)


def test_a_memory_saving_optimizer_that_saves_nothing_on_a_task_is_named(tmp_path):
    runs = tmp_path / "runs"
    for seed in range(2):
        put(runs, make_record("task-a", "adamw", seed, 0.9, state=1000))
        put(runs, make_record("task-a", "galore", seed, 0.9, state=1000))  # no tensor projected: AdamW's state
        put(runs, make_record("task-a", "muon", seed, 0.9, state=500))  # saves: not named
        put(runs, make_record("task-a", "adam", seed, 0.9, state=1000))  # plain Adam is not a memory saver
    md = write_report(runs, tmp_path / "out", "smoke", plots=False).leaderboard_md.read_text()
    line = next(line for line in md.splitlines() if line.startswith("Saves no state here"))
    assert "`galore`" in line and "`muon`" not in line and "`adam`" not in line
