"""The leaderboard's numbers: pure functions from run records to tables (no formatting, no files).

Data flows one way, each step a small pandas table the next one only reads:

1. ``runs_frame``: one flat row per run (this is ``runs.csv``).
2. ``aggregate``: one row per (task, optimizer) (this is ``leaderboard.csv``): final metric
   mean ± std and its 95% CI over seeds (ok runs only), memory and step-time medians, ratios
   to AdamW.
3. ``overall``: one row per optimizer across tasks: geometric-mean ratios to AdamW, mean rank
   by final metric, wins.

``build_board`` runs the three and returns them together as a ``Board``, which the markdown
(``optbench.markdown``), the plots (``optbench.plots``) and the site (``optbench.site``) only
read. Columns beyond today's set (a verdict against AdamW, its difference and CI, a step time
over its bandwidth bound) are joined onto ``Board.cells`` by ``build_board``; the renderers
show such a column whenever it is present.

When a (task, optimizer) has runs under several hyperparameter configurations (say a sweep
wrote into the same runs dir), one is ranked: the one whose learning rate came from the
sweep table, else the task's default, else the optimizer's, else an explicit one; ties go to
the configuration with more runs. The others are listed apart, never mixed into the mean.

Step times are compared only between runs of the same hardware and concurrency
(``env.timing_key``): a cell measured under another key than its task's AdamW runs gets no
step-time ratio, and ``step_time_comparable`` says why.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from optbench.env import HARDWARE_FIELDS, timing_key
from optbench.records import MEMORY_CATEGORIES

BASELINE = "adamw"
LR_SOURCE_PREFERENCE = ("sweep", "task", "optimizer", "explicit")
PEAK_COLUMNS = tuple(f"peak_{c}_bytes" for c in MEMORY_CATEGORIES)


# ---------------------------------------------------------------------------------------------
# 1. One row per run


def _number(value) -> float:
    """A record's number as float; None or a non-finite value (stored as a string) -> NaN."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def flatten(record: dict, path: Path | str = "") -> dict:
    """One run record as a flat row (the columns of runs.csv)."""
    metrics, memory, timing, env = record["metrics"], record["memory"], record["timing"], record["env"]
    by_category = memory.get("peak_by_category") or {}
    row = {
        "task": record["task"], "optimizer": record["optimizer"], "seed": record["seed"], "preset": record["preset"],
        "status": record["status"], "error": record["error"], "diverged_at_step": record["diverged_at_step"],
        "lr": _number(record["hparams"].get("lr")), "lr_source": record.get("lr_source", "unknown"),
        "hparams": json.dumps(record["hparams"], sort_keys=True),
        "metric_name": metrics["metric_name"], "higher_is_better": bool(metrics["higher_is_better"]),
        "final_metric": _number(metrics["final_metric"]), "final_train_loss": _number(metrics["final_train_loss"]),
        "eval_loss": _number(metrics["eval_loss"]), "steps_to_target": _number(metrics["steps_to_target"]),
        "accuracy": _number(metrics.get("accuracy")),  # a secondary figure, where the task has one
        "target": _number(metrics.get("target")),
        "optimizer_state_bytes": _number(memory["optimizer_state_bytes"]), "peak_bytes": _number(memory["peak_bytes"]),
        **{col: _number(by_category.get(cat)) for col, cat in zip(PEAK_COLUMNS, MEMORY_CATEGORIES)},
        "memory_method": memory["method"],
        "cuda_max_allocated": _number(memory["cuda_max_allocated"]),
        "cuda_max_reserved": _number(memory["cuda_max_reserved"]),
        "step_s_median": _number(timing["step_s_median"]),
        "optimizer_step_s_median": _number(timing["optimizer_step_s_median"]),
        "samples_per_s": _number(timing["samples_per_s"]), "tokens_per_s": _number(timing["tokens_per_s"]),
        "train_s": _number(timing.get("train_s")), "wall_s": _number(timing["wall_s"]),
        "step_bound_ratio": _number(timing.get("step_bound_ratio")),
        "concurrent_runs": int(timing.get("concurrent_runs") or 1),
        "timing_key": " / ".join(str(part) for part in timing_key(record)),
        "steps": record["budget"]["steps"], "batch_size": record["budget"]["batch_size"],
        **{f"env_{key}": env.get(key) for key in (*HARDWARE_FIELDS, "python", "optbench", "git_commit")},
        "notes": "; ".join(record.get("notes") or []),
        "run_key": record.get("run_key"), "optimizer_class": record.get("optimizer_class"),
        "file": str(path),
    }
    return row


