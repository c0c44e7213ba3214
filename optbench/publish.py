"""``nox -s publish``: regenerate everything published, and state the compute it took.

Three steps, each an optbench command printed before it runs, each resumable through the run
store (an interrupted publish picks up where it stopped and reruns nothing finished):

1. ``optbench sweep`` per task: every task of the preset's tier x every available optimizer,
   by the tuning protocol (``optbench.sweep``) -> ``results/sweeps/<preset>/``, ``tasks/tuned_lrs.json``;
2. ``optbench run``: the board, every task x optimizer x the task's board seeds (``TaskSpec.board_seeds``:
   seeds 0..n-1, at least 5) at the tuned lrs -> ``results/runs/``;
3. ``optbench report`` (``--html`` too when the verb offers it) -> ``results/``.

Then the compute: the sum of ``wall_s`` (training plus memory pass, as each record states it)
over every run the sweeps and the board hold, printed and written to ``results/COMPUTE.md``.
That is the cost of the published results, whichever invocation ran which part of it.

``--executor ray --threads 1`` spreads the sweeps' runs over the machine's cores (the sweeps
rank lrs by loss, which contention does not change); the board always runs locally, one run
after another, because its records carry step times.

``--smoke`` runs the same pipeline end to end in minutes: smoke preset, digits-mlp, adamw and
sgd, a 3-lr starting grid, 2 board seeds, everything (tuned-lr table included) under
``results/runs-scratch/publish-smoke/``; the published files are left alone. A table other than
``tasks/tuned_lrs.json`` reaches the board's runs through ``OPTBENCH_TUNED_LRS`` (``optbench.lrs``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from optbench.errors import UsageError
from optbench.sweep import Protocol

SMOKE_DIR = Path("results/runs-scratch/publish-smoke")
SMOKE = {"preset": "smoke", "tasks": "digits-mlp", "optimizers": "adamw,sgd", "points": 3, "seeds": "0,1",
         "out": str(SMOKE_DIR)}
TABLE_ENV = "OPTBENCH_TUNED_LRS"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    protocol = Protocol()
    parser = argparse.ArgumentParser(prog="nox -s publish --", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the whole pipeline in minutes, under " + str(SMOKE_DIR))
    parser.add_argument("--preset", default=None, help="smoke | cpu | gpu (default: cpu)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: every task of the tier)")
    parser.add_argument("--optimizers", default=None, help="comma-separated optimizers (default: all available)")
    parser.add_argument("--seeds", default=None,
                        help="board seeds for every task (default: each task's board_seeds, seeds 0..n-1)")
    parser.add_argument("--points", type=int, default=None, help=f"sweep grid size (default: {protocol.points})")
    parser.add_argument("--out", default=None, help="results root (default: results)")
    parser.add_argument("--table", default=None,
                        help="tuned-lr table (default: tasks/tuned_lrs.json; <out>/tuned_lrs.json with --smoke)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the preset's)")
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="how the sweeps' runs execute (ray: several at once). The board always runs locally, "
                             "one run after another, so that its step times are not measured under contention")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per sweep run; under ray also the CPUs each asks for")
    parser.add_argument("--address", default=None, help="with --executor ray: the cluster to join")
    parser.add_argument("--command", default=None, help="how this publish was started, for the report's header")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else {}).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.preset = args.preset or "cpu"
    args.out = Path(args.out or "results")
    if args.table is None and args.smoke:
        args.table = str(args.out / "tuned_lrs.json")
    return args


def resolve_names(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The tasks and optimizers, named or defaulted; bad names raise before anything runs."""
    from optbench import registry
    from optbench.commands._common import csv_list, expand_optimizers, expand_tasks
    from optbench.env import default_device

    registry.check_preset(args.preset)
    tasks = expand_tasks(csv_list(args.tasks) if args.tasks else None, args.preset)
    device = args.device or default_device(args.preset)
    return tasks, expand_optimizers(csv_list(args.optimizers) if args.optimizers else None, device)


