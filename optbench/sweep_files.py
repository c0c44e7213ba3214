"""What a sweep publishes, how it is read back, and the check that it met the protocol.

Layout, per preset, under ``results/sweeps/<preset>/``:

- ``<task>.csv``: every sweep run, one row each (columns ``CSV_COLUMNS``): optimizer, lr, seed,
  status, the final held-out loss (the criterion), the task's final metric, wall time, the
  optimizer's starting lr, and ``chosen`` = 1 on the rows of the chosen lr.
- ``<task>.md``: the chosen lr per optimizer and every point, under the command that made it.
- ``<task>.png``: the lr-sensitivity plot in DeepOBS's style (Schneider, Balles & Hennig,
  ICLR 2019): final held-out loss against lr, one line per optimizer through the per-lr
  mean, every seed's value drawn, failed runs marked along the top.
- ``README.md``: the chosen lrs of every task, and what ``audit`` found.

``audit`` is the protocol check the lead's tests and the report call: at least ``MIN_POINTS``
lrs per (task, optimizer), neighbours at most ``MAX_RATIO`` apart, a chosen lr that is not
at an end of its grid, the chosen lr and its neighbours on at least ``MIN_SEEDS`` seeds, the
CSV's ``chosen`` column equal to what the protocol picks from its rows, and the tuned-lr
table equal to the chosen lr.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tabulate import tabulate

from optbench import registry
from optbench.sweep import (
    MAX_RATIO,
    MIN_POINTS,
    MIN_SEEDS,
    RATIO_ROUNDING,
    SweepResult,
    Trial,
    best_lr,
    neighbourhood,
)

CSV_COLUMNS = ("task", "preset", "optimizer", "lr", "seed", "status", "eval_loss", "final_metric", "metric_name",
               "higher_is_better", "wall_s", "start_lr", "chosen")
DEFAULT_SWEEPS_DIR = Path("results/sweeps")
OFF_SCALE = 20.0  # the plot's loss axis ends at this many times the best loss


def sweep_dir(out: str | Path, preset: str) -> Path:
    return Path(out) / preset


# ---------------------------------------------------------------------------------------------
# CSV: written per task, merged across calls (a sweep of some optimizers keeps the others' rows)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def _float(text: str) -> float | None:
    return float(text) if text not in ("", None) else None


def write_csv(results: Mapping[str, SweepResult], task: str, preset: str, out: str | Path) -> Path:
    """``<out>/<preset>/<task>.csv``: these optimizers' rows replace theirs, other optimizers' rows stay."""
    path = sweep_dir(out, preset) / f"{task}.csv"
    kept = [row for row in _read_rows(path) if row["optimizer"] not in results] if path.exists() else []
    metric = registry.get_task(task).metric
    rows = list(kept)
    for name, result in results.items():
        for t in result.trials:
            rows.append({
                "task": task, "preset": preset, "optimizer": name, "lr": _cell(t.lr), "seed": str(t.seed),
                "status": t.status, "eval_loss": _cell(t.eval_loss), "final_metric": _cell(t.final_metric),
                "metric_name": metric.name, "higher_is_better": str(int(t.higher_is_better)),
                "wall_s": _cell(t.wall_s), "start_lr": _cell(result.start_lr),
                "chosen": "1" if t.lr == result.chosen_lr else "0",
            })
    rows.sort(key=lambda r: (r["optimizer"], float(r["lr"]), int(r["seed"])))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in CSV_COLUMNS if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"{path}: not a sweep CSV, missing column(s) {missing}; expected {list(CSV_COLUMNS)}")
    return rows


def read_csv(path: str | Path) -> dict[str, SweepResult]:
    """A task's sweep CSV back as {optimizer: SweepResult}; ``chosen_lr`` is the CSV's ``chosen`` column."""
    by_name: dict[str, list[dict[str, str]]] = {}
    for row in _read_rows(Path(path)):
        by_name.setdefault(row["optimizer"], []).append(row)
    results = {}
    for name, rows in sorted(by_name.items()):
        trials = [Trial(lr=float(r["lr"]), seed=int(r["seed"]), status=r["status"], eval_loss=_float(r["eval_loss"]),
                        final_metric=_float(r["final_metric"]), higher_is_better=r["higher_is_better"] == "1",
                        wall_s=_float(r["wall_s"])) for r in rows]
        chosen = {float(r["lr"]) for r in rows if r["chosen"] == "1"}
        seeds = tuple(sorted({t.seed for t in trials}))
        results[name] = SweepResult(name, _float(rows[0]["start_lr"]), seeds, trials,
                                    chosen.pop() if len(chosen) == 1 else None)
    return results


def read_sweeps(out: str | Path, preset: str) -> dict[str, dict[str, SweepResult]]:
    """Every task's sweep of a preset: {task: {optimizer: SweepResult}}."""
    folder = sweep_dir(out, preset)
    return {path.stem: read_csv(path) for path in sorted(folder.glob("*.csv"))} if folder.is_dir() else {}


