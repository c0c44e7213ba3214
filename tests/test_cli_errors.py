"""The CLI's error boundary: every usage error is exit 2 and one line, before anything trains.

One test per numbered defect of issue 12 that the command line shows (6-12; 1 is the SIGINT
test at the end, 2-5 are in test_store.py), plus the minor ones: empty names, ``--debug``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from optbench import cli, registry

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["--tasks", "digits-mlp", "--preset", "smoke", "--no-progress", "--no-memory-pass"]


@pytest.fixture(autouse=True)
def _restore_registry():
    registry._ensure_loaded()
    before = dict(registry._OPTIMIZERS)
    yield
    registry._OPTIMIZERS.clear()
    registry._OPTIMIZERS.update(before)


def cli_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_usage_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def no_records(path: Path) -> bool:
    return not path.exists() or not list(path.rglob("*.json"))


# ---------------------------------------------------------------------------------------------
# 7: unwritable paths are refused before the first cell trains


def test_a_runs_dir_that_is_a_file_or_not_writable(tmp_path, capsys):
    afile = tmp_path / "a-file"
    afile.write_text("")
    code, _, err = cli_main(["run", "--optimizers", "adamw", "--runs-dir", str(afile), *SMOKE], capsys)
    assert_usage_error(code, err, f"--runs-dir '{afile}' is a file")
    for unwritable in (afile / "runs", Path("/proc/optbench-no-such-dir")):
        code, _, err = cli_main(["run", "--optimizers", "adamw", "--runs-dir", str(unwritable), *SMOKE], capsys)
        assert_usage_error(code, err, "--runs-dir", "not writable")


def test_check_json_and_report_out_must_be_writable(tmp_path, capsys):
    runs = tmp_path / "runs"
    code, _, err = cli_main(["check", "--candidate", "adamw", "--seeds", "0", "--runs-dir", str(runs),
                             "--json", str(tmp_path), *SMOKE], capsys)
    assert_usage_error(code, err, "--json", "is a folder")
    assert no_records(runs)
    afile = tmp_path / "a-file"
    afile.write_text("")
    code, _, err = cli_main(["check", "--candidate", "adamw", "--seeds", "0", "--runs-dir", str(runs),
                             "--json", str(afile / "verdict.json"), *SMOKE], capsys)
    assert_usage_error(code, err, "--json", "not writable")
    assert no_records(runs)
    code, _, err = cli_main(["report", "--runs-dir", "results/runs", "--out", str(afile), "--no-plots"], capsys)
    assert_usage_error(code, err, "--out", "is a file")


def test_sweep_out_and_table_must_be_writable(tmp_path, capsys):
    sweep = ["sweep", "--task", "digits-mlp", "--optimizers", "adamw", "--preset", "smoke", "--no-progress",
             "--runs-dir", str(tmp_path / "runs")]
    code, _, err = cli_main([*sweep, "--out", "/proc/optbench-no-such-dir"], capsys)
    assert_usage_error(code, err, "--out", "not writable")
    code, _, err = cli_main([*sweep, "--out", str(tmp_path / "out"), "--table", str(tmp_path)], capsys)
    assert_usage_error(code, err, "--table", "is a folder")
    assert no_records(tmp_path / "runs")


# ---------------------------------------------------------------------------------------------
# 8: devices


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_and_a_bogus_device(tmp_path, capsys):
    code, _, err = cli_main(["run", "--optimizers", "adamw", "--device", "cuda", "--runs-dir", str(tmp_path),
                             *SMOKE], capsys)
    assert_usage_error(code, err, "device 'cuda'", "CUDA is not available", "--device cpu")
    code, _, err = cli_main(["run", "--optimizers", "adamw", "--device", "bogus", "--runs-dir", str(tmp_path),
                             *SMOKE], capsys)
    assert_usage_error(code, err, "unknown device 'bogus'; known: cpu, cuda")
    code, _, err = cli_main(["check", "--candidate", "sgd", "--device", "bogus", "--runs-dir", str(tmp_path),
                             *SMOKE], capsys)
    assert_usage_error(code, err, "unknown device 'bogus'")
    assert no_records(tmp_path)


# ---------------------------------------------------------------------------------------------
# 9 and the minor one: hyperparameter values, typed and range-checked before anything runs


@pytest.mark.parametrize("pair, needles", [
    ("lr=[1]", ["lr=[1]", "a finite number > 0"]),
    ("lr=null", ["lr=null", "a finite number > 0"]),
    ("lr=true", ["lr=true", "a finite number > 0"]),
    ("lr=-1", ["lr=-1", "a finite number > 0"]),
    ("lr=NaN", ["lr=NaN", "a finite number > 0"]),
    ("lr=fast", ["lr=\"fast\""]),
    ("betas=[0.9]", ["betas=[0.9]", "a list of 2 like [0.9, 0.999]"]),
    ("betas=[0.9,1.2]", ["betas=[0.9, 1.2]", "numbers in [0, 1)"]),
    ("weight_decay=-0.1", ["weight_decay=-0.1", ">= 0"]),
    ("impl=3", ["impl=3", "expected a string"]),
    ("momentum=0.9", ["unknown hyperparameter 'momentum' for optimizer 'adamw'; known:"]),
    ("lr", ["--hparam 'lr' is not of the form key=value"]),
])
def test_bad_hyperparameter_values(pair, needles, tmp_path, capsys):
    code, _, err = cli_main(["run", "--optimizers", "adamw", "--hparam", pair, "--runs-dir", str(tmp_path),
                             *SMOKE], capsys)
    assert_usage_error(code, err, *needles)
    assert no_records(tmp_path)


def test_bad_candidate_hyperparameter_in_a_check(tmp_path, capsys):
    code, _, err = cli_main(["check", "--candidate", "adamw", "--hparam", "betas=[0.9]", "--runs-dir",
                             str(tmp_path), *SMOKE], capsys)
    assert_usage_error(code, err, "betas=[0.9]")
    assert no_records(tmp_path)


# ---------------------------------------------------------------------------------------------
# 10: broken plugins


@pytest.mark.parametrize("body, needles", [
    ("def oops(:\n    pass\n", ["failed to load: SyntaxError"]),
    ("raise RuntimeError('no GPU here')\n", ["failed to load: RuntimeError: no GPU here"]),
    ("import sys\nsys.exit(0)\n", ["called sys.exit(0) while loading"]),
])
def test_a_broken_plugin_is_a_usage_error(body, needles, tmp_path, capsys):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(body)
    code, out, err = cli_main(["check", "--candidate", "adamw", "--plugin", str(plugin), "--runs-dir",
                               str(tmp_path / "runs"), *SMOKE], capsys)
    assert_usage_error(code, err, f"plugin '{plugin}'", *needles)
    assert out == "" and no_records(tmp_path / "runs")


def test_debug_shows_the_traceback(tmp_path, capsys):
    plugin = tmp_path / "plugin.py"
    plugin.write_text("raise RuntimeError('no GPU here')\n")
    code, _, err = cli_main(["check", "--candidate", "adamw", "--plugin", str(plugin), "--debug", *SMOKE], capsys)
    assert code == 2 and "Traceback" in err and "RuntimeError: no GPU here" in err
    code, _, err = cli_main(["--debug", "run", "--optimizers", "adamw", "--hparam", "lr=-1", *SMOKE], capsys)
    assert code == 2 and "Traceback" in err and "UsageError" in err


# ---------------------------------------------------------------------------------------------
# 11 and the minor one: empty lists are errors, never 'everything'


@pytest.mark.parametrize("argv, needles", [
    (["run", "--optimizers", "", "--tasks", "digits-mlp"], ["argument --optimizers", "empty list ''", "'all'"]),
    (["run", "--tasks", "", "--optimizers", "adamw"], ["argument --tasks", "empty list ''"]),
    (["run", "--tasks", " , ", "--optimizers", "adamw"], ["argument --tasks", "empty list"]),
    (["check", "--candidate", "adamw", "--tasks", ""], ["argument --tasks", "empty list"]),
    (["run", "--seeds", "", "--optimizers", "adamw"], ["argument --seeds"]),
    (["project", "--model", ""], ["argument --model", "empty list"]),
])
def test_empty_lists_are_usage_errors(argv, needles, tmp_path, capsys):
    code, out, err = cli_main([*argv, "--runs-dir", str(tmp_path)] if argv[0] != "project" else argv, capsys)
    assert_usage_error(code, err, *needles)
    assert no_records(tmp_path) and "legend" not in out.lower()


def test_an_unknown_verb_or_option_is_one_line(capsys):
    code, _, err = cli_main(["runn"], capsys)
    assert_usage_error(code, err, "invalid choice: 'runn'")
    code, _, err = cli_main(["run", "--seeds", "a,b"], capsys)
    assert_usage_error(code, err, "expected comma-separated integers, got 'a,b'")


# ---------------------------------------------------------------------------------------------
# 6: a grid with an errored run exits 1, and a rerun over it says so


BROKEN = """
    from optbench.registry import register_optimizer
    from optbench.spec import OptimizerSpec


    def build(model, lr, **hparams):
        raise RuntimeError("this optimizer cannot be built")


    register_optimizer(OptimizerSpec(name="test-broken", build=build, defaults={}))
