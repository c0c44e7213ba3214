"""Learning-rate sweeps: run each optimizer at several learning rates and keep the best.

The winner per (preset, task, optimizer) goes into ``tasks/tuned_lrs.json``, which every run
reads (``optbench.lrs``), and the whole table into ``results/sweeps/<preset>-<task>.md``.
A diverged or errored run ranks below every finished one. Ties keep the smaller lr.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tabulate import tabulate

from optbench import registry
from optbench.lrs import TUNED_LRS_PATH, forget_cached_table
from optbench.runner import make_cells, run_grid


def candidate_lrs(task: str, optimizer: str, preset: str, lrs: Sequence[float] | None,
                  factors: Sequence[float] | None) -> list[float]:
    """Absolute ``lrs``, or ``factors`` times the task's starting lr for the optimizer.

    The base is the task's declared starting lr, never an earlier sweep's winner, so running
    the same sweep again asks for the same grid (and reuses its stored runs).
    """
    if lrs:
        return sorted(float(x) for x in lrs)
    if not factors:
        raise ValueError("give --lrs or --lr-factors")
    spec = registry.get_optimizer(optimizer)
    base = registry.get_task(task).default_lrs.get(optimizer, spec.default_lr)
    return sorted(float(f"{base * f:.3g}") for f in factors)


def score(records: Sequence[Mapping[str, Any]], higher_is_better: bool) -> float:
    """Mean final metric over seeds, oriented so larger is better; -inf if any seed failed."""
    values = [r["metrics"]["final_metric"] for r in records]
    if any(r["status"] != "ok" or v is None or not math.isfinite(v) for r, v in zip(records, values)):
        return -math.inf
    mean = statistics.fmean(values)
    return mean if higher_is_better else -mean


def sweep(task: str, optimizers: Sequence[str], *, preset: str, seeds: Sequence[int], runs_dir: str | Path,
          lrs: Sequence[float] | None = None, factors: Sequence[float] | None = None, progress: bool = True,
          device: str | None = None, max_extensions: int = 2) -> dict[str, dict]:
    """Run the sweep; return {optimizer: {"best_lr", "at_edge", "results": [{lr, mean, std, statuses}]}}.

    A best lr at either end of an optimizer's grid means the optimum may lie beyond it, so the
    grid is extended one step (the grid's own ratio) past that end, at most ``max_extensions``
    times; a winner still at the edge after that is flagged ``at_edge``.
    """
    spec = registry.get_task(task)
    grid = {name: candidate_lrs(task, name, preset, lrs, factors) for name in optimizers}
    for extension in range(max_extensions + 1):
        results = _run_and_score(task, spec.metric.higher_is_better, grid, preset=preset, seeds=seeds,
                                 runs_dir=runs_dir, device=device, progress=progress)
        grown = False
        for name, entry in results.items():
            lrs_tried = grid[name]
            entry["at_edge"] = len(lrs_tried) > 1 and entry["best_lr"] in (lrs_tried[0], lrs_tried[-1])
            if entry["at_edge"] and extension < max_extensions:
                if entry["best_lr"] == lrs_tried[0]:
                    grid[name] = [float(f"{lrs_tried[0] * lrs_tried[0] / lrs_tried[1]:.3g}"), *lrs_tried]
                else:
                    grid[name] = [*lrs_tried, float(f"{lrs_tried[-1] * lrs_tried[-1] / lrs_tried[-2]:.3g}")]
                grown = True
        if not grown:
            break
    return results


def _run_and_score(task: str, higher_is_better: bool, grid: Mapping[str, Sequence[float]], *, preset: str,
                   seeds: Sequence[int], runs_dir: str | Path, device: str | None, progress: bool) -> dict[str, dict]:
    cells = [cell for name, lrs in grid.items() for lr in lrs
             for cell in make_cells([task], [name], seeds, {"lr": lr})]
    outcome = run_grid(cells, preset=preset, runs_dir=runs_dir, device=device, progress=progress,
                       measure_memory_pass=False)
    by_cell: dict[tuple[str, float], list[dict]] = {}
    for cell, record in zip(cells, outcome.records, strict=True):
        by_cell.setdefault((cell.optimizer, cell.hparams["lr"]), []).append(record)
    results: dict[str, dict] = {}
    for (name, lr), records in sorted(by_cell.items()):
        values = [r["metrics"]["final_metric"] for r in records if r["status"] == "ok"]
        entry = results.setdefault(name, {"results": []})
        entry["results"].append({
            "lr": lr, "score": score(records, higher_is_better),
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "statuses": sorted({r["status"] for r in records}),
        })
    for entry in results.values():
        best = max(entry["results"], key=lambda row: (row["score"], -row["lr"]))
        entry["best_lr"] = best["lr"] if math.isfinite(best["score"]) else None
    return results


def update_table(results: Mapping[str, dict], task: str, preset: str, path: Path = TUNED_LRS_PATH) -> None:
    table = json.loads(path.read_text()) if path.exists() else {}
    row = table.setdefault(preset, {}).setdefault(task, {})
    for name, entry in results.items():
        if entry["best_lr"] is not None:
            row[name] = entry["best_lr"]
    table[preset] = {t: dict(sorted(v.items())) for t, v in sorted(table[preset].items())}
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    forget_cached_table()


def write_markdown(results: Mapping[str, dict], task: str, preset: str, seeds: Sequence[int], command: str,
                   out_dir: Path) -> Path:
    spec = registry.get_task(task)
    rows = []
    for name, entry in sorted(results.items()):
        for row in entry["results"]:
            mean = "—" if row["mean"] is None else f"{row['mean']:.4f}" + (
                "" if row["std"] is None else f" ± {row['std']:.4f}")
            best = "**best**" + (" (at the grid's edge)" if entry.get("at_edge") else "")
            rows.append([name, f"{row['lr']:.3g}", mean, ",".join(row["statuses"]),
                         best if row["lr"] == entry["best_lr"] else ""])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{preset}-{task}.md"
    direction = "higher" if spec.metric.higher_is_better else "lower"
    path.write_text(
        f"# Learning-rate sweep: {task} ({preset} preset)\n\n"
        f"Made by `{command}`; seeds {','.join(map(str, seeds))}; metric {spec.metric.name} ({direction} is better),"
        f" mean ± std over seeds. The best lr per optimizer is stored in `tasks/tuned_lrs.json`. A best lr at an"
        f" end of the grid was extended past that end (up to twice); one still at the edge is marked.\n\n"
        + tabulate(rows, headers=["optimizer", "lr", spec.metric.name, "status", ""], tablefmt="github") + "\n"
    )
    return path
