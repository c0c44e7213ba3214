"""Wall time of the default bench's grid: local executor (torch's threads) against Ray (N workers x 1 thread).

    python -m benchmarks.executor_walltime                       # the default bench grid, seed 0
    python -m benchmarks.executor_walltime --preset smoke --out /tmp/x.md --tasks digits-mlp   # a quick try

Runs the same ``optbench run`` grid twice, each in its own process and its own scratch run
store, timed end to end (interpreter start, Ray's start and stop included): once with the
local executor and torch's default threads (all cores), once with ``--executor ray
--threads 1`` (as many runs at once as there are cores). Then it compares the two sets of
records cell by cell: the median step time under Ray against local, and how many runs
shared a node (``timing.concurrent_runs``). The machine must be otherwise idle: the figure
is about this grid sharing the cores with itself, not with other work.

Other arguments go to both ``optbench run`` commands. Writes a markdown table with the
commands that made it (default ``results/EXECUTORS.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "optbench", *argv], check=True)
    return time.perf_counter() - start


def records(runs_dir: Path) -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in runs_dir.rglob("*.json")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="results/EXECUTORS.md")
    args, run_args = parser.parse_known_args()
    scratch = Path(tempfile.mkdtemp(prefix="optbench-executors-"))
    grid = ["run", "--preset", args.preset, "--seeds", args.seeds, "--no-progress", *run_args]
    local_cmd = [*grid, "--runs-dir", str(scratch / "local")]
    ray_cmd = [*grid, "--runs-dir", str(scratch / "ray"), "--executor", "ray", "--threads", "1"]
    local_s, ray_s = timed_run(local_cmd), timed_run(ray_cmd)
    local, on_ray = records(scratch / "local"), records(scratch / "ray")
    ratios = [on_ray[name]["timing"]["step_s_median"] / record["timing"]["step_s_median"]
              for name, record in local.items()
              if name in on_ray and record["status"] == on_ray[name]["status"] == "ok"]
    together = [r["timing"].get("concurrent_runs") or 1 for r in on_ray.values()]
    rows = [
        "| executor | runs | wall time | median step time vs local | runs per node at once |",
        "| --- | --- | --- | --- | --- |",
        f"| local, {local_threads(local)} threads | {len(local)} | {local_s / 60:.1f} min | 1 | 1 |",
        f"| ray, {os.cpu_count()} workers x 1 thread | {len(on_ray)} | {ray_s / 60:.1f} min "
        f"({ray_s / local_s:.2f}x local) | {statistics.median(ratios):.2f}x (median over {len(ratios)} cells) "
        f"| {min(together)}{'' if min(together) == max(together) else f'-{max(together)}'} |",
    ]
    text = "\n".join([
        f"# Executors: wall time of the `{args.preset}` grid on {os.cpu_count()} cores", "",
        *rows, "",
        "Made by `python -m benchmarks.executor_walltime "
        + shlex.join(sys.argv[1:]) + "`, which ran (run stores in a scratch folder):", "",
        f"    optbench {shlex.join(local_cmd)}", f"    optbench {shlex.join(ray_cmd)}", "",
    ])
    shutil.rmtree(scratch)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


def local_threads(local: dict[str, dict]) -> str:
    return ",".join(sorted({str(r["env"]["threads"]) for r in local.values()}))


if __name__ == "__main__":
    raise SystemExit(main())