def runs_frame(records: Iterable[tuple[Path, dict]]) -> pd.DataFrame:
    """One row per run, sorted; ``ranked`` marks the configuration each (task, optimizer) ranks."""
    rows = [flatten(record, path) for path, record in records]
    frame = pd.DataFrame(rows).sort_values(["task", "optimizer", "hparams", "seed"], kind="stable")
    frame = frame.reset_index(drop=True)
    frame["ranked"] = _ranked_configuration(frame)
    return frame


def _source_rank(source: str) -> int:
    return LR_SOURCE_PREFERENCE.index(source) if source in LR_SOURCE_PREFERENCE else len(LR_SOURCE_PREFERENCE)


def best_lr_source(sources: Iterable[str]) -> str:
    """A configuration's lr source: runs of one configuration share its lr, so if one run had it from the sweep
    (the table may have been written after the first seeds ran), that lr is the swept one."""
    return min(sources, key=_source_rank)


def _ranked_configuration(runs: pd.DataFrame) -> pd.Series:
    """True for the runs of the one configuration per (task, optimizer) that the leaderboard ranks."""
    def preference(group: pd.DataFrame) -> tuple:
        return (_source_rank(best_lr_source(group["lr_source"])), -len(group), group["hparams"].iloc[0])

    ranked = pd.Series(False, index=runs.index)
    for _, per_cell in runs.groupby(["task", "optimizer"], sort=False):
        configs = [group for _, group in per_cell.groupby("hparams", sort=True)]
        ranked[min(configs, key=preference).index] = True
    return ranked


# ---------------------------------------------------------------------------------------------
# 2. One row per (task, optimizer)