def report_offers_html() -> bool:
    from optbench.commands import report

    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    return "--html" in parser._option_string_actions


def step(argv: list[str], env: dict[str, str]) -> int:
    """Run one optbench command in its own process; a usage error (exit 2) or a crash stops the publish."""
    print(f"\n$ optbench {shlex.join(argv)}", flush=True)
    code = subprocess.run([sys.executable, "-m", "optbench", *argv], env=env).returncode
    if code not in (0, 1):  # 1: some run failed (diverged, errored): a result, which the report shows
        raise SystemExit(f"publish: `optbench {argv[0]}` exited {code}; stopping (rerun to resume)")
    return code


# ---------------------------------------------------------------------------------------------
# The compute the published results took


@dataclass
class Compute:
    task: str
    sweep_runs: int = 0
    sweep_s: float = 0.0
    board_runs: int = 0
    board_s: float = 0.0


def sweep_compute(sweeps_out: Path, preset: str, task: str, optimizers: Sequence[str]) -> tuple[int, float]:
    """Runs and summed wall_s of the task's sweep CSV rows for these optimizers."""
    from optbench.sweep_files import read_csv

    path = sweeps_out / preset / f"{task}.csv"
    trials = [t for name, r in read_csv(path).items() if name in optimizers for t in r.trials] if path.exists() else []
    return len(trials), sum(t.wall_s or 0.0 for t in trials)