"""


def test_a_failed_run_exits_1_and_a_rerun_counts_it(tmp_path, capsys):
    plugin = tmp_path / "broken.py"
    plugin.write_text(textwrap.dedent(BROKEN))
    argv = ["run", "--optimizers", "adamw,test-broken", "--plugin", str(plugin), "--runs-dir", str(tmp_path / "r"),
            *SMOKE]
    code, out, _ = cli_main(argv, capsys)
    assert code == 1 and "2 run(s) done, 0 reused" in out and "1 not ok (0 of them reused)" in out
    assert "test-broken / seed 0: error (RuntimeError: this optimizer cannot be built)" in out
    code, out, _ = cli_main(argv, capsys)
    assert code == 1 and "0 run(s) done, 2 reused" in out and "1 not ok (1 of them reused" in out
    assert "[reused]" in out and "--rerun-failed" in out


def test_a_cell_that_cannot_run_here_is_listed_but_is_not_a_failure(tmp_path, capsys):
    plugin = tmp_path / "elsewhere.py"
    plugin.write_text(textwrap.dedent("""
        import torch
        from optbench.registry import register_optimizer
        from optbench.spec import OptimizerSpec, Requirements

        register_optimizer(OptimizerSpec(
            name="test-elsewhere", build=lambda model, lr: torch.optim.SGD(model.parameters(), lr=lr),
            requires=Requirements(check=lambda: "needs a machine we do not have")))
    """))
    code, out, _ = cli_main(["run", "--optimizers", "test-elsewhere", "--plugin", str(plugin), "--runs-dir",
                             str(tmp_path / "r"), *SMOKE], capsys)
    assert code == 0 and "1 not ok" in out and "unavailable: needs a machine we do not have" in out


# ---------------------------------------------------------------------------------------------
# 12: a closed pipe


def test_a_closed_pipe_ends_quietly(tmp_path):
    # The reader goes away before optbench writes (as `optbench tasks | head` can): no traceback.
    proc = subprocess.Popen([sys.executable, "-m", "optbench", "tasks"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode == cli.EXIT_BROKEN_PIPE


# ---------------------------------------------------------------------------------------------
# 1: Ctrl-C in the middle of a check loses no record


def _default_sigint() -> None:
    """In the child: Ctrl-C's default action. A shell that starts the suite in the background (``cmd &``)
    ignores SIGINT, every child inherits that, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_during_a_check_keeps_every_record(tmp_path):
    """Baseline and candidate runs are stored; a check reruns the candidate; SIGINT once it has rewritten one.

    Before the fix, the check deleted the candidate's records before rerunning them, so a Ctrl-C
    lost the ones not yet redone. Now every record stored before is still there, and every one
    finished since is a complete record.
    """
    from optbench.runner import make_cells, run_grid

    runs, seeds = tmp_path / "runs", [0, 1, 2, 3, 4]
    assert torch.get_num_threads() == 1  # conftest: the same threads as the check below, so baselines are reused
    run_grid(make_cells(["digits-mlp"], ["adamw", "sgd"], seeds), preset="smoke", runs_dir=runs, progress=False,
             measure_memory_pass=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    before = {p: json.loads(p.read_text()) for p in runs.rglob("*.json")}
    assert len(before) == 10
    started = time.time()
    time.sleep(1.1)  # mtimes of records rewritten from now on are later than every stored one
    proc = subprocess.Popen([sys.executable, "-m", "optbench", "check", "--candidate", "sgd", "--seeds", "0,1,2,3,4",
                             "--runs-dir", str(runs), *SMOKE], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=_default_sigint)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if any(p.stat().st_mtime > started + 1 for p in before):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the check ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == cli.EXIT_INTERRUPTED, err.decode()
    after = {p: json.loads(p.read_text()) for p in runs.rglob("*.json")}
    assert set(after) == set(before)  # every record stored before the check is still there
    redone = [p for p in after if after[p]["timing"]["wall_s"] != before[p]["timing"]["wall_s"]]
    assert redone and all("sgd" in p.name for p in redone)  # finished since: complete candidate records
    assert len(redone) < 5  # interrupted midway, not after the last candidate run
    assert not list(runs.rglob("*.tmp")) and not list(runs.rglob("*.corrupt"))