# ---------------------------------------------------------------------------------------------
# The protocol check


def seeds_of(result: SweepResult) -> tuple[int, ...]:
    """The seeds a sweep ran its chosen lr on (the protocol's full set of tuning seeds)."""
    return tuple(sorted({t.seed for t in result.trials}))


def audit_result(task: str, result: SweepResult, tuned_lr: float | None = None, *,
                 check_table: bool = False) -> list[str]:
    """What in one (task, optimizer) sweep breaks the protocol; empty when nothing does."""
    where = f"{task} / {result.optimizer}"
    problems = []
    grid = result.grid
    if len(grid) < MIN_POINTS:
        problems.append(f"{where}: {len(grid)} lrs tried, the protocol needs >= {MIN_POINTS}")
    widest = max((b / a for a, b in zip(grid, grid[1:])), default=1.0)
    if widest > MAX_RATIO * RATIO_ROUNDING:
        problems.append(f"{where}: neighbouring lrs {widest:.3g}x apart, the protocol allows <= {MAX_RATIO:g}x")
    seeds = seeds_of(result)
    chosen = best_lr(result.trials, seeds) if seeds else None
    if chosen != result.chosen_lr:
        problems.append(f"{where}: the CSV marks lr {result.chosen_lr} chosen, "
                        f"the protocol picks {chosen} from its rows")
    if chosen is None:
        problems.append(f"{where}: no lr finished")
        return problems
    if result.at_edge or chosen in (grid[0], grid[-1]):
        problems.append(f"{where}: chosen lr {chosen:g} sits at an end of the grid {grid[0]:g}..{grid[-1]:g}")
    for lr in neighbourhood(grid, chosen):
        n = len(set(result.seeds_at(lr)))
        if n < MIN_SEEDS:
            problems.append(f"{where}: lr {lr:g} (the chosen lr or a neighbour) ran on {n} seed(s), "
                            f"the protocol needs >= {MIN_SEEDS}")
    if check_table and tuned_lr != chosen:
        problems.append(f"{where}: the tuned-lr table holds {tuned_lr}, the sweep chose {chosen:g}")
    return problems


def audit(out: str | Path = DEFAULT_SWEEPS_DIR, preset: str = "cpu", *, tasks: Iterable[str] | None = None,
          optimizers: Iterable[str] | None = None, table: str | Path | None = None) -> list[str]:
    """Check a preset's published sweeps against the protocol; one line per problem, empty when all hold.

    ``tasks``/``optimizers``: every pair must have a sweep (default: whatever the CSVs hold).
    ``table``: the tuned-lr JSON whose entries must equal the chosen lrs.
    """
    sweeps = read_sweeps(out, preset)
    lrs = json.loads(Path(table).read_text()).get(preset, {}) if table and Path(table).exists() else {}
    problems = []
    for task in sorted(set(tasks) if tasks is not None else sweeps):
        found = sweeps.get(task, {})
        for name in sorted(set(optimizers) if optimizers is not None else found):
            if name not in found:
                problems.append(f"{task} / {name}: no sweep in {sweep_dir(out, preset) / (task + '.csv')}")
                continue
            problems += audit_result(task, found[name], lrs.get(task, {}).get(name), check_table=table is not None)
    return problems


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def _mean_std(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) != len(values) or not finite:
        return "failed"
    if len(finite) == 1:
        return _fmt(finite[0])
    return f"{statistics.fmean(finite):.4f} ± {statistics.stdev(finite):.4f}"


