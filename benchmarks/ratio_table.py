"""The median of several ``benchmarks.optimizer_ratios --json`` runs as one markdown table.

    python -m benchmarks.ratio_table RUN1.json RUN2.json RUN3.json [--out results/ratios/25m.md]

Per optimizer and column, the median over the runs (each run already holds the median over its
interleaved steps); the header gives the runs' commands, bandwidths and load averages, so the
table says under what it was measured. Runs must be of the same model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

COLUMNS = (("step_ms", "step ms", ".2f"), ("step_ratio", "step / fused AdamW", ".2f"),
           ("bound_bytes_per_param", "bytes/param at bound", "g"), ("bound_ratio", "step / its bound", ".2f"),
           ("state_ratio", "state / AdamW", ".3f"), ("scratch_vs_largest_param", "step scratch / largest param", ".2f"))


def median_rows(runs: list[dict]) -> list[dict]:
    """One row per optimizer present in every run: the median of each column (None stays None)."""
    names = [r["optimizer"] for r in runs[0]["optimizers"]]
    names = [n for n in names if all(any(r["optimizer"] == n for r in run["optimizers"]) for run in runs)]
    rows = []
    for name in names:
        per_run = [next(r for r in run["optimizers"] if r["optimizer"] == name) for run in runs]
        row = {"optimizer": name, "impl": per_run[0].get("impl")}
        for key, _, _ in COLUMNS:
            values = [r.get(key) for r in per_run if r.get(key) is not None]
            row[key] = statistics.median(values) if values else None
        rows.append(row)
    return rows


def runs_table(runs: list[dict]) -> list[str]:
    """The markdown rows that say under what each run was measured: its command, bandwidth and load."""
    lines = ["| run | command | bandwidth (GB/s) | load average before / after |", "|---|---|---|---|"]
    for i, run in enumerate(runs, 1):
        load = run["load_average"]
        lines.append(f"| {i} | `{run['command']}` | {run['bandwidth_gbs']:.1f} | "
                     f"{load['before']:.2f} / {load['after']:.2f} |")
    return lines


def markdown(runs: list[dict], rows: list[dict]) -> str:
    first = runs[0]
    lines = [f"Model `{first['model']}`: {first['params']:,} parameters in {first['tensors']} tensors; "
             f"{first['device']}, torch {first['torch']}, {first['threads']} threads; median of {len(runs)} runs "
             f"of {first['steps']} interleaved steps each (after {first['warmup']} warm-up).", "",
             *runs_table(runs)]
    lines += ["", "| optimizer | step | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
              "|---|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = ["-" if row[key] is None else format(row[key], spec) for key, _, spec in COLUMNS]
        lines.append(f"| {row['optimizer']} | {row['impl'] or 'package'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="JSON files written by optimizer_ratios --json")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here (default: print it)")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.runs if not p.is_file()]
    if missing:
        parser.error(f"no such file(s): {', '.join(missing)}")
    runs = [json.loads(p.read_text()) for p in args.runs]
    models = sorted({run["model"] for run in runs})
    if len(models) > 1:
        parser.error(f"runs of different models ({', '.join(models)}); give runs of one model")
    text = markdown(runs, median_rows(runs))
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
