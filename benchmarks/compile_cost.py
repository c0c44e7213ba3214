"""What compiling our own optimizers' steps costs: the first step, cold and with a warm cache.

    python -m benchmarks.compile_cost [--model topics|25m] [--optimizers slimadam,smmf,microadam] [--json FILE]
    python -m benchmarks.compile_cost --render FILE.json [--out FILE.md]

Issue 13 asks for the compiled step to be the default where it is correct and faster; the
registered optimizers still step eagerly because compiling costs time on a CPU (see their
docstrings). This measures that cost. For each optimizer, two fresh processes build it with
``compile=True`` on the model (gradients from one forward/backward, as in
``benchmarks.optimizer_ratios``) and time its first step, which compiles, and the median of the
next five steps:

- ``cold``: with an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR`` a new directory), as on a
  fresh machine;
- ``warm``: a second process on the same cache, as every later run of a grid on one machine
  (dynamo still traces; inductor's compiled graphs come from the cache).

A cell that fell back to the eager step (a compile failure) says so in ``impl``. ``--render``
prints (or writes, ``--out``) the markdown table of a run's JSON, with its command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabulate import tabulate

OURS = ("slimadam", "smmf", "microadam")
AFTER = 5  # steps timed after the first


def measure_one(model_name: str, name: str) -> dict:
    """In this process: the first step's seconds, the median of the next ``AFTER``, and the step's impl."""
    import torch

    from benchmarks.optimizer_ratios import build, fill_gradients
    from optbench.registry import optimizers

    spec = optimizers()[name]
    model = build(model_name, "cpu")
    fill_gradients(model)
    optimizer = spec.build(model, spec.default_lr, **(spec.resolve_hparams() | {"compile": True}))
    start = time.perf_counter()
    optimizer.step()
    first = time.perf_counter() - start
    after = []
    for _ in range(AFTER):
        start = time.perf_counter()
        optimizer.step()
        after.append(time.perf_counter() - start)
    return {"first_s": first, "step_ms": statistics.median(after) * 1e3,
            "impl": getattr(optimizer, "optbench_impl", None), "threads": torch.get_num_threads()}


def run_child(model_name: str, name: str, cache_dir: str) -> dict:
    from optbench.optimizers._common import COMPILE_ENV

    # OPTBENCH_COMPILE=0 (the test suite's setting) would make every step eager: this measures compiling.
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir, **{COMPILE_ENV: "1"})
    out = subprocess.run([sys.executable, "-m", "benchmarks.compile_cost", "--child", model_name, name],
                         env=env, capture_output=True, text=True, check=False,
                         cwd=Path(__file__).resolve().parent.parent)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from benchmarks.optimizer_ratios import MODELS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="topics", help=f"one of {', '.join(MODELS)} (default topics)")
    parser.add_argument("--optimizers", default=",".join(OURS), help=f"comma-separated, from {', '.join(OURS)}")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON to this file")
    parser.add_argument("--render", type=Path, default=None, help="instead of measuring, the table of this JSON")
    parser.add_argument("--out", type=Path, default=None, help="with --render: write the markdown here")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render is not None and not args.render.is_file():
        parser.error(f"--render: no such file: {args.render}")
    if args.out is not None and args.render is None:
        parser.error(f"--out {args.out} is for --render FILE.json (a measuring run writes --json)")
    if args.child is None and args.render is None:
        if args.model not in MODELS:
            parser.error(f"--model {args.model!r} is not one of {', '.join(MODELS)}")
        bad = [n for n in args.optimizers.split(",") if n not in OURS]
        if bad:
            parser.error(f"--optimizers: {', '.join(bad)} not one of {', '.join(OURS)} (the ones with a compiled step)")
    return args


def markdown(data: dict) -> str:
    """A run's table: per optimizer, its first step cold and warm, and its step after (warm)."""

    def cell(run: dict, key: str, spec: str) -> str:
        return "error: " + run["error"] if "error" in run else format(run[key], spec)

    table = [[r["optimizer"], cell(r["cold"], "first_s", ".1f"), cell(r["warm"], "first_s", ".1f"),
              cell(r["warm"], "step_ms", ".2f"), r["warm"].get("impl", "-")] for r in data["rows"]]
    return (f"Model `{data['model']}`: the first step (compile included) in seconds with a cold and with a warm "
            f"inductor cache, and the median of the next {AFTER} steps of the warm process; one run of "
            f"`{data['command']}`, load average {data['load_average']:.2f} after.\n\n"
            + tabulate(table, headers=["optimizer", "first step, cold (s)", "first step, warm (s)", "step after (ms)",
                                       "impl"], tablefmt="github", disable_numparse=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure_one(*args.child)))
        return 0
    if args.render is not None:
        text = "# What compiling our own steps costs\n\n" + markdown(json.loads(args.render.read_text()))
        if args.out is None:
            print(text)
        else:
            args.out.write_text(text)
        return 0
    rows = []
    for name in args.optimizers.split(","):
        with tempfile.TemporaryDirectory(prefix="optbench-inductor-") as cache:
            cold = run_child(args.model, name, cache)
            warm = run_child(args.model, name, cache)
        rows.append({"optimizer": name, "cold": cold, "warm": warm})
        print(f"{name}: cold {cold}, warm {warm}", flush=True)

    data = {"command": shlex.join(["python", "-m", "benchmarks.compile_cost", *(argv or sys.argv[1:])]),
            "model": args.model, "load_average": os.getloadavg()[0], "rows": rows}
    print(markdown(data))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
