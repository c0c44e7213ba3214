import json
import math

import pytest

from optbench import lrs, registry
from optbench.errors import UsageError
from optbench.sweep import MAX_RATIO, RATIO_ROUNDING, LrSearch, Protocol, SweepResult, Trial, best_lr, log_grid
from optbench.sweep_files import audit, audit_result, read_csv, write_csv

# ---------------------------------------------------------------------------------------------
# The protocol on constructed objectives (no training)


def bowl(optimum: float, noise: dict[int, float] | None = None, diverge_above: float = math.inf):
    """Held-out loss as a function of (lr, seed): a parabola in log10(lr), a per-seed offset, divergence."""
    def loss(lr: float, seed: int) -> float | None:
        if lr > diverge_above:
            return None
        return 1.0 + (math.log10(lr) - math.log10(optimum)) ** 2 + (noise or {}).get(seed, 0.0)
    return loss


def drive(search: LrSearch, loss) -> SweepResult:
    """Run the search to the end with ``loss`` in place of training; return what it chose."""
    for _ in range(100):
        wanted = search.wanted()
        if not wanted:
            break
        for lr, seed in wanted:
            value = loss(lr, seed)
            search.add(Trial(lr, seed, "ok" if value is not None else "diverged", eval_loss=value))
    else:
        raise AssertionError("the search did not finish")
    return SweepResult("x", None, search.protocol.seeds, list(search.trials.values()), search.chosen_lr)


def test_grid_is_log_spaced_around_the_starting_lr():
    grid = log_grid(1e-3, 7, 2.0)
    assert grid == [1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3]
    assert len(log_grid(1e-3, 6, 2.0)) == 6 and log_grid(1e-3, 6, 2.0)[-1] == 4e-3
    wide = log_grid(3.3e-4, 7, MAX_RATIO)  # rounding to 3 digits may stretch a step by < 1%, which audit allows
    assert all(b / a <= MAX_RATIO * RATIO_ROUNDING for a, b in zip(wide, wide[1:]))


def test_interior_optimum_is_found_and_confirmed_on_every_seed():
    protocol = Protocol()
    result = drive(LrSearch(log_grid(1e-3, 7, 2.0), protocol), bowl(2.2e-3))
    assert result.chosen_lr == 2e-3 and not result.at_edge
    assert len(result.grid) == 7  # no extension needed
    for lr in (1e-3, 2e-3, 4e-3):
        assert result.seeds_at(lr) == list(protocol.seeds)
    # successive halving: the lrs far from the optimum ran on the first seed only
    assert result.seeds_at(1.25e-4) == [protocol.seeds[0]]
    assert audit_result("t", result) == []


def test_an_edge_winner_grows_the_grid_until_it_is_interior():
    result = drive(LrSearch(log_grid(1e-3, 7, 2.0), Protocol()), bowl(0.05))
    assert result.chosen_lr == 0.064 and not result.at_edge
    assert result.grid[-1] == 0.128 and len(result.grid) == 11  # grown four steps upwards, past the winner
    assert audit_result("t", result) == []


def test_a_winner_still_at_the_edge_after_the_last_extension_is_flagged():
    result = drive(LrSearch(log_grid(1e-3, 7, 2.0), Protocol(max_extensions=2)), bowl(1.0))
    assert result.at_edge and result.chosen_lr == result.grid[-1] == 0.032
    assert any("sits at an end of the grid" in p for p in audit_result("t", result))


def test_failed_runs_count_as_worst_and_a_grid_where_all_fail_grows_downwards():
    # Everything from 4e-3 up diverges: the best finished lr wins even though the bowl's bottom is above it.
    result = drive(LrSearch(log_grid(1e-3, 7, 2.0), Protocol()), bowl(0.01, diverge_above=3e-3))
    assert result.chosen_lr == 2e-3
    statuses = {t.lr: t.status for t in result.trials}
    assert statuses[4e-3] == "diverged" and statuses[8e-3] == "diverged"
    # The whole grid diverges: it grows downwards until an lr finishes.
    result = drive(LrSearch(log_grid(1e-3, 7, 2.0), Protocol()), bowl(1e-5, diverge_above=1e-4))
    assert result.chosen_lr is not None and result.chosen_lr < 1e-4 and result.grid[0] < 1.25e-4


def test_the_second_seed_can_move_the_choice_and_its_new_neighbour_is_confirmed():
    # On seed 100 lr 2e-3 wins by a hair; seed 101 is much worse there, so 4e-3 wins on the mean, and
    # its upper neighbour 8e-3 (seed 100 only until then) must run on seed 101 too.
    def loss(lr: float, seed: int) -> float:
        base = {1e-3: 1.5, 2e-3: 1.0, 4e-3: 1.01, 8e-3: 1.3}.get(lr, 2.0)
        return base + (0.2 if (lr, seed) == (2e-3, 101) else 0.0)
    protocol = Protocol()
    result = drive(LrSearch(log_grid(1e-3, 7, 2.0), protocol), loss)
    assert result.chosen_lr == 4e-3
    assert result.seeds_at(8e-3) == list(protocol.seeds)
    assert audit_result("t", result) == []


