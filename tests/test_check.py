"""The regression gate: its statistics on known numbers, its verdicts on real smoke runs, its exit codes.

End-to-end tests run digits-mlp on the smoke preset (30 steps, well under a second per run);
the baseline's runs are made once per session and copied into each test's own runs dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from scipy import stats as scipy_stats

from optbench import check, registry, stats
from optbench.cli import main
from optbench.gate import Gates, judge_task
from optbench.stats import compare_quality, default_tolerance

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "adamw_variant.py"
ENTRYPOINT_PKG = ROOT / "examples" / "entrypoint_plugin"
SMOKE = ["--tasks", "digits-mlp", "--preset", "smoke", "--no-progress"]
SEEDS = [0, 1, 2]


# ---------------------------------------------------------------------------------------------
# statistics on known numbers


def test_paired_p_value_matches_scipy_one_sample_t():
    cand, base, margin = [0.80, 0.86, 0.83], [0.90, 0.89, 0.91], 0.02
    diffs = [c - b for c, b in zip(cand, base)]
    p, df = stats.paired_p_value(diffs, margin)
    expected = scipy_stats.ttest_1samp([d + margin for d in diffs], 0.0, alternative="less").pvalue
    assert df == 2 and p == pytest.approx(expected, rel=1e-9)


def test_welch_p_value_matches_scipy_welch():
    cand, base, margin = [0.80, 0.86, 0.83, 0.81], [0.90, 0.89, 0.91], 0.02
    p, _ = stats.welch_p_value(cand, base, margin)
    expected = scipy_stats.ttest_ind([c + margin for c in cand], base, equal_var=False, alternative="less").pvalue
    assert p == pytest.approx(expected, rel=1e-9)


def test_identical_runs_pass_with_zero_variance():
    q = compare_quality([0.9, 0.8, 0.85], [0.9, 0.8, 0.85], higher_is_better=True)
    assert q.passed and q.p_value == 1.0 and q.shortfall == 0
    assert q.tolerance == pytest.approx(2 * scipy_stats.tstd([0.9, 0.8, 0.85]))


def test_constant_shortfall_beyond_margin_fails_exactly():
    # every seed exactly 0.03 worse: zero variance of the differences, shortfall known exactly
    q = compare_quality([0.87, 0.77, 0.82], [0.9, 0.8, 0.85], higher_is_better=True, tolerance=0.02, hard_bound=0.5)
    assert not q.passed and q.p_value == 0.0 and "p=0 < 0.05" in q.reason


def test_shortfall_within_margin_passes_even_when_consistent():
    q = compare_quality([0.89, 0.79, 0.84], [0.9, 0.8, 0.85], higher_is_better=True, tolerance=0.02)
    assert q.passed and q.shortfall == pytest.approx(0.01) and "within δ" in q.reason


def test_lower_is_better_metrics_are_turned():
    base = [1.00, 1.10, 1.05]  # e.g. bits per byte
    assert not compare_quality([1.30, 1.40, 1.35], base, higher_is_better=False).passed
    better = compare_quality([0.90, 1.00, 0.95], base, higher_is_better=False)
    assert better.passed and better.shortfall == pytest.approx(-0.1) and better.difference == pytest.approx(-0.1)


def test_hard_bound_fails_a_noisy_candidate_the_t_test_cannot_convict():
    cand, base = [0.90, 0.10, 0.90], [0.90, 0.90, 0.90]  # one seed collapsed: huge spread, p > 0.05
    q = compare_quality(cand, base, higher_is_better=True, tolerance=0.05)
    assert q.p_value > 0.05
    assert not q.passed and "hard bound 0.15" in q.reason


def test_one_seed_uses_the_hard_bound_only():
    assert compare_quality([0.88], [0.90], True, tolerance=0.01).passed  # 0.02 worse < 3 x 0.01
    q = compare_quality([0.85], [0.90], True, tolerance=0.01)
    assert not q.passed and q.p_value is None and q.test.startswith("none (n=1)")


def test_default_tolerance_has_a_relative_floor():
    assert default_tolerance([0.9, 0.9, 0.9]) == (pytest.approx(0.009), "1% of |baseline mean|")
    delta, source = default_tolerance([0.80, 0.90, 0.85])
    assert delta == pytest.approx(0.1) and source == "2 x baseline seed std"


@pytest.mark.parametrize("kwargs, message", [
    ({"tolerance": 0.0}, "tolerance must be > 0"),
    ({"test": "mannwhitney"}, "unknown test 'mannwhitney'; known: paired, welch"),
    ({"alpha": 1.5}, "alpha must be in (0, 1)"),
    ({"tolerance": 0.1, "hard_bound": 0.05}, "hard bound"),
])
def test_bad_settings_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compare_quality([0.9, 0.8], [0.9, 0.8], True, **kwargs)


# ---------------------------------------------------------------------------------------------
# verdicts from records (no training)


def _record(seed: int, metric: float | None, status: str = "ok", state: int = 100, step_s: float = 0.01) -> dict:
    return {"seed": seed, "status": status, "error": "RuntimeError: boom" if status == "error" else None,
            "diverged_at_step": 7 if status == "diverged" else None, "hparams": {"lr": 1e-3}, "lr_source": "task",
            "metrics": {"final_metric": metric, "metric_name": "accuracy", "higher_is_better": True},
            "memory": {"optimizer_state_bytes": state, "peak_bytes": None},
            "timing": {"step_s_median": step_s, "optimizer_step_s_median": step_s / 2}}


def _records(values, **kwargs) -> list[dict]:
    return [_record(seed, value, **kwargs) for seed, value in enumerate(values)]


def test_a_diverged_candidate_fails_with_the_step():
    cand = _records([0.9, 0.9]) + [_record(2, None, status="diverged")]
    v = judge_task("digits-mlp", cand, _records([0.9, 0.9, 0.9]), Gates())
    assert v.verdict == "FAIL" and v.quality is None
    assert v.reasons == ["candidate seed 2: diverged at step 7 (non-finite loss or metric)"]


def test_an_errored_baseline_is_an_error_not_a_pass():
    base = _records([0.9, 0.9]) + [_record(2, None, status="error")]
    v = judge_task("digits-mlp", _records([0.9, 0.9, 0.9]), base, Gates())
    assert v.verdict == "ERROR" and "baseline seed 2: error: RuntimeError: boom" in v.reasons[0]


def test_memory_and_time_gates():
    cand, base = _records([0.9, 0.8, 0.85], state=300, step_s=0.05), _records([0.9, 0.8, 0.85])
    assert judge_task("digits-mlp", cand, base, Gates()).verdict == "PASS"  # ratios are shown, not gated
    v = judge_task("digits-mlp", cand, base, Gates(max_memory_ratio=2.0, max_time_ratio=10))
    assert v.verdict == "FAIL" and v.state_ratio == 3.0 and v.step_time_ratio == pytest.approx(5.0)
    assert v.reasons == ["optimizer-state bytes ratio 3x > --max-memory-ratio 2"]
    v = judge_task("digits-mlp", cand, base, Gates(max_time_ratio=4))
    assert v.reasons == ["median step time ratio 5x > --max-time-ratio 4"]


# ---------------------------------------------------------------------------------------------
# end to end on smoke runs


@pytest.fixture(autouse=True)
def _restore_optimizer_registry():
    """Test plugins register broken optimizers on purpose: take them out again afterwards."""
    registry._ensure_loaded()
    before = dict(registry._OPTIMIZERS)
    yield
    registry._OPTIMIZERS.clear()
    registry._OPTIMIZERS.update(before)


@pytest.fixture(scope="session")
def baseline_store(tmp_path_factory) -> Path:
    """AdamW on digits-mlp smoke, seeds 0-2, made once; threads pinned as conftest pins them per test."""
    store = tmp_path_factory.mktemp("baseline-store")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", "--optimizers", "adamw", "--seeds", "0,1,2", "--runs-dir", str(store),
                     "--no-memory-pass", *SMOKE]) == 0
    finally:
        torch.set_num_threads(threads)
    return store


@pytest.fixture
def runs_dir(tmp_path, baseline_store) -> Path:
    runs = tmp_path / "runs"
    shutil.copytree(baseline_store, runs)
    return runs


def _check(runs_dir: Path, *args: str) -> list[str]:
    return ["check", "--seeds", "0,1,2", "--runs-dir", str(runs_dir), "--no-memory-pass", *SMOKE, *args]


def _write_plugin(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body))
    return path


FLIPPED = """
    import torch
    from optbench.registry import register_optimizer
    from optbench.spec import OptimizerSpec


    class FlippedAdamW(torch.optim.AdamW):
        '''AdamW that climbs the loss: the update's sign is flipped (through the gradient's).'''

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.neg_()
            return super().step(closure)


    def build_flipped(model, lr, **hparams):
        return FlippedAdamW(model.parameters(), lr=lr, foreach=False)


    register_optimizer(OptimizerSpec(name="test-check-flipped", family="adam", paper="-", build=build_flipped,
                                     state_bytes=lambda model, **_: 0, default_lr=1e-3))
