"""The SNR studies (optbench.studies, `optbench study`): verdicts, windows of a trace, the conditioning
figure, the eos probe, resuming from the run store, and usage errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from optbench import snr, studies
from optbench.cli import main
from optbench.commands import study as study_verb

TASK = "digits-mlp"  # margin 0.02


def _context(tmp_path, **kw) -> studies.Context:
    return studies.Context("smoke", (0, 1, 2), tmp_path, tmp_path / "runs", log=lambda _: None, **kw)


def _record(loss: float | None, status: str = "ok", key: str | None = None) -> dict:
    return {"status": status, "run_key": key, "metrics": {"eval_loss": loss, "final_metric": loss}}


def _give(ctx: studies.Context, arm: studies.Arm, losses, statuses=("ok", "ok", "ok")) -> None:
    for seed, (loss, status) in enumerate(zip(losses, statuses, strict=True)):
        ctx.records[(arm, seed)] = _record(loss if status == "ok" else None, status, f"{arm.label}{seed}")


def test_verdict_columns_on_constructed_per_seed_losses(tmp_path):
    ctx = _context(tmp_path)
    base = studies.adamw_arm(TASK)
    _give(ctx, base, [1.00, 1.10, 0.90])  # mean 1.0: δ = 0.02
    cases = {  # arm -> (per-seed differences to the baseline, statuses, expected verdict)
        0.25: ([-0.10, -0.09, -0.11], ("ok",) * 3, "better"),
        0.5: ([0.001, -0.001, 0.002], ("ok",) * 3, "equivalent"),
        1.0: ([0.10, 0.11, 0.09], ("ok",) * 3, "worse"),
        2.0: ([0.05, -0.05, 0.04], ("ok",) * 3, "inconclusive"),
        4.0: ([-0.10, -0.10, 0.0], ("ok", "ok", "diverged"), "worse"),  # a divergence is worse, as on the board
    }
    for alpha, (diffs, statuses, _) in cases.items():
        _give(ctx, studies.derived_arm(TASK, alpha=alpha), [b + d for b, d in zip((1.0, 1.1, 0.9), diffs)], statuses)
    rows = [{"arm": studies.derived_arm(TASK, alpha=a).label,
             **studies.verdict_columns(ctx, studies.derived_arm(TASK, alpha=a), base, "adamw")} for a in cases]
    for row, (alpha, (diffs, statuses, expected)) in zip(rows, cases.items(), strict=True):
        assert row["vs_adamw_verdict"] == expected, (alpha, row)
        assert row["vs_adamw_margin"] == pytest.approx(0.02)
        if "diverged" not in statuses:
            assert row["vs_adamw_diff"] == pytest.approx(sum(diffs) / 3)
            assert row["vs_adamw_ci_low"] < row["vs_adamw_diff"] < row["vs_adamw_ci_high"]
    assert "diverged on 1 of 3 seeds" in rows[-1]["vs_adamw_reason"]
    assert studies.verdict_columns(ctx, base, base, "adamw") == {"vs_adamw_verdict": "(baseline)"}
    # the markdown table shows each comparison in one column: verdict, mean difference and CI
    md = studies.markdown_rows(rows)
    assert set(md[0]) == {"arm", "vs_adamw"}
    assert md[0]["vs_adamw"].startswith("better -0.1 [") and md[3]["vs_adamw"].startswith("inconclusive")


def test_identical_rule_sets_share_runs_and_say_so(tmp_path):
    ctx = _context(tmp_path)
    a, b, base = studies.derived_arm(TASK, alpha=0.25), studies.derived_arm(TASK, alpha=0.5), studies.adamw_arm(TASK)
    _give(ctx, base, [1.0, 1.1, 0.9])
    for seed, loss in enumerate((0.9, 1.0, 0.8)):
        ctx.records[(a, seed)] = ctx.records[(b, seed)] = _record(loss, key=f"same{seed}")
    assert ctx.same_runs(a, b) and not ctx.same_runs(a, base)
    assert studies.verdict_columns(ctx, a, b, "x")["vs_x_reason"] == "same rules: the same runs"


def _trace(rows, steps=9) -> snr.ProxyTrace:
    params = [snr.ParamInfo("w", (4, 3), "mlp_in"), snr.ParamInfo("b", (4,), "bias")]
    return snr.ProxyTrace("t", "smoke", 1e-3, steps, 1, 0, params, rows)


def _row(step, option, value):
    return {"step": step, "parameter": "w", "option": option, "snr": value, "mean": 1.0, "variance": 1.0 / value,
            "relerr": math.sqrt(1 / (1 + value))}


def test_window_rules_follow_a_best_axis_that_changes_mid_way():
    rows = []
    for step in range(1, 10):  # fan-in is the best option early, fan-out late
        early = step <= 3
        rows += [_row(step, "fan_in", 5.0 if early else 0.5), _row(step, "fan_out", 0.5 if early else 5.0),
                 _row(step, "both", 0.1)]
    trace = _trace(rows)
    assert studies.window_steps(range(1, 10)) == {"early": [1, 2, 3], "middle": [4, 5, 6], "late": [7, 8, 9],
                                                  "all": list(range(1, 10))}
    rules = studies.window_rules(trace)
    assert rules["early"]["w"] == [1] and rules["middle"]["w"] == [0] and rules["late"]["w"] == [0]
    assert rules["all"]["w"] == [0]  # mean fan-out SNR 3.5 beats fan-in's 2.0
    assert rules["early"]["b"] is None
    roles = {"w": "mlp_in"}
    assert studies.changed_axes(rules["early"], rules["late"], roles) == {"mlp_in": 1}
    assert sum(studies.changed_axes(rules["middle"], rules["all"], roles).values()) == 0


def test_window_steps_are_contiguous_thirds_and_may_be_empty():
    w = studies.window_steps([1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    assert [len(w[k]) for k in studies.WINDOWS] == [4, 3, 4]
    assert w["early"] + w["middle"] + w["late"] == w["all"]
    assert studies.window_steps([1, 6])["middle"] == []


def test_conditioning_is_max_over_min_of_the_slice_means():
    v = torch.tensor([[1.0, 3.0], [4.0, 4.0], [8.0, 8.0]])
    stats = snr.moment_stats(v, (1,))  # slice means along dim 1: 2, 4, 8
    assert (stats["slice_mean_min"], stats["slice_mean_max"]) == (2.0, 8.0)
    assert studies.conditioning(stats) == pytest.approx(4.0)
    along_rows = snr.moment_stats(v, (0,))  # means along dim 0: 13/3, 5
    assert studies.conditioning(along_rows) == pytest.approx(5 / (13 / 3))
    zero = snr.moment_stats(torch.tensor([[0.0, 0.0], [2.0, 2.0]]), (1,))  # a slice that never saw a gradient
    assert studies.conditioning(zero) == pytest.approx(2.0 / studies.CONDITIONING_FLOOR)
    assert math.isnan(studies.conditioning({"snr": 1.0}))  # a trace read from a file has no extremes


def test_conditioning_series_follows_the_chosen_axes():
    rows = [{"step": s, "parameter": "w", "option": o, "slice_mean_min": 1.0, "slice_mean_max": m}
            for s, m in ((1, 10.0), (2, 5.0)) for o in ("fan_in", "fan_out")]
    rows[1]["slice_mean_max"] = 99.0  # fan_out at step 1: not the chosen option
    series = studies.conditioning_series(_trace(rows, steps=2), {"w": [1], "b": None})
    assert [(p["step"], p["conditioning"]) for p in series] == [(1, 10.0), (2, 5.0)]


def test_eos_probe_stops_at_the_first_diverging_scale(tmp_path, monkeypatch):
    ctx = _context(tmp_path)
    tried = []

    def fake_proxy_run(spec, preset, *, lr, **kw):
        tried.append(lr)
        if lr > ctx.lr(TASK, "adamw")[0]:  # stable up to the tuned AdamW lr
            raise snr.ProxyDiverged(3, math.inf, lr)
        return _trace([])

    monkeypatch.setattr(snr, "proxy_run", fake_proxy_run)
    assert studies.eos_scales(16) == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8]
    stable, diverging = studies.probe_edge(ctx, TASK)
    assert stable == [0.1, 0.2, 0.4, 0.8] and diverging == 1.6
    assert len(tried) == 5  # nothing probed past the first divergence
    arms = studies.eos_arms(ctx, TASK)
    assert [a.rules.proxy.lr_scale for a in arms if a.rules] == stable and len(tried) == 5  # traces are reused
    assert ctx.unavailable(studies.derived_arm(TASK, lr_scale=1.6)) == "proxy diverged at step 3"


def test_dry_run_lists_the_plan_and_trains_nothing(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not train")

    monkeypatch.setattr(snr, "proxy_run", refuse)
    monkeypatch.setattr("optbench.executors.run_one", refuse)
    assert main(["study", "all", "--preset", "smoke", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "at most" in out
    for name in studies.STUDIES:
        assert f"  {name}" in out
    assert not list((tmp_path / "runs").rglob("*.json"))


def test_a_second_call_with_the_same_runs_dir_trains_nothing(tmp_path, monkeypatch, capsys):
    args = ["study", "seeds", "--preset", "smoke", "--tasks", TASK, "--seeds", "0,1", "--out", str(tmp_path),
            "--no-progress"]
    assert main(args) == 0
    records = list((tmp_path / "runs" / "smoke" / TASK).glob("*.json"))
    assert len(records) == 6  # AdamW, static rules, SNR rules x 2 seeds
    capsys.readouterr()

    def refuse(*a, **kw):
        raise AssertionError("nothing should train again")

    monkeypatch.setattr("optbench.executors.run_one", refuse)
    assert main(args) == 0
    assert "0 training runs done, 6 reused" in capsys.readouterr().out
    csv_head = (tmp_path / "seeds.csv").read_text().splitlines()[0]
    assert csv_head.startswith("# Made by `optbench study seeds --preset smoke --seeds 0,1 --tasks digits-mlp")
    assert "paired per-seed differences" in csv_head
    md = (tmp_path / "seeds.md").read_text()
    assert "| vs_adamw" in md and "(baseline)" in md


@pytest.mark.parametrize(("argv", "named"), [
    (["study", "nope"], "'nope' (choose from 'alpha'"),
    (["study", "alpha", "--seeds", "3"], "--seeds 3: expected at least 2 distinct seeds"),
    (["study", "lr", "--lr-scales", "0.3,1"], "must include 0.1"),
    (["study", "eos", "--eos-cap", "0.01"], "--eos-cap 0.01"),
    (["study", "alpha", "--tasks", "digits-xl"], "unknown task 'digits-xl'; known: cifar10-resnet18, digits-cnn"),
    (["study", "proxy", "--tasks", "digits-cnn"], "accepted: digits-mlp"),
    (["study", "alpha", "--preset", "huge"], "known: smoke, cpu, gpu"),
    (["study", "seeds", "--runs-dir", "results/runs"], "the board's runs folder"),
])
def test_bad_values_exit_2_before_anything_runs(argv, named, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(snr, "proxy_run", lambda *a, **k: pytest.fail("nothing may run"))
    if "--runs-dir" not in argv:
        argv = [*argv, "--out", str(tmp_path)]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (a bad study name) exit from inside the parser
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1, err


def test_the_verb_knows_every_study_and_shares_its_defaults():
    assert set(study_verb.DEFAULT_TASKS) == set(studies.STUDIES)
    assert study_verb.ALPHAS == studies.ALPHAS and study_verb.LR_SCALES == studies.LR_SCALES
    assert study_verb.CRITERION_ALPHAS == studies.CRITERION_ALPHAS and study_verb.EOS_CAP == studies.EOS_CAP


def test_matched_criteria_pairs_rule_sets_by_memory_saved():
    def row(crit, alpha, saved, rules):
        return {"task": "t", "criterion": crit, "alpha": alpha, "v_saved": saved, "_rules_json": json.dumps(rules),
                "_arm": (crit, alpha)}

    rows = [row("snr", 1, 0.50, {"a": [1], "b": None}), row("variance", 0.1, 0.52, {"a": [1], "b": [0]}),
            row("variance", 1, 0.0, {"a": None, "b": None}), row("relerr", 1, 0.9, {"a": [0], "b": [0]})]
    (m,) = studies.matched_criteria(rows, tolerance=0.05)
    assert m["variance_alpha"] == 0.1 and m["variance_same_axes"] == 0.5 and m["_variance_arm"] == ("variance", 0.1)
    assert math.isnan(m["relerr_alpha"]) and "_relerr_arm" not in m  # 0.9 saved is not within 0.05 of 0.5


@pytest.mark.slow
def test_study_all_smoke_writes_tables_and_plots(tmp_path):
    code = main(["study", "all", "--preset", "smoke", "--tasks", "digits-mlp", "--seeds", "0,1", "--every", "3",
                 "--alphas", "0.5,2", "--criterion-alphas", "0.1,1", "--lr-scales", "0.1,1", "--eos-cap", "0.4",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    for name, study in studies.STUDIES.items():
        for ext in ("md", "csv", "png") if study.plot else ("md", "csv"):
            assert (tmp_path / f"{name}.{ext}").stat().st_size > 0, (name, ext)
    for name in ("criterion_matched", "stability_conditioning"):
        assert (tmp_path / f"{name}.csv").exists()
    curves = (tmp_path / "curves.csv").read_text()
    assert "AdamW" in curves and "SlimAdam (static rules)" in curves and "SlimAdam (SNR rules)" in curves
    assert "vs_0.1_verdict" in (tmp_path / "eos.csv").read_text()
    assert "vs_all_steps_verdict" in (tmp_path / "stability.csv").read_text()