def test_best_lr_breaks_ties_towards_the_smaller_lr_and_ranks_a_failed_seed_last():
    trials = [Trial(1e-3, 0, "ok", eval_loss=1.0), Trial(2e-3, 0, "ok", eval_loss=1.0)]
    assert best_lr(trials, [0]) == 1e-3
    trials = [Trial(1e-3, 0, "ok", eval_loss=1.0), Trial(1e-3, 1, "ok", eval_loss=1.2),
              Trial(2e-3, 0, "ok", eval_loss=0.5), Trial(2e-3, 1, "error")]
    assert best_lr(trials, [0, 1]) == 1e-3
    assert best_lr([Trial(1e-3, 0, "diverged")], [0]) is None
    # Without a held-out loss the task's final metric decides, in its own direction.
    acc = [Trial(1e-3, 0, "ok", final_metric=0.9, higher_is_better=True),
           Trial(2e-3, 0, "ok", final_metric=0.8, higher_is_better=True)]
    assert best_lr(acc, [0]) == 1e-3


@pytest.mark.parametrize("kwargs", [{"points": 0}, {"ratio": 1.0}, {"seeds": ()}, {"seeds": (1, 1)},
                                    {"max_extensions": -1}])
def test_bad_protocol_settings_are_usage_errors(kwargs):
    with pytest.raises(UsageError):
        Protocol(**kwargs)


# ---------------------------------------------------------------------------------------------
# What a published sweep must meet


def test_audit_names_every_breach_of_the_protocol(tmp_path):
    good = drive(LrSearch(log_grid(1e-3, 7, 2.0), Protocol()), bowl(2.2e-3))
    short = drive(LrSearch([1e-3, 3e-3, 9e-3], Protocol(seeds=(0,))), bowl(3e-3))
    write_csv({"adamw": good, "sgd": short}, "digits-mlp", "smoke", tmp_path)
    table = tmp_path / "tuned.json"
    table.write_text(json.dumps({"smoke": {"digits-mlp": {"adamw": 2e-3, "sgd": 1e-3}}}))
    problems = audit(tmp_path, "smoke", optimizers=["adamw", "sgd", "lion"], table=table)
    assert not [p for p in problems if "adamw" in p]
    sgd = "\n".join(p for p in problems if "/ sgd" in p)
    assert "3 lrs tried" in sgd and "3x apart" in sgd and "ran on 1 seed" in sgd
    assert "tuned-lr table holds 0.001, the sweep chose 0.003" in sgd
    assert any("digits-mlp / lion: no sweep" in p for p in problems)
    # The CSV round-trips, and a hand-edited "chosen" column is caught.
    back = read_csv(tmp_path / "smoke" / "digits-mlp.csv")
    assert back["adamw"].chosen_lr == good.chosen_lr and len(back["adamw"].trials) == len(good.trials)
    back["adamw"].chosen_lr = 1e-3
    assert any("the protocol picks 0.002" in p for p in audit_result("digits-mlp", back["adamw"]))


# ---------------------------------------------------------------------------------------------
# Real runs (smoke preset): the CLI, the store, the published files, the table runs then use


def test_sweep_publishes_csv_page_plot_and_table_that_runs_then_use(tmp_path, capsys):
    from optbench.cli import main

    table, out = tmp_path / "tuned.json", tmp_path / "sweeps"
    argv = ["sweep", "--task", "digits-mlp", "--optimizers", "sgd", "--lrs", "0.05,1e3", "--seeds", "0,1",
            "--max-extensions", "0", "--preset", "smoke", "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
            "--table", str(table), "--no-progress"]
    assert main(argv) == 0
    assert json.loads(table.read_text()) == {"smoke": {"digits-mlp": {"sgd": 0.05}}}  # lr 1e3 diverges
    rows = read_csv(out / "smoke" / "digits-mlp.csv")["sgd"]
    assert sorted((t.lr, t.seed, t.status) for t in rows.trials) == [
        (0.05, 0, "ok"), (0.05, 1, "ok"), (1e3, 0, "diverged"), (1e3, 1, "diverged")]
    page = (out / "smoke" / "digits-mlp.md").read_text()
    assert "optbench sweep" in page and "diverged" in page and "digits-mlp.png" in page
    assert (out / "smoke" / "digits-mlp.png").stat().st_size > 0
    index = (out / "smoke" / "README.md").read_text()
    assert "2 lrs tried, the protocol needs >= 6" in index and "sits at an end of the grid" in index
    printed = capsys.readouterr().out
    assert "chosen lr 0.05 (at the grid's edge)" in printed and "protocol: " in printed
    lr, source = lrs.resolve_lr(registry.get_task("digits-mlp"), registry.get_optimizer("sgd"), "smoke", path=table)
    assert (lr, source) == (0.05, "sweep")
    # Resumable: the same sweep again reuses every stored run and chooses the same lr.
    stored = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*.json")}
    assert len(stored) == 4
    assert main(argv) == 0
    assert "chosen lr 0.05" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("*.json")} == stored


def test_each_preset_reads_only_its_own_sweep(tmp_path):
    table = tmp_path / "tuned.json"
    table.write_text(json.dumps({"cpu": {"digits-mlp": {"adamw": 3.3e-4}}}))
    task, adamw = registry.get_task("digits-mlp"), registry.get_optimizer("adamw")
    assert lrs.resolve_lr(task, adamw, "cpu", path=table) == (3.3e-4, "sweep")
    assert lrs.resolve_lr(task, adamw, "smoke", path=table) == (task.default_lrs["adamw"], "task")
    assert lrs.resolve_lr(task, adamw, "cpu", explicit=0.1, path=table) == (0.1, "explicit")
