"""The published leaderboard: run records in; LEADERBOARD.md, two CSVs and plots out.

Data flows one way, each step a small pandas table the next one only reads:

1. ``load_runs``: every record of one preset under the runs dir; corrupt files kept by name.
2. ``runs_frame``: one flat row per run (this is ``runs.csv``).
3. ``aggregate``: one row per (task, optimizer) (this is ``leaderboard.csv``): final metric
   mean ± std over seeds (ok runs only), memory and step-time medians, ratios to AdamW.
4. ``overall``: one row per optimizer across tasks: geometric-mean ratios to AdamW, mean rank
   by final metric, wins.

``render_markdown`` and the ``plot_*`` functions format those tables and compute nothing new
beyond the Pareto front. Memory figures always say their kind: *state* is the exact
optimizer-state byte count (``optbench.state``: numel x element size of every tensor the
optimizer holds); *peak* is the tracked peak of the runner's memory pass, whose ``method``
string is quoted in a footnote.

When a (task, optimizer) has runs under several hyperparameter configurations (say a sweep
wrote into the same runs dir), one is ranked: the one whose learning rate came from the
sweep table, else the task's default, else the optimizer's, else an explicit one; ties go to
the configuration with more runs. The others are listed apart, never mixed into the mean.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from optbench.env import HARDWARE_FIELDS
from optbench.records import MEMORY_CATEGORIES, CorruptRecordError, iter_records

BASELINE = "adamw"
LR_SOURCE_PREFERENCE = ("sweep", "task", "optimizer", "explicit")
PEAK_COLUMNS = tuple(f"peak_{c}_bytes" for c in MEMORY_CATEGORIES)
LINESTYLES = ("-", "--", "-.", ":")  # overlapping curves stay visible


# ---------------------------------------------------------------------------------------------
# 1. Loading


@dataclass
class Loaded:
    runs_dir: Path
    preset: str
    records: list[tuple[Path, dict]] = field(default_factory=list)
    corrupt: list[tuple[Path, str]] = field(default_factory=list)
    presets_found: list[str] = field(default_factory=list)


def _preset_folder(path: Path, runs_dir: Path) -> str | None:
    """The preset a file sits under in the <runs>/<preset>/<task>/<file> layout, None off that layout."""
    parts = path.relative_to(runs_dir).parts
    return parts[0] if len(parts) == 3 else None


def load_runs(runs_dir: str | Path, preset: str) -> Loaded:
    """Every run record of ``preset``; a corrupt file under that preset's folder (or off the layout) is kept by name."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs dir {runs_dir} does not exist "
                                f"(make runs with `optbench run --runs-dir {runs_dir}`)")
    loaded, presets = Loaded(runs_dir, preset), set()
    for path, record in iter_records(runs_dir):
        if isinstance(record, CorruptRecordError):
            if _preset_folder(path, runs_dir) in (preset, None):
                loaded.corrupt.append((path, str(record)))
            continue
        presets.add(record["preset"])
        if record["preset"] == preset:
            loaded.records.append((path, record))
    loaded.presets_found = sorted(presets)
    if not loaded.records:
        found = ", ".join(loaded.presets_found) or "none"
        raise ValueError(f"no run records for preset {preset!r} in {runs_dir}; presets found there: {found}")
    return loaded


# ---------------------------------------------------------------------------------------------
# 2. One row per run


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
        "steps": record["budget"]["steps"], "batch_size": record["budget"]["batch_size"],
        **{f"env_{key}": env.get(key) for key in (*HARDWARE_FIELDS, "python", "optbench", "git_commit")},
        "notes": "; ".join(record.get("notes") or []),
        "run_key": record.get("run_key"), "optimizer_class": record.get("optimizer_class"),
        "file": str(path),
    }
    return row


def runs_frame(records: Iterable[tuple[Path, dict]]) -> pd.DataFrame:
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
# 3. One row per (task, optimizer)


def _median(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.median()) if len(values) else math.nan


