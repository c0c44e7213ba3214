"""What MicroAdam's two library-bound parts cost on a model, against fused AdamW's whole step.

    python -m benchmarks.microadam_floor [--model topics|25m] [--rounds 15] [--json FILE]
    python -m benchmarks.microadam_floor --merge RUN1.json RUN2.json ... [--out results/ratios/microadam-floor.md]

Issue 13 asks for MicroAdam at most 3x fused AdamW on the 27M GPT (5x on topics). Two parts of
its step are library calls that ``torch.compile`` does not fuse, so their cost is a floor under
the step however the rest is generated:

- ``topk``: the top 1% of |a| in every top-k block of every tensor (``torch.topk``, unsorted,
  on the same blocks and k as the step: ``optimizers.microadam.topk_layout`` at its defaults);
- ``window sums``: the window's two moment sums on its support (``_sum_on_support``: zero a
  dense buffer at the support, ``index_add_`` the weighted values, read them back with
  ``index_select``), for a full window of m = 10 slots of random indices, as after 10 steps.

Each round times fused AdamW's step on the same model, then the top-k over every tensor, then
the window sums over every tensor, then ``a.add_(b)`` on 64M float32 elements (which also
evicts the caches, as a forward and backward pass would). Medians over the rounds after one
warm-up round. The ratios say whether a step-time target is reachable with these calls: if
``topk`` alone is above the target, only a different selection kernel can meet it.

``--merge`` takes the JSON of several runs (any models) and writes, per model, the median over
the runs of each part's time and ratio, with the runs' commands, bandwidths and load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from optbench.optimizers.microadam import (
    INT16_BLOCK_LIMIT,
    _sum_on_support,
    topk_layout,
    window_width,
)
from tabulate import tabulate

from benchmarks.optimizer_ratios import BANDWIDTH_NUMEL, MODELS, build, fill_gradients
from benchmarks.ratio_table import runs_table
from optbench.bandwidth import add_bytes, add_seconds

WINDOW = 10  # MicroAdam's default m
K_INIT = 0.01  # ... and density


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.microadam_floor", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="25m", help=f"one of {', '.join(MODELS)} (default 25m)")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds, after one warm-up round")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON to this file")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="RUN",
                        help="instead of measuring, write the median table of these runs' JSON")
    parser.add_argument("--out", type=Path, default=None, help="with --merge: write the markdown here (default: print)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.merge or () if not p.is_file()]
    if missing:
        parser.error(f"--merge: no such file: {', '.join(missing)}")
    if args.out is not None and not args.merge:
        parser.error(f"--out {args.out} is for --merge RUN.json... (a measuring run writes --json)")
    if args.model not in MODELS:
        parser.error(f"--model {args.model!r} is not one of {', '.join(MODELS)}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    return args


def top_k_all(tensors: list[torch.Tensor]) -> None:
    """``torch.topk`` of |a| over each tensor's top-k blocks and its shorter last block, as the step does."""
    for a in tensors:
        full, size, k, rest, k_rest = topk_layout(a.numel(), INT16_BLOCK_LIMIT, K_INIT)
        if full:
            a[:full * size].view(full, size).abs().topk(k, dim=1, sorted=False)
        if rest:
            a[full * size:].abs().topk(k_rest, sorted=False)