"""


def test_adamw_passes_against_itself(runs_dir, capsys):
    assert main(_check(runs_dir, "--candidate", "adamw")) == 0
    out = capsys.readouterr().out
    assert "one-sided paired t" in out and "p < 0.05" in out and "3δ" in out  # the rule is stated
    assert "PASS: no regression on digits-mlp" in out
    assert out.count("baseline digits-mlp / adamw / seed") == 0  # candidate == baseline: dropped, run once


def test_an_equivalent_implementation_passes(runs_dir, capsys):
    assert main(_check(runs_dir, "--candidate", "adamw", "--hparam", "impl=forloop")) == 0
    out = capsys.readouterr().out
    assert "reused" in out and "candidate 'adamw' (impl=forloop)" in out
    assert "+0.0000" in out and "PASS" in out


def test_the_readme_example_plugin_passes(runs_dir, capsys):
    # as in the README and the example's docstring, plus a private runs dir
    argv = ["check", "--candidate", "adamw-plain", "--plugin", str(EXAMPLE), "--tasks", "digits-mlp",
            "--preset", "smoke", "--seeds", "0,1,2", "--lr-from-baseline", "--runs-dir", str(runs_dir)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "PASS: no regression on digits-mlp" in out
    assert "1.00x" in out  # same optimizer-state bytes as AdamW, to rounding (no step tensors)
    lr = check.baseline_lr("digits-mlp", "adamw", "smoke")
    assert f"lr candidate {lr:g} (the baseline's: --lr-from-baseline), baseline {lr:g}" in out
    json_path = runs_dir / "verdict.json"
    assert main(argv + ["--reuse-candidate", "--json", str(json_path)]) == 0
    verdict = json.loads(json_path.read_text())
    assert verdict["passed"] and verdict["verdicts"][0]["verdict"] == "PASS" and verdict["ran"] == 0


def test_a_flipped_update_sign_fails(runs_dir, tmp_path, capsys):
    plugin = _write_plugin(tmp_path / "flipped.py", FLIPPED)
    assert main(_check(runs_dir, "--candidate", "test-check-flipped", "--plugin", str(plugin),
                       "--lr-from-baseline")) == 1
    out = capsys.readouterr().out
    assert "FAIL: digits-mlp" in out and "candidate worse by" in out and "hard bound" in out


def test_a_learning_rate_1000x_too_large_fails(runs_dir, capsys):
    # (x100 is no longer too large: the smoke budget's 30 scheduled steps favour a large lr on held-out loss)
    lr = 1000 * check.baseline_lr("digits-mlp", "adamw", "smoke")
    assert main(_check(runs_dir, "--candidate", "adamw", "--hparam", f"lr={lr}")) == 1
    out = capsys.readouterr().out
    assert "FAIL: digits-mlp" in out and f"lr candidate {lr:g} (explicit)" in out


def test_a_diverging_candidate_fails_with_the_reason(runs_dir, tmp_path, capsys):
    plugin = _write_plugin(tmp_path / "nan.py", """
        import torch
        from optbench.registry import register_optimizer
        from optbench.spec import OptimizerSpec


        class NaNAfterFive(torch.optim.SGD):
            def step(self, closure=None):
                out = super().step(closure)
                self.calls = getattr(self, "calls", 0) + 1
                if self.calls == 5:
                    with torch.no_grad():
                        for group in self.param_groups:
                            for p in group["params"]:
                                p.fill_(float("nan"))
                return out


        register_optimizer(OptimizerSpec(name="test-check-nan", family="sgd", paper="-",
                                         build=lambda model, lr, **_: NaNAfterFive(model.parameters(), lr=lr),
                                         state_bytes=lambda model, **_: 0, default_lr=0.05))
    """)
    assert main(_check(runs_dir, "--candidate", "test-check-nan", "--plugin", str(plugin))) == 1
    out = capsys.readouterr().out
    assert "candidate seed 0: diverged at step 6" in out and "FAIL" in out


def test_unknown_candidate_is_a_usage_error(runs_dir, capsys):
    assert main(_check(runs_dir, "--candidate", "adamx")) == 2
    err = capsys.readouterr().err
    assert "unknown optimizer 'adamx'; known:" in err and "adamw" in err


def test_bad_hparam_and_tolerance_are_usage_errors_before_any_run(runs_dir, capsys):
    assert main(_check(runs_dir, "--candidate", "adamw", "--hparam", "bogus=1")) == 2
    assert "unknown hyperparameter 'bogus'" in capsys.readouterr().err
    assert main(_check(runs_dir, "--candidate", "adamw", "--tolerance", "-1")) == 2
    assert "--tolerance must be > 0" in capsys.readouterr().err
    assert main(_check(runs_dir, "--candidate", "adamw", "--tolerance", "0.1", "--hard-bound", "0.05")) == 2
    captured = capsys.readouterr()
    assert "--hard-bound must be > 0 and >= --tolerance, got 0.05" in captured.err
    assert "dropped" not in captured.out and "runs:" not in captured.err  # refused before touching the store


def _stamp_other_hardware(runs_dir: Path, seed: int) -> Path:
    (path,) = (runs_dir / "smoke" / "digits-mlp").glob(f"adamw__s{seed}__*.json")
    record = json.loads(path.read_text())
    record["env"]["device_name"] = "Some Other CPU"
    path.write_text(json.dumps(record))
    return path


def test_a_baseline_from_other_hardware_is_rerun_and_kept_aside(runs_dir, capsys):
    path = _stamp_other_hardware(runs_dir, seed=1)
    assert main(_check(runs_dir, "--candidate", "adamw", "--hparam", "impl=forloop")) == 0
    out = capsys.readouterr().out
    assert "seed 1: stored run measured on another environment (device_name 'Some Other CPU' here" in out
    assert "rerun here" in out and "seed 0: reused" in out
    assert path.with_suffix(".json.otherenv").exists()
    assert json.loads(path.read_text())["env"]["device_name"] != "Some Other CPU"  # rerun on this machine


def test_a_baseline_from_other_hardware_can_be_refused(runs_dir, capsys):
    path = _stamp_other_hardware(runs_dir, seed=2)
    argv = _check(runs_dir, "--candidate", "adamw", "--hparam", "impl=forloop", "--on-env-mismatch", "refuse")
    assert main(argv) == 2
    assert "measured on another environment and --on-env-mismatch is 'refuse'" in capsys.readouterr().err
    assert json.loads(path.read_text())["env"]["device_name"] == "Some Other CPU"  # untouched


# ---------------------------------------------------------------------------------------------
# the entry-point example package


def _fake_install(site: Path) -> None:
    """What `pip install` leaves behind: the package and a dist-info with its entry points."""
    shutil.copytree(ENTRYPOINT_PKG / "src" / "optbench_nadamw", site / "optbench_nadamw")
    dist = site / "optbench_nadamw_example-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: optbench-nadamw-example\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[optbench.optimizers]\nnadamw-example = optbench_nadamw:register\n")


def _listed_via_entry_point(site: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    out = subprocess.run([sys.executable, "-m", "optbench", "list", "--json"], capture_output=True, text=True,
                         env=env, cwd=site, timeout=120, check=True).stdout
    return {row["name"]: row for row in json.loads(out)}


def test_the_entry_point_example_registers_when_installed(tmp_path):
    pyproject = (ENTRYPOINT_PKG / "pyproject.toml").read_text()
    assert '[project.entry-points."optbench.optimizers"]' in pyproject
    assert 'nadamw-example = "optbench_nadamw:register"' in pyproject
    _fake_install(tmp_path)
    listed = _listed_via_entry_point(tmp_path)
    assert listed["nadamw-example"]["available"] and listed["nadamw-example"]["family"] == "adam"


def test_the_entry_point_example_declares_its_exact_state_bytes(tmp_path, monkeypatch):
    _fake_install(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import optbench_nadamw

    from optbench.state import optimizer_state_bytes

    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    opt = optbench_nadamw.build(model, 1e-3)
    model(torch.randn(2, 5)).sum().backward()
    opt.step()
    assert optimizer_state_bytes(opt) == optbench_nadamw.state_bytes(model)


@pytest.mark.slow
def test_the_entry_point_example_installs_with_pip(tmp_path):
    src = tmp_path / "src-copy"
    shutil.copytree(ENTRYPOINT_PKG, src)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                    "--target", str(site), str(src)], check=True, timeout=300)
    assert _listed_via_entry_point(site)["nadamw-example"]["available"]