def summarise(group: pd.DataFrame) -> dict:
    """One (task, optimizer, configuration): quality and times over ok runs; memory medians over ok runs,
    or over every run that measured it when no ok run did (the state of a diverged optimizer is still exact)."""
    ok = group[group["status"] == "ok"]

    def memory(col: str) -> float:
        return _median(ok[col]) if ok[col].notna().any() else _median(group[col])

    metric = ok["final_metric"].dropna()
    reached = ok["steps_to_target"].dropna()
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
        "optimizer_state_bytes": memory("optimizer_state_bytes"),
        "peak_bytes": memory("peak_bytes"),
        **{col: memory(col) for col in PEAK_COLUMNS},
        "memory_method": " | ".join(sorted(set((ok if len(ok) else group)["memory_method"].dropna()))),
        "cuda_max_allocated": memory("cuda_max_allocated"),
        "step_ms": 1e3 * _median(ok["step_s_median"]),
        "optimizer_step_ms": 1e3 * _median(ok["optimizer_step_s_median"]),
        "target": _median(group["target"]),
        "target_reached": len(reached),
        "steps_to_target_mean": float(reached.mean()) if len(reached) else math.nan,
    }


def _against_baseline(board: pd.DataFrame) -> pd.DataFrame:
    """Add per-task comparisons to the baseline optimizer's row (NaN where the task has no baseline)."""
    board = board.copy()
    base = board[board["optimizer"] == BASELINE].set_index("task")
    per_task = lambda col: board["task"].map(base[col]) if len(base) else math.nan  # noqa: E731
    board["delta_vs_adamw"] = board["metric_mean"] - per_task("metric_mean")
    board["state_pct_of_adamw"] = 100.0 * board["optimizer_state_bytes"] / per_task("optimizer_state_bytes")
    board["peak_ratio_to_adamw"] = board["peak_bytes"] / per_task("peak_bytes")
    board["step_time_ratio_to_adamw"] = board["step_ms"] / per_task("step_ms")
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
# 4. One row per optimizer across tasks


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
# Formatting


