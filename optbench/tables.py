"""The leaderboard's display tables: which columns, in what order, and how each figure is written.

The markdown (``optbench.markdown``) and the site (``optbench.site``) render the same tables,
so a reader sees the same figures in both. Each cell is a ``Cell``: the text shown and a raw
sort key (a number where the column is numeric), which the site's sortable tables use.

A column whose data is absent from the board is left out, not shown empty: the verdict
columns appear once the board carries ``verdict`` / ``diff`` / ``ci_low`` / ``ci_high``, the
bandwidth column once it carries ``step_bound_ratio``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd

from optbench.board import BASELINE, PEAK_COLUMNS, metric_ranks
from optbench.records import MEMORY_CATEGORIES
from optbench.units import byte_unit  # noqa: F401 - plots and the site import it from here
from optbench.units import format_bytes as fmt_bytes

NOT_COMPARABLE = "n/c"  # a step-time ratio across hardware or concurrency
DIFF_LABEL = "held-out loss diff vs AdamW (95% CI)"  # optbench.verdicts compares final held-out loss


class Cell(NamedTuple):
    text: str
    key: float | str | None  # what the column sorts by; None = no value


# ---------------------------------------------------------------------------------------------
# Figures as text


def _finite(x) -> bool:
    return x is not None and not isinstance(x, str) and math.isfinite(x)


def fmt(x: float, spec: str, suffix: str = "") -> str:
    return f"{x:{spec}}{suffix}" if _finite(x) else "—"


def fmt_ms(x: float) -> str:
    """Three significant figures without exponents (1.17, 71.5, 1910)."""
    if not _finite(x):
        return "—"
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def fmt_metric(mean: float, std: float, n: int) -> str:
    if not _finite(mean):
        return "— (n=0)"
    spread = f" ± {std:.4f}" if _finite(std) else ""
    return f"{mean:.4f}{spread} (n={n})"


def fmt_status(row: pd.Series) -> str:
    parts = [f"{row[f'n_{s}']} {s}" for s in ("ok", "diverged", "error") if row[f"n_{s}"]]
    return ", ".join(parts) or "none"


def fmt_interval(diff: float, low: float, high: float) -> str:
    if not _finite(diff):
        return "—"
    ci = f" [{low:+.4f}, {high:+.4f}]" if _finite(low) and _finite(high) else ""
    return f"{diff:+.4f}{ci}"


def _key(x) -> float | None:
    return float(x) if _finite(x) else None


def _num(x: float, text: str) -> Cell:
    return Cell(text, _key(x))


# ---------------------------------------------------------------------------------------------
# Tables


def peak_methods(rows: pd.DataFrame) -> dict[str, str]:
    """Footnote labels ([1], [2] ...) for the distinct peak-measurement methods of a task's rows."""
    return {m: f"[{i + 1}]" for i, m in enumerate(sorted(set(rows["memory_method"]) - {""}))}


def ranked(rows: pd.DataFrame) -> pd.DataFrame:
    """A task's rows in leaderboard order: best mean final metric first, then by name."""
    return rows.assign(_rank=metric_ranks(rows)).sort_values(["_rank", "optimizer"])


def _has(rows: pd.DataFrame, *columns: str) -> bool:
    return all(c in rows.columns for c in columns) and bool(rows[columns[0]].notna().any())


def _step_ratio(r: pd.Series, has_baseline: bool) -> Cell:
    ratio = r["step_time_ratio_to_adamw"]
    if not _finite(ratio) and has_baseline and _finite(r["step_ms"]) and not r.get("step_time_comparable", True):
        return Cell(NOT_COMPARABLE, None)
    return _num(ratio, fmt(ratio, ".2f", "×"))