def windows(tensors: list[torch.Tensor], generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A full window per tensor: (flat support indices (m·K,), float32 values (m, K)), random."""
    out = []
    for a in tensors:
        width = window_width(a.numel(), INT16_BLOCK_LIMIT, K_INIT)
        support = torch.randint(a.numel(), (WINDOW * width,), generator=generator)
        out.append((support, torch.randn(WINDOW, width, generator=generator)))
    return out


def window_sums_all(buffers: list[torch.Tensor], supports: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Both moments' sums on each window's support, through a dense buffer of the tensor's size."""
    for buffer, (support, values) in zip(buffers, supports, strict=True):
        _sum_on_support(buffer, support, values)
        _sum_on_support(buffer, support, values.square())


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def merged_markdown(runs: list[dict]) -> str:
    """Per model, in the order first seen: the runs, then the median of each part over them."""
    models = list(dict.fromkeys(run["model"] for run in runs))
    lines = ["# MicroAdam's library calls against fused AdamW's step", "",
             "`topk` and the window's moment sums, on MicroAdam's own layout of each model, timed "
             "round by round with fused AdamW's step (see `benchmarks/microadam_floor.py`). A step-time "
             "target under their sum cannot be met with these calls.", ""]
    for model in models:
        mine = [run for run in runs if run["model"] == model]
        first = mine[0]
        lines += [f"## Model `{model}`", "",
                  f"{first['params']:,} parameters in {first['tensors']} tensors; torch {first['torch']}, "
                  f"{first['threads']} threads; median of {len(mine)} runs of {first['rounds']} rounds each.", "",
                  *runs_table(mine)]
        lines += ["", "| part | ms | / fused AdamW step |", "|---|---|---|"]
        for part in [p["part"] for p in first["parts"]]:
            per_run = [next(p for p in run["parts"] if p["part"] == part) for run in mine]
            ms = statistics.median(p["ms"] for p in per_run)
            ratio = statistics.median(p["ratio_to_fused_adamw"] for p in per_run)
            lines.append(f"| {part} | {ms:.2f} | {ratio:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        text = merged_markdown([json.loads(path.read_text()) for path in args.merge])
        if args.out is None:
            print(text)
        else:
            args.out.write_text(text)
        return 0
    torch.manual_seed(0)
    load_before = os.getloadavg()
    model = build(args.model, "cpu")
    fill_gradients(model)
    params = [p for p in model.parameters() if p.requires_grad]
    adamw = torch.optim.AdamW(params, lr=1e-3, fused=True)
    generator = torch.Generator().manual_seed(0)
    residuals = [torch.randn(p.numel(), generator=generator) for p in params]  # a = g + e, one per tensor
    buffers = [torch.empty(p.numel()) for p in params]
    supports = windows(params, generator)
    a, b = torch.zeros(BANDWIDTH_NUMEL), torch.ones(BANDWIDTH_NUMEL)
    parts = {"fused AdamW step": adamw.step, "topk": lambda: top_k_all(residuals),
             "window sums": lambda: window_sums_all(buffers, supports)}
    times: dict[str, list[float]] = {name: [] for name in parts}
    adds = []
    for round_ in range(args.rounds + 1):
        for name, fn in parts.items():
            seconds = timed(fn)
            if round_:
                times[name].append(seconds)
        seconds = add_seconds(a, b)
        if round_:
            adds.append(seconds)
    load_after = os.getloadavg()
    median = {name: statistics.median(t) for name, t in times.items()}
    median["topk + window sums"] = median["topk"] + median["window sums"]
    base = median["fused AdamW step"]
    bandwidth = add_bytes(BANDWIDTH_NUMEL) / statistics.median(adds)
    n_params = sum(p.numel() for p in params)
    header = (f"model {args.model}: {n_params:,} parameters in {len(params)} tensors; MicroAdam's layout at "
              f"m = {WINDOW}, k_init {K_INIT}; torch {torch.__version__}, {torch.get_num_threads()} threads; median "
              f"of {args.rounds} rounds after 1 warm-up; bandwidth {bandwidth / 1e9:.1f} GB/s; load average "
              f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(header)
    print(tabulate([[name, f"{ms * 1e3:.2f}", f"{ms / base:.2f}"] for name, ms in median.items()],
                   headers=["part", "ms (median)", "/ fused AdamW step"], tablefmt="github"))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": shlex.join(["python", "-m", "benchmarks.microadam_floor", *(argv or sys.argv[1:])]),
            "model": args.model, "params": n_params, "tensors": len(params), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "rounds": args.rounds, "bandwidth_gbs": bandwidth / 1e9,
            "load_average": {"before": load_before[0], "after": load_after[0]},
            "parts": [{"part": name, "ms": ms * 1e3, "ratio_to_fused_adamw": ms / base} for name, ms in median.items()],
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