def _chosen_rows(results: Mapping[str, SweepResult]) -> list[list[str]]:
    rows = []
    for name, r in sorted(results.items()):
        grid = r.grid
        widest = max((b / a for a, b in zip(grid, grid[1:])), default=1.0)
        at = [t.value for t in r.trials if t.lr == r.chosen_lr]
        note = "at the grid's edge" if r.at_edge else ("no lr finished" if r.chosen_lr is None else "")
        rows.append([name, _fmt(r.start_lr, ".3g"), f"{len(grid)}: {grid[0]:.3g} .. {grid[-1]:.3g} (≤ {widest:.2f}x)",
                     _fmt(r.chosen_lr, ".3g"), f"{_mean_std(at)} (n={len(at)})" if at else "—", note])
    return rows


def _point_rows(results: Mapping[str, SweepResult]) -> list[list[str]]:
    rows = []
    for name, r in sorted(results.items()):
        for lr in r.grid:
            trials = sorted((t for t in r.trials if t.lr == lr), key=lambda t: t.seed)
            per_seed = ", ".join(f"{t.seed}: {_fmt(t.value) if t.status == 'ok' else t.status}" for t in trials)
            rows.append([name, f"{lr:.3g}", per_seed, _mean_std([t.value for t in trials]),
                         "**chosen**" if lr == r.chosen_lr else ""])
    return rows


def write_markdown(results: Mapping[str, SweepResult], task: str, preset: str, command: str, out: str | Path,
                   plot: Path | None = None) -> Path:
    """``<out>/<preset>/<task>.md`` for every optimizer in the task's CSV (call after ``write_csv``)."""
    folder = sweep_dir(out, preset)
    all_results = read_csv(folder / f"{task}.csv") if (folder / f"{task}.csv").exists() else dict(results)
    seeds = sorted({s for r in all_results.values() for s in seeds_of(r)})
    body = [
        f"# Learning-rate sweep: {task} ({preset} preset)",
        "",
        f"Made by `{command}` (the latest call; the CSV keeps every optimizer swept so far). Protocol "
        "(`optbench/sweep.py`): log-spaced lrs around each optimizer's starting lr, every lr on the first "
        "tuning seed, the best lr and its neighbours on every tuning seed "
        f"({', '.join(map(str, seeds))}), the grid grown past an end that wins. Criterion: final held-out loss "
        "(`eval_loss`, lower is better); a failed run counts as worst. The chosen lrs are in "
        "`tasks/tuned_lrs.json`; every run is in "
        f"`{task}.csv`.",
        "",
    ]
    if plot is not None:
        body += [f"![lr sensitivity: {task}]({plot.name})", ""]
    body += ["## Chosen learning rates", "",
             tabulate(_chosen_rows(all_results), headers=["optimizer", "starting lr", "lrs tried", "chosen lr",
                                                           "held-out loss at chosen lr", "note"],
                      tablefmt="github", disable_numparse=True), "",
             "## Every point", "",
             tabulate(_point_rows(all_results), headers=["optimizer", "lr", "held-out loss per seed", "mean ± std", ""],
                      tablefmt="github", disable_numparse=True), ""]
    path = folder / f"{task}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(body))
    return path


def write_index(out: str | Path, preset: str, *, table: str | Path | None = None) -> Path:
    """``<out>/<preset>/README.md``: the chosen lr of every (task, optimizer) swept, and the audit."""
    sweeps = read_sweeps(out, preset)
    names = sorted({name for found in sweeps.values() for name in found})
    rows = [[name] + [(_fmt(found[name].chosen_lr, ".3g") + (" (edge)" if found[name].at_edge else ""))
                      if name in found else "" for found in sweeps.values()] for name in names]
    problems = audit(out, preset, table=table)
    lines = [f"# Learning-rate sweeps ({preset} preset)", "",
             "Chosen lr per task and optimizer (`optbench sweep`, protocol in `optbench/sweep.py`); each task's "
             "page has every point and its lr-sensitivity plot.", "",
             tabulate(rows, headers=["optimizer"] + [f"[{t}]({t}.md)" for t in sweeps], tablefmt="github",
                      disable_numparse=True), "",
             "## Protocol check (`optbench.sweep_files.audit`)", ""]
    lines += [f"- {p}" for p in problems] if problems else ["Every sweep meets the protocol."]
    path = sweep_dir(out, preset) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# The lr-sensitivity plot