def fmt_bytes(n: float) -> str:
    if n is None or not math.isfinite(n):
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def byte_unit(max_bytes: float) -> tuple[str, int]:
    """The unit a plot axis uses for values up to ``max_bytes``."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if max_bytes >= size:
            return unit, size
    return "B", 1


def _fmt(x: float, spec: str, suffix: str = "") -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:{spec}}{suffix}"


def fmt_ms(x: float) -> str:
    """Three significant figures without exponents (1.17, 71.5, 1910)."""
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def fmt_metric(mean: float, std: float, n: int) -> str:
    if not math.isfinite(mean):
        return "— (n=0)"
    spread = f" ± {std:.4f}" if math.isfinite(std) else ""
    return f"{mean:.4f}{spread} (n={n})"


def fmt_status(row: pd.Series) -> str:
    parts = [f"{row[f'n_{s}']} {s}" for s in ("ok", "diverged", "error") if row[f"n_{s}"]]
    return ", ".join(parts) or "none"


def _md_cell(text: object) -> str:
    """Text safe inside a GitHub markdown table cell."""
    return str(text).replace("\r", " ").replace("\n", " ").replace("|", "\\|")


def _table(rows: list[dict]) -> str:
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)


# ---------------------------------------------------------------------------------------------
# Markdown


@dataclass
class ReportContext:
    preset: str
    runs_dir: Path
    produced_by: str | None  # the command that made the runs
    report_command: str  # the command that made this report
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def environments(runs: pd.DataFrame) -> pd.DataFrame:
    """Distinct measurement environments among the runs, with how many runs and which tasks each holds."""
    cols = [f"env_{k}" for k in HARDWARE_FIELDS]
    envs = runs[cols].astype(str)
    grouped = runs.assign(_env=envs.agg(" / ".join, axis=1)).groupby(cols, dropna=False, sort=True)
    return grouped.agg(runs=("task", "size"), tasks=("task", lambda t: ", ".join(sorted(set(t))))).reset_index()


def _header(runs: pd.DataFrame, ctx: ReportContext) -> list[str]:
    envs = environments(runs)
    first = envs.iloc[0]
    commits = runs["env_git_commit"].fillna("unknown").value_counts()
    versions = ", ".join(sorted(set(runs["env_optbench"].astype(str))))
    lines = [
        f"# optbench leaderboard: preset `{ctx.preset}`",
        "",
        f"- Date: {ctx.date}",
        f"- Hardware: {first['env_device_name']} ({first['env_device']}); CPU {first['env_cpu']}; "
        f"{first['env_threads']} torch threads",
        f"- torch {first['env_torch']}; optbench {versions}; git commit(s): "
        + ", ".join(f"`{c}` ({n} runs)" for c, n in commits.items()),
        f"- Preset: `{ctx.preset}`; seeds: {', '.join(str(s) for s in sorted(runs['seed'].unique()))}",
        f"- Runs made by: `{ctx.produced_by}`" if ctx.produced_by
        else "- Runs made by: not recorded (pass `--command` to `optbench report`)",
        f"- This page made by: `{ctx.report_command}` from {len(runs)} run records in `{ctx.runs_dir}`",
        "- Optimizers are compared at tuned learning rates (the `optbench sweep` table, `tasks/tuned_lrs.json`); "
        "a row whose learning rate did not come from the sweep says where it came from in the `lr` column.",
        "- Memory: **state** = exact optimizer-state bytes (numel × element size of every tensor the optimizer "
        "holds, `optbench.state`); **peak** = tracked peak of the runner's separate memory pass (method in each "
        "task's footnote). Quality: mean ± sample std over seeds, ok runs only. Times: median step "
        "(forward+backward+step, warm-up excluded), median over seeds.",
    ]
    if len(envs) > 1:
        lines += ["", f"> **Mixed environments:** the `{ctx.preset}` runs here come from {len(envs)} different "
                      "hardware/torch setups; step times and peaks are not comparable across them.", ""]
        lines.append(_table([{"device": e["env_device"], "device name": e["env_device_name"], "cpu": e["env_cpu"],
                              "threads": e["env_threads"], "torch": e["env_torch"], "runs": e["runs"],
                              "tasks": e["tasks"]} for _, e in envs.iterrows()]))
    return lines


def _task_rows(rows: pd.DataFrame, methods: dict[str, str]) -> list[dict]:
    metric = rows["metric_name"].iloc[0]
    show_cuda = bool(rows["cuda_max_allocated"].notna().any())  # allocator figure, CUDA runs only
    direction = "higher is better" if rows["higher_is_better"].iloc[0] else "lower is better"
    out = []
    for _, r in rows.iterrows():
        baseline = r["optimizer"] == BASELINE
        lr = f"{r['lr']:.3g}" + ("" if r["lr_source"] == "sweep" else f" ({r['lr_source']}, not swept)")
        out.append({
            "optimizer": r["optimizer"], "lr": lr,
            f"{metric} (mean ± std)": fmt_metric(r["metric_mean"], r["metric_std"], r["metric_n"]),
            f"Δ vs AdamW ({direction})": "baseline" if baseline else _fmt(r["delta_vs_adamw"], "+.4f"),
            "state (exact)": fmt_bytes(r["optimizer_state_bytes"]),
            "state % AdamW": _fmt(r["state_pct_of_adamw"], ".1f", "%"),
            "peak (tracked)": fmt_bytes(r["peak_bytes"]),
            **{f"peak: {cat}": fmt_bytes(r[col]) for cat, col in zip(MEMORY_CATEGORIES, PEAK_COLUMNS)},
            "peak method": methods.get(r["memory_method"], "—"),
            **({"CUDA max allocated": fmt_bytes(r["cuda_max_allocated"])} if show_cuda else {}),
            "step ms": fmt_ms(r["step_ms"]),
            "step × AdamW": _fmt(r["step_time_ratio_to_adamw"], ".2f", "×"),
            "steps to target": (f"{r['steps_to_target_mean']:.0f} ({r['target_reached']}/{r['n_ok']} ok runs)"
                                if r["target_reached"] else f"not reached (0/{r['n_ok']})"),
            "status": fmt_status(r),
        })
    return out


def _task_section(task: str, rows: pd.DataFrame, runs: pd.DataFrame, plots: dict[str, Path] | None) -> list[str]:
    first = rows.iloc[0]
    task_runs = runs[(runs["task"] == task) & runs["ranked"]]
    direction = "higher is better" if first["higher_is_better"] else "lower is better"
    steps = ", ".join(str(s) for s in sorted(task_runs["steps"].unique()))
    batch = ", ".join(str(b) for b in sorted(task_runs["batch_size"].unique()))
    target = "; no target set"
    if math.isfinite(first["target"]):
        sign = "≥" if first["higher_is_better"] else "≤"
        target = f"; steps-to-target: first eval with {first['metric_name']} {sign} {first['target']:g}"
    methods = {m: f"[{i + 1}]" for i, m in enumerate(sorted(set(rows["memory_method"]) - {""}))}
    lines = ["", f"## {task}", "",
             f"Metric: {first['metric_name']} ({direction}); budget {steps} steps × batch {batch}{target}.", ""]
    notes = sorted(set(n for n in task_runs["notes"] if n))
    if notes:
        lines += [f"Notes from the runs: {'; '.join(notes)}", ""]
    if BASELINE not in set(rows["optimizer"]):
        lines += [f"No `{BASELINE}` runs for this task: ratios to AdamW are not available.", ""]
    ordered = rows.assign(_rank=metric_ranks(rows)).sort_values(["_rank", "optimizer"])
    lines.append(_table(_task_rows(ordered, methods)))
    lines.append("")
    lines += [f"{label} peak method: {_md_cell(method)}" + "  " for method, label in methods.items()]
    if plots:
        links = ", ".join(f"[{title}]({path.as_posix()})" for title, path in plots.items())
        lines += ["", f"Plots: {links}"]
    return lines


def _overall_section(summary: pd.DataFrame) -> list[str]:
    rows = [{
        "optimizer": r["optimizer"], "tasks": r["tasks"],
        "state ÷ AdamW (geomean)": _fmt(r["state_ratio_gmean"], ".3f"),
        "peak ÷ AdamW (geomean)": _fmt(r["peak_ratio_gmean"], ".3f"),
        "step time ÷ AdamW (geomean)": _fmt(r["step_time_ratio_gmean"], ".2f"),
        "mean rank": _fmt(r["mean_rank"], ".2f"), "wins": r["wins"],
    } for _, r in summary.iterrows()]
    return ["", "## Overall", "",
            "Ratios are per task to AdamW on the same task, then the geometric mean over the tasks where both "
            "exist (0 when an optimizer keeps no state on some task). Rank is by mean final metric within a task "
            "(1 = best, ties share; an optimizer with no ok run ranks last); wins count rank-1 places.", "",
            _table(rows)]


def _failed_section(runs: pd.DataFrame, corrupt: Sequence[tuple[Path, str]]) -> list[str]:
    failed = runs[runs["status"] != "ok"]
    lines = ["", "## Failed runs", ""]
    if failed.empty:
        lines.append("None: every run finished with status ok.")
    else:
        lines.append(_table([{
            "task": r["task"], "optimizer": r["optimizer"], "seed": r["seed"], "status": r["status"],
            "error": _md_cell(r["error"] if isinstance(r["error"], str) and r["error"]
                              else f"diverged at step {_fmt(_number(r['diverged_at_step']), '.0f')}"),
            "file": _md_cell(Path(r["file"]).name),
        } for _, r in failed.iterrows()]))
    lines += ["", "## Corrupt run files (skipped)", ""]
    if not corrupt:
        lines.append("None.")
    else:
        lines.append(_table([{"file": _md_cell(p), "problem": _md_cell(msg)} for p, msg in corrupt]))
    return lines


def _others_section(others: pd.DataFrame) -> list[str]:
    if others.empty:
        return []
    rows = [{"task": r["task"], "optimizer": r["optimizer"], "hparams": _md_cell(r["hparams"]),
             "lr source": r["lr_source"], "runs": r["n_runs"],
             "final metric": fmt_metric(r["metric_mean"], r["metric_std"], r["metric_n"])}
            for _, r in others.iterrows()]
    return ["", "## Other configurations in the runs dir (not ranked)", "",
            "Each (task, optimizer) above ranks one configuration: learning rate from the sweep, else the task's "
            "default, else the optimizer's, else an explicit one. These runs were found too:", "", _table(rows)]


def render_markdown(runs: pd.DataFrame, board: pd.DataFrame, summary: pd.DataFrame, others: pd.DataFrame,
                    corrupt: Sequence[tuple[Path, str]], ctx: ReportContext,
                    plots: dict[str, dict[str, Path]] | None = None) -> str:
    lines = _header(runs, ctx)
    for task, rows in board.groupby("task", sort=True):
        lines += _task_section(task, rows, runs, (plots or {}).get(task))
    lines += _overall_section(summary)
    lines += _others_section(others)
    lines += _failed_section(runs, corrupt)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(names: Sequence[str]) -> dict[str, object]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    others = [n for n in names if n != BASELINE]
    colors = {name: cmap(i % cmap.N) for i, name in enumerate(others)}
    colors[BASELINE] = "black"
    return colors


def mean_curve(runs: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Mean and std over seeds of the ``kind`` ('train' or 'eval') curve at each step; columns step, mean, std, n."""
    points = [(step, value) for curve in runs["_curves"] for step, value in curve[kind]]
    frame = pd.DataFrame(points, columns=["step", "value"]).apply(pd.to_numeric, errors="coerce")
    stats = frame.groupby("step")["value"].agg(["mean", "std", "count"]).reset_index()
    return stats.rename(columns={"count": "n"})


