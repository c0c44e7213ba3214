"""The markdown leaderboard's figures: PNGs drawn with matplotlib (Agg) from a ``Board``.

Per task: loss curves with seed bands, memory vs quality with the Pareto front, and the peak
memory breakdown. Point labels on the Pareto panels are placed by adjustText, which moves
them off markers, error bars and each other. The site draws the same data interactively
(``optbench.site``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from optbench.board import BASELINE, PEAK_COLUMNS, Board, mean_curve, pareto_front
from optbench.records import MEMORY_CATEGORIES
from optbench.tables import byte_unit, fmt_bytes

LINESTYLES = ("-", "--", "-.", ":")  # overlapping curves stay visible


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
            stats = mean_curve(ok["curve"], kind)
            if stats.empty:
                continue
            style = "-" if name == BASELINE else LINESTYLES[names.index(name) % len(LINESTYLES)]
            ax.plot(stats["step"], stats["mean"], color=colors[name], lw=2.2 if name == BASELINE else 1.4,
                    ls=style, label=f"{name} (n={len(ok)})", marker="o" if kind == "eval" else None, ms=3)
            if len(ok) > 1:
                ax.fill_between(stats["step"], stats["mean"] - stats["std"].fillna(0),
                                stats["mean"] + stats["std"].fillna(0), color=colors[name], alpha=0.15, lw=0)
    axes[0].set(title=f"{task}: train loss", xlabel="step", ylabel="train loss (mean over seeds)")
    if wide_loss_range(task_runs):
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


def wide_loss_range(task_runs: pd.DataFrame) -> bool:
    """True when the train loss spans more than a factor 20 (the loss axis is then logarithmic)."""
    losses = task_runs.loc[task_runs["status"] == "ok", "final_train_loss"].dropna()
    highest = task_runs["curve"].map(lambda c: max((v for _, v in c["train"]), default=1)).max()
    return bool(len(losses) and losses.min() > 0 and highest / losses.min() > 20)


def _label_points(ax, x: Sequence[float], y: Sequence[float], names: Sequence[str],
                  avoid: Sequence[tuple[float, float]]) -> None:
    """Name each point; adjustText moves the labels off the points, the ``avoid`` points (error-bar ends)
    and each other, with a leader line where a label had to move away."""
    from adjustText import adjust_text

    ax.autoscale_view()
    labels = [ax.text(px, py, name, fontsize=8) for px, py, name in zip(x, y, names)]
    adjust_text(labels, x=[*x, *(a for a, _ in avoid)], y=[*y, *(b for _, b in avoid)], ax=ax,
                expand=(1.3, 1.6), force_text=(0.3, 0.6), arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.5"})


def _pareto_panel(ax, rows: pd.DataFrame, column: str, label: str, colors: dict) -> None:
    rows = rows[rows[column].notna() & rows["metric_mean"].notna()]
    if rows.empty:
        ax.text(0.5, 0.5, f"{label}: not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    unit, size = byte_unit(rows[column].max())
    x, y = (rows[column] / size).tolist(), rows["metric_mean"].tolist()
    front = set(pareto_front(x, y, bool(rows["higher_is_better"].iloc[0])))
    bar_ends = []
    for i, (_, r) in enumerate(rows.iterrows()):
        on_front = i in front
        std = r["metric_std"] if math.isfinite(r["metric_std"]) else None
        ax.errorbar(x[i], y[i], yerr=std, fmt="o", ms=7, color=colors[r["optimizer"]],
                    mfc=colors[r["optimizer"]] if on_front else "white", capsize=3)
        bar_ends += [(x[i], y[i] - std), (x[i], y[i] + std)] if std else []
    fx, fy = zip(*sorted((x[i], y[i]) for i in front))
    ax.step(fx, fy, where="post", color="grey", ls="--", lw=1, label="Pareto front (filled markers)")
    if min(x) > 0 and max(x) / min(x) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.18, y=0.08)
    ax.set(xlabel=f"{label} ({unit})", ylabel=rows["metric_name"].iloc[0])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _label_points(ax, x, y, rows["optimizer"].tolist(), bar_ends)


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


def make_plots(board: Board, plot_dir: Path, link_base: Path) -> dict[str, dict[str, Path]]:
    """Every task's plots; returns {task: {title: path relative to ``link_base``}}."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    links: dict[str, dict[str, Path]] = {}
    for task in board.tasks:
        rows = board.task_cells(task)
        made = {
            "loss vs step": plot_curves(task, board.task_runs(task), plot_dir / f"{task}_curves.png"),
            "memory vs quality (Pareto)": plot_pareto(task, rows, plot_dir / f"{task}_pareto.png"),
            "peak memory breakdown": plot_memory_breakdown(task, rows, plot_dir / f"{task}_memory.png"),
        }
        links[task] = {title: p.relative_to(link_base) for title, p in made.items() if p is not None}
    return links