def _median(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.median()) if len(values) else math.nan


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean of ``values`` (NaN, NaN with fewer than two values)."""
    from scipy import stats

    values = [float(v) for v in values]
    if len(values) < 2:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def summarise(group: pd.DataFrame) -> dict:
    """One (task, optimizer, configuration): quality and times over ok runs; memory medians over ok runs,
    or over every run that measured it when no ok run did (the state of a diverged optimizer is still exact)."""
    ok = group[group["status"] == "ok"]

    def memory(col: str) -> float:
        return _median(ok[col]) if ok[col].notna().any() else _median(group[col])

    metric = ok["final_metric"].dropna()
    reached = ok["steps_to_target"].dropna()
    ci_low, ci_high = mean_ci(metric)
    return {
        "task": group["task"].iloc[0], "optimizer": group["optimizer"].iloc[0],
        "metric_name": group["metric_name"].iloc[0], "higher_is_better": bool(group["higher_is_better"].iloc[0]),
        "lr": group["lr"].iloc[0], "lr_source": best_lr_source(group["lr_source"]), "hparams": group["hparams"].iloc[0],
        "seeds": ",".join(str(s) for s in sorted(group["seed"].unique())),
        "n_runs": len(group), "n_ok": int((group["status"] == "ok").sum()),
        "n_diverged": int((group["status"] == "diverged").sum()), "n_error": int((group["status"] == "error").sum()),
        "metric_mean": float(metric.mean()) if len(metric) else math.nan,
        "metric_std": float(metric.std(ddof=1)) if len(metric) > 1 else math.nan,
        "metric_n": len(metric),
        "metric_ci_low": ci_low, "metric_ci_high": ci_high,
        "accuracy_mean": float(ok["accuracy"].mean()) if ok["accuracy"].notna().any() else math.nan,
        "accuracy_std": float(ok["accuracy"].std(ddof=1)) if ok["accuracy"].notna().sum() > 1 else math.nan,
        "optimizer_state_bytes": memory("optimizer_state_bytes"),
        "peak_bytes": memory("peak_bytes"),
        **{col: memory(col) for col in PEAK_COLUMNS},
        "memory_method": " | ".join(sorted(set((ok if len(ok) else group)["memory_method"].dropna()))),
        "cuda_max_allocated": memory("cuda_max_allocated"),
        "step_ms": 1e3 * _median(ok["step_s_median"]),
        "optimizer_step_ms": 1e3 * _median(ok["optimizer_step_s_median"]),
        **({"step_bound_ratio": _median(ok["step_bound_ratio"])} if ok["step_bound_ratio"].notna().any() else {}),
        "timing_key": " | ".join(sorted(set(ok["timing_key"]))),
        "target": _median(group["target"]),
        "target_reached": len(reached),
        "steps_to_target_mean": float(reached.mean()) if len(reached) else math.nan,
    }


def _against_baseline(board: pd.DataFrame) -> pd.DataFrame:
    """Add per-task comparisons to the baseline optimizer's row (NaN where the task has no baseline).

    The step-time ratio needs the same hardware and concurrency on both sides; elsewhere it is NaN
    and ``step_time_comparable`` is False."""
    board = board.copy()
    base = board[board["optimizer"] == BASELINE].set_index("task")
    per_task = lambda col: board["task"].map(base[col]) if len(base) else math.nan  # noqa: E731
    board["delta_vs_adamw"] = board["metric_mean"] - per_task("metric_mean")
    board["state_pct_of_adamw"] = 100.0 * board["optimizer_state_bytes"] / per_task("optimizer_state_bytes")
    board["peak_ratio_to_adamw"] = board["peak_bytes"] / per_task("peak_bytes")
    base_timing = per_task("timing_key") if len(base) else pd.Series("", index=board.index)
    board["step_time_comparable"] = ~board["timing_key"].str.contains(r"\|", regex=True) & (
        board["timing_key"] == base_timing)
    board["step_time_ratio_to_adamw"] = (board["step_ms"] / per_task("step_ms")).where(
        board["step_time_comparable"], math.nan)
    return board


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard: one row per (task, optimizer) from the ranked configuration's runs."""
    ranked = runs[runs["ranked"]]
    rows = [summarise(group) for _, group in ranked.groupby(["task", "optimizer"], sort=True)]
    return _against_baseline(pd.DataFrame(rows)).reset_index(drop=True)


def other_configurations(runs: pd.DataFrame) -> pd.DataFrame:
    """Configurations present in the runs dir but not ranked (one row each), for the record."""
    others = runs[~runs["ranked"]]
    if others.empty:
        return pd.DataFrame()
    return pd.DataFrame([summarise(g) for _, g in others.groupby(["task", "optimizer", "hparams"], sort=True)])


# ---------------------------------------------------------------------------------------------
# 3. One row per optimizer across tasks


