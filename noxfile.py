"""Sessions: tests, bench, lint, microbench, check, sweep, publish, studies, projection.

Every session but lint shares one environment (``.nox/optbench-env``): torch is several GB,
so it is installed once, and reinstalled only when pyproject.toml changes (a stamp file holds
its hash). ``nox -s bench -- ARGS`` passes ARGS to ``optbench run`` and then writes the report.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
ROOT = Path(__file__).resolve().parent
ENV = ROOT / ".nox" / "optbench-env"
BIN = ENV / ("Scripts" if sys.platform == "win32" else "bin")


def optbench_env(session: nox.Session) -> Path:
    """Create (once) and update (when pyproject.toml changes) the shared environment; return its python."""
    python = BIN / "python"
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(ENV), external=True)
    stamp = ENV / "optbench-install.stamp"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != want:
        session.run(str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip", external=True)
        session.run(str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test]", external=True)
        stamp.write_text(want)
    else:
        session.log(f"reusing {ENV} (pyproject.toml unchanged)")
    return python


def run_in_env(session: nox.Session, *args: str) -> None:
    session.run(str(optbench_env(session)), *args, external=True)


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The test suite (CPU, minutes). Extra arguments go to pytest, e.g. `-- -m slow`."""
    run_in_env(session, "-m", "pytest", *(session.posargs or ["-q"]))


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """The default leaderboard: `optbench run` with the given arguments, then `optbench report --html` (markdown,
    CSVs, plots and the site in results/site/)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--runs-dir", default="results/runs")
    known, _ = parser.parse_known_args(session.posargs)
    run_args = list(session.posargs)
    if "--preset" not in run_args:
        run_args += ["--preset", known.preset]
    run_in_env(session, "-m", "optbench", "run", *run_args)
    run_in_env(session, "-m", "optbench", "report", "--preset", known.preset, "--runs-dir", known.runs_dir,
               "--out", "results", "--html", "--command",
               shlex.join(["nox", "-s", "bench", *(["--", *session.posargs] if session.posargs else [])]))


@nox.session(venv_backend="none")
def microbench(session: nox.Session) -> None:
    """One optimizer.step() per optimizer (pytest-benchmark) against the committed baseline, then the ratio tables.

    The step-time gate fails when an optimizer's fastest step (min over rounds) is more than 50% slower than
    the baseline in benchmarks/baseline/ (taken on the 2-core CPU machine; compare like with like).
    `nox -s microbench -- --benchmark-save=baseline` records a new baseline instead.
    """
    args = session.posargs or ["--benchmark-compare", "--benchmark-compare-fail=min:50%"]
    run_in_env(session, "-m", "pytest", "benchmarks/test_step_time.py", "-p", "no:cacheprovider",
               "--benchmark-storage=benchmarks/baseline", *args)
    for model in ("topics", "25m"):  # the task's GPT and the 27M-parameter one (issue 13)
        run_in_env(session, "-m", "benchmarks.optimizer_ratios", "--model", model)
        run_in_env(session, "-m", "benchmarks.microadam_floor", "--model", model)  # its library calls' floor


@nox.session(venv_backend="none")
def check(session: nox.Session) -> None:
    """The regression gate: `optbench check` with the given arguments, e.g. `-- --candidate NAME --plugin FILE.py`."""
    run_in_env(session, "-m", "optbench", "check", *session.posargs)


@nox.session(venv_backend="none")
def projection(session: nox.Session) -> None:
    """Memory projection of every optimizer on the built-in model shapes -> results/PROJECTION.md."""
    run_in_env(session, "-m", "optbench", "project", "--model", "builtin", "--out", "results/PROJECTION.md",
               "--command", "nox -s projection", *session.posargs)


def registered_tasks(session: nox.Session, tier: str = "cpu") -> list[str]:
    """The names of the registered tasks of ``tier``, read from optbench's registry (``optbench tasks --json``)."""
    out = subprocess.run([str(optbench_env(session)), "-m", "optbench", "tasks", "--json"], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return [task["name"] for task in json.loads(out) if task["tier"] == tier]


@nox.session(venv_backend="none")
def sweep(session: nox.Session) -> None:
    """Learning-rate sweeps (the tuning protocol) of every available optimizer on every CPU task ->
    tasks/tuned_lrs.json,
    results/sweeps/cpu/."""
    for task in registered_tasks(session):
        run_in_env(session, "-m", "optbench", "sweep", "--task", task, "--preset", "cpu", *session.posargs)


@nox.session(venv_backend="none")
def publish(session: nox.Session) -> None:
    """Everything published, regenerated: sweeps, the board at the tuned lrs (5 seeds), the report; resumable; writes
    its total compute time to results/COMPUTE.md. `-- --smoke`: the whole pipeline in minutes, in
    results/runs-scratch/."""
    run_in_env(session, "-m", "optbench.publish", "--command",
               shlex.join(["nox", "-s", "publish", *(["--", *session.posargs] if session.posargs else [])]),
               *session.posargs)


@nox.session(venv_backend="none")
def snr_rules(session: nox.Session) -> None:
    """Regenerate optimizers/rules/<task>.json for every CPU task (slimadam-snr reads them)."""
    for task in registered_tasks(session):
        run_in_env(session, "-m", "optbench", "snr", "--task", task, "--preset", "cpu", "--threads", "1",
                   "--out", f"results/snr/rules/{task}", "--rules-out", f"optimizers/rules/{task}.json")


@nox.session(venv_backend="none")
def studies(session: nox.Session) -> None:
    """Every SNR study at 3 seeds per arm -> results/snr (tables, plots; run records in results/snr/runs/, so an
    interrupted session resumes). Reads the tuned lrs of tasks/tuned_lrs.json: run it after the sweeps.
    `-- --dry-run` lists the planned runs; `-- --preset smoke --out DIR` for a quick check elsewhere."""
    run_in_env(session, "-m", "optbench", "study", "all", "--preset", "cpu", "--out", "results/snr", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole project."""
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(venv_backend="none")
def gpu_check(session: nox.Session) -> None:
    """Every optimizer on every GPU-tier task, briefly -> results/gpu/ (python -m optbench.gpu_check).

    `-- --device cpu` runs the same code on the CPU with the smoke budgets. On a lent GPU machine,
    which has no nox and no network, run gpu/run_on_gpu.sh instead (results/gpu/README.md).
    """
    run_in_env(session, "-m", "optbench.gpu_check", *session.posargs)