def task_table(rows: pd.DataFrame) -> list[dict[str, Cell]]:
    """One task's table, one dict per optimizer in leaderboard order (column label -> cell)."""
    rows = ranked(rows)
    metric = rows["metric_name"].iloc[0]
    methods = peak_methods(rows)
    show_cuda = bool(rows["cuda_max_allocated"].notna().any())  # allocator figure, CUDA runs only
    show_verdict, show_diff = _has(rows, "verdict"), _has(rows, "diff", "ci_low", "ci_high")
    show_bound = _has(rows, "step_bound_ratio")
    # Accuracy is secondary: shown when the task reports it and it is not already the primary metric.
    show_accuracy = _has(rows, "accuracy_mean") and metric != "accuracy"
    has_baseline = BASELINE in set(rows["optimizer"])
    direction = "higher is better" if rows["higher_is_better"].iloc[0] else "lower is better"
    out = []
    for _, r in rows.iterrows():
        baseline = r["optimizer"] == BASELINE
        lr = f"{r['lr']:.3g}" + ("" if r["lr_source"] == "sweep" else f" ({r['lr_source']}, not swept)")
        reached = r["target_reached"]
        out.append({
            "optimizer": Cell(r["optimizer"], r["optimizer"]),
            "lr": _num(r["lr"], lr),
            f"{metric} (mean ± std)": _num(r["metric_mean"], fmt_metric(r["metric_mean"], r["metric_std"],
                                                                        r["metric_n"])),
            **({"verdict vs AdamW": Cell(str(r["verdict"]) if isinstance(r["verdict"], str) else "—",
                                         r["verdict"] if isinstance(r["verdict"], str) else None)}
               if show_verdict else {}),
            **({DIFF_LABEL: _num(r["diff"], fmt_interval(r["diff"], r["ci_low"], r["ci_high"]))} if show_diff else {}),
            **({"accuracy (secondary)": _num(r["accuracy_mean"], fmt_metric(r["accuracy_mean"], r["accuracy_std"],
                                                                            r["metric_n"]))} if show_accuracy else {}),
            f"Δ vs AdamW ({direction})": (Cell("baseline", 0.0) if baseline
                                          else _num(r["delta_vs_adamw"], fmt(r["delta_vs_adamw"], "+.4f"))),
            "state (exact)": _num(r["optimizer_state_bytes"], fmt_bytes(r["optimizer_state_bytes"])),
            "state % AdamW": _num(r["state_pct_of_adamw"], fmt(r["state_pct_of_adamw"], ".1f", "%")),
            "peak (tracked)": _num(r["peak_bytes"], fmt_bytes(r["peak_bytes"])),
            **{f"peak: {cat}": _num(r[col], fmt_bytes(r[col])) for cat, col in zip(MEMORY_CATEGORIES, PEAK_COLUMNS)},
            "peak method": Cell(methods.get(r["memory_method"], "—"), methods.get(r["memory_method"])),
            **({"CUDA max allocated": _num(r["cuda_max_allocated"], fmt_bytes(r["cuda_max_allocated"]))}
               if show_cuda else {}),
            "step ms": _num(r["step_ms"], fmt_ms(r["step_ms"])),
            "step × AdamW": _step_ratio(r, has_baseline),
            **({"step ÷ bound": _num(r["step_bound_ratio"], fmt(r["step_bound_ratio"], ".2f", "×"))}
               if show_bound else {}),
            "steps to target": Cell(f"{r['steps_to_target_mean']:.0f} ({reached}/{r['n_ok']} ok runs)" if reached
                                    else f"not reached (0/{r['n_ok']})",
                                    _key(r["steps_to_target_mean"]) if reached else None),
            "status": Cell(fmt_status(r), r["n_ok"]),
        })
    return out


def overall_table(summary: pd.DataFrame) -> list[dict[str, Cell]]:
    """One row per optimizer: geometric-mean ratios to AdamW over tasks, mean rank, wins."""
    return [{
        "optimizer": Cell(r["optimizer"], r["optimizer"]), "tasks": Cell(str(r["tasks"]), r["tasks"]),
        "state ÷ AdamW (geomean)": _num(r["state_ratio_gmean"], fmt(r["state_ratio_gmean"], ".3f")),
        "peak ÷ AdamW (geomean)": _num(r["peak_ratio_gmean"], fmt(r["peak_ratio_gmean"], ".3f")),
        "step time ÷ AdamW (geomean)": _num(r["step_time_ratio_gmean"], fmt(r["step_time_ratio_gmean"], ".2f")),
        "mean rank": _num(r["mean_rank"], fmt(r["mean_rank"], ".2f")), "wins": Cell(str(r["wins"]), r["wins"]),
    } for _, r in summary.iterrows()]


def texts(table: list[dict[str, Cell]]) -> list[dict[str, str]]:
    """The table as plain text cells."""
    return [{label: cell.text for label, cell in row.items()} for row in table]