def board_compute(runs_dir: Path, preset: str, task: str, optimizers: Sequence[str], seeds: Sequence[int],
                  tuned: dict[str, float]) -> tuple[int, float]:
    """Runs and summed wall_s of the board's records: these optimizers and seeds, at the lr the board ran
    (the tuned lr; the starting lr where the sweep chose none)."""
    runs, total = 0, 0.0
    for path in sorted((runs_dir / preset / task).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        name, lr = record.get("optimizer"), (record.get("hparams") or {}).get("lr")
        if name not in optimizers or record.get("seed") not in seeds:
            continue
        ran_at_board_lr = lr == tuned[name] if name in tuned else record.get("lr_source") in ("task", "optimizer")
        if not ran_at_board_lr:
            continue
        runs += 1
        total += (record.get("timing") or {}).get("wall_s") or 0.0
    return runs, total


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def compute_report(rows: Sequence[Compute], command: str, elapsed_s: float) -> str:
    from tabulate import tabulate

    table = [[r.task, r.sweep_runs, hours(r.sweep_s), r.board_runs, hours(r.board_s), hours(r.sweep_s + r.board_s)]
             for r in rows]
    sweep_s, board_s = sum(r.sweep_s for r in rows), sum(r.board_s for r in rows)
    table.append(["**total**", sum(r.sweep_runs for r in rows), hours(sweep_s), sum(r.board_runs for r in rows),
                  hours(board_s), f"**{hours(sweep_s + board_s)}**"])
    return "\n".join([
        "# Compute of the published results", "",
        f"Made by `{command}`. Each figure sums the runs' own `timing.wall_s` (training plus the memory "
        "pass, on the machine each record names), over every run the sweeps' CSVs and the board hold; runs "
        "reused from an earlier, interrupted invocation count too. The invocation that wrote this file took "
        f"{hours(elapsed_s)} of wall time.", "",
        tabulate(table, headers=["task", "sweep runs", "sweep", "board runs", "board", "total"],
                 tablefmt="github", disable_numparse=True), ""])


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    tasks, optimizers = resolve_names(args)
    seeds = board_seeds(tasks, args.seeds)
    protocol = Protocol(points=args.points or Protocol().points)
    env = dict(os.environ)
    if args.table:
        env[TABLE_ENV] = str(Path(args.table).resolve())
    sweeps_out, runs_dir = args.out / "sweeps", args.out / "runs"
    common = ["--preset", args.preset] + (["--device", args.device] if args.device else [])
    quiet = ["--no-progress"] if args.no_progress else []
    given = list(sys.argv[1:] if argv is None else argv)
    command = args.command or shlex.join(["python", "-m", "optbench.publish", *given])
    print(f"publish: {len(tasks)} task(s) x {len(optimizers)} optimizer(s); sweeps then the board ("
          + ", ".join(f"{task} {len(seeds[task])} seeds" for task in tasks)
          + f"), preset {args.preset}, into {args.out}")
    spread = ["--executor", args.executor] + (["--threads", str(args.threads)] if args.threads else []) + (
        ["--address", args.address] if args.address else [])
    for task in tasks:
        step(["sweep", "--task", task, "--optimizers", ",".join(optimizers), "--points", str(protocol.points),
              "--runs-dir", str(sweeps_out / "runs"), "--out", str(sweeps_out),
              *(["--table", args.table] if args.table else []), *common, *spread, *quiet], env)
    for group_seeds, group in seed_groups(tasks, seeds):
        step(["run", "--tasks", ",".join(group), "--optimizers", ",".join(optimizers),
              "--seeds", ",".join(map(str, group_seeds)), "--runs-dir", str(runs_dir), *common, *quiet], env)
    tuned = read_table(Path(env.get(TABLE_ENV) or _default_table()), args.preset)
    board = {task: board_compute(runs_dir, args.preset, task, optimizers, seeds[task], tuned.get(task, {}))
             for task in tasks}
    held, wanted = sum(runs for runs, _ in board.values()), sum(len(optimizers) * len(seeds[t]) for t in tasks)
    if held < wanted:  # `run` exits 1 both for a failed run and for a crash
        raise SystemExit(f"publish: the board holds {held} of {wanted} runs; stopping (rerun to resume)")
    step(["report", "--preset", args.preset, "--runs-dir", str(runs_dir), "--out", str(args.out),
          "--command", command, *(["--html"] if report_offers_html() else [])], env)

    rows = []
    for task in tasks:
        row = Compute(task, board_runs=board[task][0], board_s=board[task][1])
        row.sweep_runs, row.sweep_s = sweep_compute(sweeps_out, args.preset, task, optimizers)
        rows.append(row)
    text = compute_report(rows, command, time.perf_counter() - started)
    path = args.out / "COMPUTE.md"
    path.write_text(text)
    total = sum(r.sweep_s + r.board_s for r in rows)
    print(f"\npublish: total compute {hours(total)} ({total:.0f} s summed over "
          f"{sum(r.sweep_runs + r.board_runs for r in rows)} runs); wrote {path}")
    return 0


def board_seeds(tasks: Sequence[str], given: str | None) -> dict[str, list[int]]:
    """The board's seeds per task: ``--seeds`` for every task when given, else each task's ``board_seeds``."""
    from optbench import registry

    if given is not None:
        try:
            seeds = [int(s) for s in given.split(",") if s.strip()]
        except ValueError:
            raise UsageError(f"--seeds must be comma-separated integers, got {given!r}") from None
        if not seeds:
            raise UsageError(f"--seeds must name at least one seed, got {given!r}")
        return {task: seeds for task in tasks}
    return {task: list(range(registry.get_task(task).board_seeds)) for task in tasks}


def seed_groups(tasks: Sequence[str], seeds: dict[str, list[int]]) -> list[tuple[list[int], list[str]]]:
    """Tasks that share their seeds, in the tasks' order: one ``optbench run`` per group."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for task in tasks:
        groups.setdefault(tuple(seeds[task]), []).append(task)
    return [(list(key), group) for key, group in groups.items()]


def read_table(path: Path, preset: str) -> dict[str, dict[str, float]]:
    return json.loads(path.read_text()).get(preset, {}) if path.exists() else {}


def _default_table() -> Path:
    from optbench.lrs import TUNED_LRS_PATH

    return TUNED_LRS_PATH


def cli() -> int:
    """``python -m optbench.publish``: a bad name or value is one line and exit 2, before anything runs."""
    try:
        return main()
    except ValueError as exc:  # UsageError and the registry's unknown names
        print(f"publish: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(cli())
