"""The Ray executor on a real local Ray instance: records equal to local, killed workers, Ctrl-C and resume.

One Ray instance (2 CPUs) serves the module; every grid is digits-mlp on the smoke preset.
conftest pins torch to 1 thread, so each Ray run asks for 1 CPU and two run at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import ray

from optbench import registry
from optbench.cli import main
from optbench.env import timing_key
from optbench.executors import NodeOccupancy, RayExecutor, _load_plugins
from optbench.runner import Cell, make_cells, run_grid

SMOKE = ["--tasks", "digits-mlp", "--preset", "smoke", "--no-progress"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _restore_optimizer_registry():
    """Test plugins register optimizers: take them out again afterwards."""
    registry._ensure_loaded()
    before = dict(registry._OPTIMIZERS)
    yield
    registry._OPTIMIZERS.clear()
    registry._OPTIMIZERS.update(before)


def _records(runs_dir: Path) -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in sorted(runs_dir.rglob("*.json"))}


def test_ray_records_equal_the_local_executors(local_ray, tmp_path):
    grid = ["run", *SMOKE, "--optimizers", "adamw,sgd", "--seeds", "0,1", "--no-memory-pass"]
    assert main([*grid, "--executor", "ray", "--runs-dir", str(tmp_path / "ray")]) == 0
    assert main([*grid, "--runs-dir", str(tmp_path / "local")]) == 0
    on_ray, local = _records(tmp_path / "ray"), _records(tmp_path / "local")
    assert len(on_ray) == 4 and on_ray.keys() == local.keys()  # same run keys, so the same file names
    for name, record in on_ray.items():
        assert record["status"] == "ok", record["error"]
        for section in ("hparams", "metrics", "curve", "memory", "budget"):
            assert record[section] == local[name][section], f"{name}: {section} differs"
        assert record["env"]["threads"] == local[name]["env"]["threads"] == 1
        assert record["timing"]["concurrent_runs"] in (1, 2)  # two 1-CPU runs fit the 2-CPU instance
        assert local[name]["timing"]["concurrent_runs"] == 1


DYING = '''
    import os
    import signal
    from pathlib import Path

    import torch

    from optbench.registry import register_optimizer
    from optbench.spec import OptimizerSpec


    class DyingSGD(torch.optim.SGD):
        """SGD whose process is killed at its 3rd step on each of its first ``deaths`` attempts."""

        def __init__(self, params, lr, attempts_dir, deaths):
            super().__init__(params, lr=lr)
            folder = Path(attempts_dir)
            folder.mkdir(parents=True, exist_ok=True)
            self.attempt = len(list(folder.iterdir())) + 1
            (folder / f"attempt-{self.attempt}").touch()
            self.deaths, self.steps = deaths, 0

        def step(self, closure=None):
            self.steps += 1
            if self.steps == 3 and self.attempt <= self.deaths:
                os.kill(os.getpid(), signal.SIGKILL)
            return super().step(closure)


    register_optimizer(OptimizerSpec(
        name="test-ray-dying", default_lr=0.05, defaults={"attempts_dir": "", "deaths": 0},
        build=lambda model, lr, attempts_dir, deaths: DyingSGD(model.parameters(), lr, attempts_dir, deaths)))
'''


def test_a_killed_worker_is_retried_then_recorded_as_an_error(local_ray, tmp_path):
    plugin = tmp_path / "dying.py"
    plugin.write_text(textwrap.dedent(DYING))
    registry.load_plugin(plugin)
    attempts = tmp_path / "attempts"
    cells = [Cell("digits-mlp", "test-ray-dying", 0, {"attempts_dir": str(attempts), "deaths": 99}),
             Cell("digits-mlp", "sgd", 0)]
    outcome = run_grid(cells, preset="smoke", runs_dir=tmp_path / "runs", executor=RayExecutor(max_retries=1),
                       progress=False, measure_memory_pass=False)
    assert len(list(attempts.iterdir())) == 2  # killed mid-run, retried once, killed again: given up
    assert [r["status"] for r in outcome.records] == ["error", "ok"]  # and the grid went on
    error = outcome.records[0]["error"]
    assert "died on each of 2 attempts (1 retries)" in error and "WorkerCrashedError" in error
    assert sorted(r["status"] for r in _records(tmp_path / "runs").values()) == ["error", "ok"]


class _InterruptedAfterFirstRecord:
    """Ctrl-C on the driver while the grid waits for its second record."""

    name = "ray"

    def __init__(self, inner: RayExecutor) -> None:
        self.inner = inner

    def execute(self, cells, settings):
        with contextlib.closing(self.inner.execute(cells, settings)) as runs:
            for item in runs:
                yield item
                raise KeyboardInterrupt

    def close(self) -> None:
        self.inner.close()


def test_ctrl_c_keeps_finished_records_cancels_the_rest_and_a_rerun_resumes(local_ray, tmp_path):
    cells = make_cells(["digits-mlp"], ["adamw", "sgd"], [0])  # both start at once on the 2 CPUs
    runs_dir = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        run_grid(cells, preset="smoke", runs_dir=runs_dir, executor=_InterruptedAfterFirstRecord(RayExecutor()),
                 progress=False, measure_memory_pass=False)
    assert len(_records(runs_dir)) == 1
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)  # cancelled runs give their CPUs back
    assert ray.available_resources().get("CPU", 0) == 2
    assert len(_records(runs_dir)) == 1  # nothing cancelled was written later
    outcome = run_grid(cells, preset="smoke", runs_dir=runs_dir, executor=RayExecutor(), progress=False,
                       measure_memory_pass=False)
    assert (outcome.reused, outcome.ran) == (1, 1)
    assert [r["status"] for r in outcome.records] == ["ok"] * 2


def test_ray_usage_errors_exit_2_before_any_run(local_ray, tmp_path, capsys):
    grid = ["run", *SMOKE, "--optimizers", "sgd", "--runs-dir", str(tmp_path)]
    assert main([*grid, "--executor", "ray", "--threads", "64"]) == 2
    assert "--threads 64" in capsys.readouterr().err
    assert main([*grid, "--address", "auto"]) == 2  # an address without --executor ray
    assert "--address 'auto' needs --executor ray" in capsys.readouterr().err
    assert main([*grid, "--executor", "ray", "--threads", "0"]) == 2
    assert not list(tmp_path.rglob("*.json"))


# ---------------------------------------------------------------------------------------------
# the pieces, without Ray


def test_node_occupancy_counts_runs_together_and_drops_dead_ones(tmp_path):
    occupancy, alive = NodeOccupancy("grid", folder=tmp_path), os.getpid()
    occupancy.enter("a", alive)
    occupancy.enter("b", alive)
    assert occupancy.leave("a") == 2
    occupancy.enter("c", alive)
    assert occupancy.leave("b") == 2
    assert occupancy.leave("c") == 2  # b was still in when c entered
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    occupancy.enter("killed", dead.pid)  # a worker that died without leaving...
    occupancy.enter("d", alive)  # ...is dropped by the next run that enters
    assert occupancy.leave("d") == 1


def test_plugins_travel_as_text_to_a_worker_without_the_file():
    source = textwrap.dedent('''
        import torch
        from optbench.registry import register_optimizer
        from optbench.spec import OptimizerSpec

        register_optimizer(OptimizerSpec(name="test-ray-shipped",
                                         build=lambda model, lr: torch.optim.SGD(model.parameters(), lr=lr)))
    ''')
    _load_plugins([("/nowhere/on/this/node/shipped.py", source)])
    assert registry.get_optimizer("test-ray-shipped").name == "test-ray-shipped"


def test_step_times_compare_within_the_same_hardware_and_concurrency():
    env = {"device": "cpu", "device_name": "x", "cpu": "x", "torch": "2", "threads": 1}
    alone = {"env": env, "timing": {"step_s_median": 0.1}}  # written before executors: ran alone
    assert timing_key(alone) == timing_key({"env": env, "timing": {"concurrent_runs": 1}})
    assert timing_key(alone) != timing_key({"env": env, "timing": {"concurrent_runs": 2}})


def test_the_gate_compares_step_times_only_at_the_same_concurrency():
    from optbench.gate import Gates, judge_task

    def record(seed: int, together: int, step_s: float) -> dict:
        return {"seed": seed, "status": "ok", "error": None, "diverged_at_step": None, "hparams": {"lr": 1e-3},
                "metrics": {"final_metric": 0.5, "metric_name": "loss", "higher_is_better": False},
                "memory": {"optimizer_state_bytes": 100, "peak_bytes": None},
                "timing": {"step_s_median": step_s, "optimizer_step_s_median": step_s / 2,
                           "concurrent_runs": together}}

    base = [record(0, 1, 0.01), record(1, 1, 0.01)]
    alone = judge_task("digits-mlp", [record(0, 1, 0.02), record(1, 1, 0.02)], base, Gates())
    assert alone.step_time_ratio == pytest.approx(2.0) and not alone.flags
    shared = judge_task("digits-mlp", [record(0, 2, 0.02), record(1, 1, 0.02)], base, Gates(max_time_ratio=3))
    assert shared.step_time_ratio is None and shared.optimizer_step_time_ratio is None
    assert shared.verdict == "FAIL" and "concurrent_runs" in shared.reasons[0]
    assert any("step times not compared" in flag for flag in shared.flags)