def plot_curves(task: str, task_runs: pd.DataFrame, path: Path) -> Path | None:
    """Train loss and eval metric vs step, one line per optimizer (mean over ok seeds, shaded ± std).
    None if the task has no ok run."""
    if not (task_runs["status"] == "ok").any():
        return None
    plt = _pyplot()
    names = sorted(task_runs["optimizer"].unique())
    colors = _colors(names)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    metric = task_runs["metric_name"].iloc[0]
    for name in names:
        ok = task_runs[(task_runs["optimizer"] == name) & (task_runs["status"] == "ok")]
        if ok.empty:
            continue
        for ax, kind in zip(axes, ("train", "eval")):
            stats = mean_curve(ok, kind)
            if stats.empty:
                continue
            style = "-" if name == BASELINE else LINESTYLES[names.index(name) % len(LINESTYLES)]
            ax.plot(stats["step"], stats["mean"], color=colors[name], lw=2.2 if name == BASELINE else 1.4,
                    ls=style, label=f"{name} (n={len(ok)})", marker="o" if kind == "eval" else None, ms=3)
            if len(ok) > 1:
                ax.fill_between(stats["step"], stats["mean"] - stats["std"].fillna(0),
                                stats["mean"] + stats["std"].fillna(0), color=colors[name], alpha=0.15, lw=0)
    axes[0].set(title=f"{task}: train loss", xlabel="step", ylabel="train loss (mean over seeds)")
    losses = task_runs.loc[task_runs["status"] == "ok", "final_train_loss"].dropna()
    if len(losses) and losses.min() > 0 and task_runs["_curves"].map(lambda c: max(
            (v for _, v in c["train"]), default=1)).max() / losses.min() > 20:
        axes[0].set_yscale("log")
    axes[1].set(title=f"{task}: held-out {metric}", xlabel="step", ylabel=f"{metric} (mean over seeds)")
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center right", frameon=False)
    fig.suptitle("ok runs only; shaded band = ± 1 std over seeds", fontsize=9, y=0.02, va="bottom")
    fig.tight_layout(rect=(0, 0.04, 0.87, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Area shared by two (x0, y0, x1, y1) boxes."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _place_labels(ax, points: list[tuple[float, float, str, float]], fontsize: int = 8) -> None:
    """Annotate (x, y, name, y error) points: points a few pixels apart share one label; each label takes the first
    spot around its point, inside the axes, that overlaps markers, error bars and labels already placed the least."""
    ax.autoscale_view()
    scale = ax.figure.dpi / 72.0  # points -> display pixels
    char_w, line_h, gap = 0.6 * fontsize * scale, 1.2 * fontsize * scale, 7 * scale
    clusters: list[tuple[float, float, float, float, list[str]]] = []  # screen x, y, data x, y, names
    bars = []
    for px, py, text, err in points:
        sx, sy = ax.transData.transform((px, py))
        if math.isfinite(err) and err > 0:
            low, high = (ax.transData.transform((px, py + d))[1] for d in (-err, err))
            bars.append((sx - 3, low, sx + 3, high))
        near = next((c for c in clusters if abs(c[0] - sx) < gap and abs(c[1] - sy) < gap), None)
        if near:
            near[4].append(text)
        else:
            clusters.append((sx, sy, px, py, [text]))
    frame = ax.bbox.extents
    placed = [(sx - gap, sy - gap, sx + gap, sy + gap) for sx, sy, *_ in clusters] + bars  # obstacles too
    for sx, sy, px, py, names in sorted(clusters, key=lambda c: (c[1], c[0])):
        text = ", ".join(names)
        width = char_w * len(text)
        spots = [(gap, -line_h / 2), (gap, gap), (gap, -gap - line_h), (-gap - width, -line_h / 2),
                 (-gap - width, gap), (-gap - width, -gap - line_h), (gap, 2 * gap + line_h), (gap, -2 * gap - line_h),
                 (-width / 2, gap + line_h / 2), (-width / 2, -gap - 1.5 * line_h)]
        boxes = [(sx + dx, sy + dy, sx + dx + width, sy + dy + line_h) for dx, dy in spots]
        inside = [b for b in boxes if frame[0] <= b[0] and b[2] <= frame[2] and frame[1] <= b[1] and b[3] <= frame[3]]
        box = min(inside or boxes, key=lambda b: sum(_overlap(b, o) for o in placed))  # first of the least crowded
        placed.append(box)
        leader = None if box == boxes[0] else {"arrowstyle": "-", "lw": 0.6, "color": "0.5", "shrinkB": 4}
        ax.annotate(text, (px, py), textcoords="offset pixels", xytext=(box[0] - sx, box[1] - sy), fontsize=fontsize,
                    arrowprops=leader)


def _pareto_panel(ax, rows: pd.DataFrame, column: str, label: str, colors: dict) -> None:
    rows = rows[rows[column].notna() & rows["metric_mean"].notna()]
    if rows.empty:
        ax.text(0.5, 0.5, f"{label}: not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    unit, size = byte_unit(rows[column].max())
    x, y = (rows[column] / size).tolist(), rows["metric_mean"].tolist()
    front = set(pareto_front(x, y, bool(rows["higher_is_better"].iloc[0])))
    for i, (_, r) in enumerate(rows.iterrows()):
        on_front = i in front
        ax.errorbar(x[i], y[i], yerr=r["metric_std"] if math.isfinite(r["metric_std"]) else None, fmt="o", ms=7,
                    color=colors[r["optimizer"]], mfc=colors[r["optimizer"]] if on_front else "white", capsize=3)
    fx, fy = zip(*sorted((x[i], y[i]) for i in front))
    ax.step(fx, fy, where="post", color="grey", ls="--", lw=1, label="Pareto front (filled markers)")
    if min(x) > 0 and max(x) / min(x) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.18, y=0.08)
    _place_labels(ax, list(zip(x, y, rows["optimizer"], rows["metric_std"])))
    ax.set(xlabel=f"{label} ({unit})", ylabel=rows["metric_name"].iloc[0])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def plot_pareto(task: str, rows: pd.DataFrame, path: Path) -> Path | None:
    """Final metric vs exact optimizer-state bytes (left) and vs tracked peak (right); Pareto front marked.
    None if no optimizer has a final metric."""
    if rows["metric_mean"].isna().all():
        return None
    plt = _pyplot()
    colors = _colors(sorted(rows["optimizer"]))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    _pareto_panel(axes[0], rows, "optimizer_state_bytes", "optimizer state, exact", colors)
    _pareto_panel(axes[1], rows, "peak_bytes", "training peak, tracked", colors)
    direction = "higher is better" if rows["higher_is_better"].iloc[0] else "lower is better"
    fig.suptitle(f"{task}: memory vs quality (final {rows['metric_name'].iloc[0]}, {direction}; "
                 "mean ± std over seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_memory_breakdown(task: str, rows: pd.DataFrame, path: Path) -> Path | None:
    """Stacked horizontal bars of the tracked peak by category, one bar per optimizer; None if nothing measured."""
    rows = rows[rows["peak_bytes"].notna()].sort_values("peak_bytes", ascending=False)
    if rows.empty:
        return None
    plt = _pyplot()
    unit, size = byte_unit(rows["peak_bytes"].max())
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.8))
    left = pd.Series(0.0, index=rows.index)
    cmap = plt.get_cmap("Set2")
    for i, (cat, col) in enumerate(zip(MEMORY_CATEGORIES, PEAK_COLUMNS)):
        width = rows[col].fillna(0) / size
        ax.barh(rows["optimizer"], width, left=left, color=cmap(i), label=cat)
        left += width
    for y, (_, r) in enumerate(rows.iterrows()):
        ax.text(left.loc[r.name], y, f"  {fmt_bytes(r['peak_bytes'])}", va="center", fontsize=8)
    ax.set_xlim(0, left.max() * 1.18)
    ax.set_xlabel(f"tracked peak memory ({unit})")
    ax.set_title(f"{task}: peak memory by category (memory pass)", pad=22)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(MEMORY_CATEGORIES), frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(runs: pd.DataFrame, board: pd.DataFrame, plot_dir: Path, link_base: Path) -> dict[str, dict[str, Path]]:
    """Every task's plots; returns {task: {title: path relative to ``link_base``}}."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    links: dict[str, dict[str, Path]] = {}
    for task, rows in board.groupby("task", sort=True):
        task_runs = runs[(runs["task"] == task) & runs["ranked"]]
        made = {
            "loss vs step": plot_curves(task, task_runs, plot_dir / f"{task}_curves.png"),
            "memory vs quality (Pareto)": plot_pareto(task, rows, plot_dir / f"{task}_pareto.png"),
            "peak memory breakdown": plot_memory_breakdown(task, rows, plot_dir / f"{task}_memory.png"),
        }
        links[task] = {title: p.relative_to(link_base) for title, p in made.items() if p is not None}
    return links


# ---------------------------------------------------------------------------------------------
# Everything


@dataclass
class ReportFiles:
    leaderboard_md: Path
    leaderboard_csv: Path
    runs_csv: Path
    plots: list[Path]
    n_runs: int
    n_corrupt: int
    n_failed: int


def write_report(runs_dir: str | Path = "results/runs", out: str | Path = "results", preset: str = "cpu",
                 produced_by: str | None = None, report_command: str = "optbench report",
                 plots: bool = True) -> ReportFiles:
    """Read the runs of ``preset`` and write LEADERBOARD.md, leaderboard.csv, runs.csv and plots under ``out``."""
    loaded = load_runs(runs_dir, preset)
    runs = runs_frame(loaded.records)
    runs["_curves"] = runs["file"].map({str(path): record["curve"] for path, record in loaded.records})
    board = aggregate(runs)
    summary = overall(board)
    others = other_configurations(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    links = make_plots(runs, board, out / "plots", out) if plots else {}
    ctx = ReportContext(preset, Path(runs_dir), produced_by, report_command)
    md = out / "LEADERBOARD.md"
    md.write_text(render_markdown(runs, board, summary, others, loaded.corrupt, ctx, links))
    board.to_csv(out / "leaderboard.csv", index=False)
    runs.drop(columns=["_curves"]).to_csv(out / "runs.csv", index=False)
    return ReportFiles(md, out / "leaderboard.csv", out / "runs.csv",
                       [out / p for task_links in links.values() for p in task_links.values()],
                       len(runs), len(loaded.corrupt), int((runs["status"] != "ok").sum()))