def geometric_mean(values: Iterable[float]) -> float:
    """Geometric mean of the finite values; 0 if one is 0 (an optimizer with no state); NaN if none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan
    if any(v < 0 for v in finite):
        raise ValueError(f"geometric mean of negative values {finite}")
    if any(v == 0 for v in finite):
        return 0.0
    return math.exp(sum(math.log(v) for v in finite) / len(finite))


def metric_ranks(board: pd.DataFrame) -> pd.Series:
    """Rank within each task by mean final metric (1 = best, ties share the best rank, no metric = last;
    NaN on a task where no optimizer has a metric)."""
    def rank(task_rows: pd.DataFrame) -> pd.Series:
        if task_rows["metric_mean"].isna().all():
            return pd.Series(math.nan, index=task_rows.index)  # nothing to rank on a task where every run failed
        ascending = not bool(task_rows["higher_is_better"].iloc[0])
        return task_rows["metric_mean"].rank(ascending=ascending, method="min", na_option="bottom")

    return pd.concat([rank(rows) for _, rows in board.groupby("task")]).reindex(board.index)


def overall(board: pd.DataFrame) -> pd.DataFrame:
    board = board.assign(rank=metric_ranks(board))
    rows = []
    for name, rows_of in board.groupby("optimizer", sort=True):
        rows.append({
            "optimizer": name, "tasks": len(rows_of),
            "state_ratio_gmean": geometric_mean(rows_of["state_pct_of_adamw"] / 100.0),
            "peak_ratio_gmean": geometric_mean(rows_of["peak_ratio_to_adamw"]),
            "step_time_ratio_gmean": geometric_mean(rows_of["step_time_ratio_to_adamw"]),
            "mean_rank": float(rows_of["rank"].mean()),  # over the tasks with a ranking
            "wins": int(((rows_of["rank"] == 1) & rows_of["metric_mean"].notna()).sum()),
        })
    return pd.DataFrame(rows).sort_values(["mean_rank", "optimizer"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Helpers the renderers share


def pareto_front(x: Sequence[float], y: Sequence[float], higher_is_better: bool) -> list[int]:
    """Indices of points no other point beats on both (less memory and a better metric), by increasing x."""
    sign = 1.0 if higher_is_better else -1.0
    order = sorted(range(len(x)), key=lambda i: (x[i], -sign * y[i]))
    front, best = [], -math.inf
    for i in order:
        if sign * y[i] > best:
            front.append(i)
            best = sign * y[i]
    return front


def mean_curve(curves: Iterable[dict], kind: str) -> pd.DataFrame:
    """Mean and std over seeds of the ``kind`` ('train' or 'eval') curve at each step; columns step, mean, std, n."""
    points = [(step, value) for curve in curves for step, value in curve[kind]]
    frame = pd.DataFrame(points, columns=["step", "value"]).apply(pd.to_numeric, errors="coerce")
    stats = frame.groupby("step")["value"].agg(["mean", "std", "count"]).reset_index()
    return stats.rename(columns={"count": "n"})


def environments(runs: pd.DataFrame) -> pd.DataFrame:
    """Distinct measurement environments among the runs, with how many runs and which tasks each holds."""
    cols = [f"env_{k}" for k in HARDWARE_FIELDS]
    envs = runs[cols].astype(str)
    grouped = runs.assign(_env=envs.agg(" / ".join, axis=1)).groupby(cols, dropna=False, sort=True)
    return grouped.agg(runs=("task", "size"), tasks=("task", lambda t: ", ".join(sorted(set(t))))).reset_index()


def optimizer_info(names: Iterable[str]) -> pd.DataFrame:
    """What the registry declares about each optimizer the board shows: ``family`` and ``board_note``
    (e.g. the regime of its defaults). An optimizer no longer registered (records from a plugin not
    loaded now) gets family "unregistered" and no note."""
    from optbench import registry

    specs = registry.optimizers()
    rows = []
    for name in sorted(set(names)):
        spec = specs.get(name)
        rows.append({"optimizer": name, "family": spec.family if spec else "unregistered",
                     "board_note": getattr(spec, "board_note", "") or ""})
    return pd.DataFrame(rows, columns=["optimizer", "family", "board_note"])


# ---------------------------------------------------------------------------------------------
# Everything


@dataclass(frozen=True)
class Board:
    """The aggregated leaderboard of one preset: what every renderer reads.

    ``runs`` has one row per run (``curve`` holds each run's loss curves, left out of runs.csv);
    ``cells`` one row per (task, optimizer), with ``family`` and ``board_note`` joined from the
    registry; ``summary`` one row per optimizer; ``others`` the configurations not ranked.
    ``profiles``, when set, maps a measure ("held-out loss", "optimizer state" ...) to its
    performance profile as ``optbench.verdicts.performance_profile`` returns it: one row per
    optimizer, one column ``τ=<tau>`` per factor, holding the share of tasks on which the
    optimizer is within that factor of the best.
    """

    runs: pd.DataFrame
    cells: pd.DataFrame
    summary: pd.DataFrame
    others: pd.DataFrame
    profiles: dict[str, pd.DataFrame] | None = None
    # Per task: verdict counts, the share resolved and the seed-rank agreement (optbench.verdicts).
    discrimination: pd.DataFrame | None = None

    @property
    def tasks(self) -> list[str]:
        return sorted(self.cells["task"].unique())

    def task_cells(self, task: str) -> pd.DataFrame:
        return self.cells[self.cells["task"] == task]

    def task_runs(self, task: str) -> pd.DataFrame:
        """The ranked configuration's runs of ``task``."""
        return self.runs[(self.runs["task"] == task) & self.runs["ranked"]]


VERDICT_COLUMNS = ("verdict", "diff", "ci_low", "ci_high", "margin", "rel_diff", "n_paired", "reason")


def task_margins(tasks: Iterable[str]) -> dict[str, float]:
    """Each registered task's verdict margin (relative to AdamW's loss); tasks not registered now get none."""
    from optbench import registry

    specs = registry.tasks()
    return {t: specs[t].margin for t in tasks if t in specs}


def with_verdicts(cells: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``cells`` with each optimizer's verdict against AdamW joined on, and the per-task discrimination table.

    The comparison reads the ranked configuration's runs only, on final held-out loss
    (``optbench.verdicts``); a task not registered now (no margin) gets no verdicts.
    """
    from optbench import verdicts

    ranked = runs[runs["ranked"]]
    margins = task_margins(ranked["task"].unique())
    ranked = ranked[ranked["task"].isin(margins)]
    if ranked.empty or not (ranked["optimizer"] == BASELINE).any():
        return cells, None
    table = verdicts.verdict_table(ranked, margins, baseline=BASELINE).rename(columns={"n": "n_paired"})
    merged = cells.merge(table[["task", "optimizer", *VERDICT_COLUMNS]], on=["task", "optimizer"], how="left")
    return merged, verdicts.discrimination(table, ranked)


def profiles(cells: pd.DataFrame, runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """AlgoPerf-style performance profiles: mean final held-out loss (infinite for an optimizer that
    diverged on any seed of a task) and exact optimizer-state bytes."""
    from optbench import verdicts

    ranked = runs[runs["ranked"] & (runs["status"] == "ok")]
    loss = ranked.groupby(["task", "optimizer"])["eval_loss"].mean().rename("loss").reset_index()
    quality = cells[["task", "optimizer", "n_diverged"]].merge(loss, on=["task", "optimizer"], how="left")
    quality.loc[quality["n_diverged"] > 0, "loss"] = math.inf
    return {
        "held-out loss": verdicts.performance_profile(quality, "loss", verdicts.QUALITY_TAUS),
        "optimizer state": verdicts.performance_profile(cells, "optimizer_state_bytes", verdicts.MEMORY_TAUS),
    }


def build_board(records: Sequence[tuple[Path, dict]]) -> Board:
    """Every table of the leaderboard from ``(path, record)`` pairs of one preset."""
    runs = runs_frame(records)
    runs["curve"] = runs["file"].map({str(path): record["curve"] for path, record in records})
    cells = aggregate(runs)
    cells = cells.merge(optimizer_info(cells["optimizer"]), on="optimizer", how="left")
    cells, discrimination = with_verdicts(cells, runs)
    return Board(runs=runs, cells=cells, summary=overall(cells), others=other_configurations(runs),
                 profiles=profiles(cells, runs), discrimination=discrimination)