def plot_sensitivity(task: str, preset: str, out: str | Path) -> Path | None:
    """``<out>/<preset>/<task>.png`` from the task's CSV; None when no run finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = sweep_dir(out, preset)
    results = read_csv(folder / f"{task}.csv")
    finite = [t.value for r in results.values() for t in r.trials if math.isfinite(t.value)]
    if not finite:
        return None
    # Past 20x the best loss a run has learnt next to nothing: such points are drawn along the top
    # (as triangles), so that one blown-up run does not flatten every curve.
    low = min(finite)
    top = min(max(finite), OFF_SCALE * low) if low > 0 else max(finite)
    names = sorted(results)
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    markers = "osD^v<>pPX*h"
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, name in enumerate(names):
        r = results[name]
        color = "black" if name == "adamw" else cmap(i % cmap.N)
        grid = r.grid
        means = [statistics.fmean(t.value for t in r.trials if t.lr == lr) for lr in grid]
        xs = [lr for lr, m in zip(grid, means) if math.isfinite(m)]
        ax.plot(xs, [m for m in means if math.isfinite(m)], color=color, marker=markers[i % len(markers)], ms=4,
                lw=2.2 if name == "adamw" else 1.3, label=name)
        seeds = [(t.lr, t.value) for t in r.trials if math.isfinite(t.value) and t.value <= top]
        ax.scatter([x for x, _ in seeds], [y for _, y in seeds], color=color, s=12, alpha=0.5, lw=0)
        for marker, lrs in (("x", {t.lr for t in r.trials if not math.isfinite(t.value)}),
                            ("^", {t.lr for t in r.trials if math.isfinite(t.value) and t.value > top})):
            ax.scatter(sorted(lrs), [0.975] * len(lrs), transform=ax.get_xaxis_transform(), marker=marker,
                       color=color, s=22)
        if r.chosen_lr is not None:
            at = [t.value for t in r.trials if t.lr == r.chosen_lr]
            if all(map(math.isfinite, at)):
                ax.scatter([r.chosen_lr], [statistics.fmean(at)], marker="*", s=160, color=color,
                           edgecolor="black", lw=0.6, zorder=5)
    ax.set_xscale("log")
    lrs = [t.lr for r in results.values() for t in r.trials]
    ax.set_xlim(min(lrs) / 1.4, max(lrs) * 1.4)  # the markers along the top do not widen the axis by themselves
    if low > 0 and top / low > 4:
        ax.set_yscale("log")
        ax.set_ylim(low / 1.1, top)
    else:
        ax.set_ylim(low - 0.05 * (top - low), top + 1e-12)
    ax.set(xlabel="peak learning rate (log)", ylabel="final held-out loss (lower is better)",
           title=f"{task} ({preset}): lr sensitivity")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.text(0.01, 0.01, "line: mean over the seeds each lr ran on; dots: single seeds; star: chosen lr; "
             f"along the top: x a failed run (diverged or error), ^ a loss above {OFF_SCALE:g}x the best", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = folder / f"{task}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def publish_task(results: Mapping[str, SweepResult], task: str, preset: str, command: str, out: str | Path, *,
                 table: str | Path | None = None, plot: bool = True) -> list[Path]:
    """Everything a sweep of one task writes: CSV, plot, markdown, the preset's index."""
    paths = [write_csv(results, task, preset, out)]
    image = plot_sensitivity(task, preset, out) if plot else None
    paths += [p for p in (image,) if p is not None]
    paths.append(write_markdown(results, task, preset, command, out, plot=image))
    paths.append(write_index(out, preset, table=table))
    return paths
