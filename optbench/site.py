"""The leaderboard as a static site: ``index.html`` plus one page per task, opened from disk.

The pages are jinja2 templates (``site_assets/templates``) filled from a ``Board``; tables come
from ``optbench.tables``, so they hold the markdown's figures, with a raw sort key per cell for
the sortable tables (tablesort). Figures are plotly figures built here with plotly's Python
API and drawn in the page by plotly.js. All JavaScript ships in ``assets/`` (one shared
plotly.js, the basic bundle: scatter and bar traces are all the site draws), so a page makes
no network request and GitHub Pages can serve the folder as it is.

Per task: the table with filters (state memory as a share of AdamW's, verdict, family); the
Pareto plot of quality against exact optimizer-state bytes (hover: optimizer, lr, 95% CI);
train-loss and held-out-metric curves with ± 1 std seed bands; the lr-sensitivity curves of
the task's published sweep (``<sweeps_dir>/<preset>/<task>.csv``, written by ``optbench
sweep``); the peak-memory breakdown.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
from markupsafe import Markup, escape

from optbench.board import BASELINE, PEAK_COLUMNS, Board, mean_curve, metric_ranks, pareto_front
from optbench.markdown import OVERALL_TEXT, ReportContext, header_facts, table_notes, task_facts
from optbench.records import MEMORY_CATEGORIES
from optbench.tables import Cell, byte_unit, fmt, fmt_bytes, overall_table, task_table

ASSETS = Path(__file__).resolve().parent / "site_assets"
SHIPPED = {"plotly-basic.min.js": ASSETS / "vendor" / "plotly-basic.min.js",
           "tablesort.min.js": ASSETS / "vendor" / "tablesort.min.js",
           "site.js": ASSETS / "site.js", "site.css": ASSETS / "site.css"}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
           "#756bb1", "#636363")
CATEGORY_COLORS = ("#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854")


# ---------------------------------------------------------------------------------------------
# Figures (plotly's Python API, serialised for plotly.js)


def colors(names) -> dict[str, str]:
    """One colour per optimizer, the same on every figure of the site; AdamW is black."""
    others = sorted(n for n in set(names) if n != BASELINE)
    return {**{name: PALETTE[i % len(PALETTE)] for i, name in enumerate(others)}, BASELINE: "#000000"}


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _layout(**extra) -> dict:
    axis = {"gridcolor": "#e6e6e6", "zeroline": False, "linecolor": "#999", "showline": True}
    layout = {"template": "none", "margin": {"l": 64, "r": 16, "t": 40, "b": 52}, "height": 420,
              "font": {"family": "system-ui, sans-serif", "size": 12}, "hovermode": "closest",
              "legend": {"font": {"size": 11}}, "xaxis": dict(axis), "yaxis": dict(axis)}
    for key, value in extra.items():
        layout[key] = {**layout[key], **value} if isinstance(value, dict) and key in layout else value
    return layout


def _figure(traces: list, layout: dict) -> dict:
    import plotly.graph_objects as go

    return json.loads(go.Figure(data=traces, layout=layout).to_json())


def _round(values) -> list:
    return [None if v is None or not math.isfinite(v) else float(f"{v:.5g}") for v in values]


def _ci_text(r: pd.Series) -> str:
    if "ci_low" in r and pd.notna(r["ci_low"]) and pd.notna(r["diff"]):
        return f"diff vs AdamW {r['diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
    if math.isfinite(r["metric_ci_low"]):
        return f"[{r['metric_ci_low']:.4f}, {r['metric_ci_high']:.4f}] (n={r['metric_n']})"
    return f"— (n={r['metric_n']})"


def pareto_figure(rows: pd.DataFrame, palette: dict[str, str]) -> dict | None:
    """Final metric (95% CI bars) against exact optimizer-state bytes: one trace, one point per optimizer."""
    rows = rows[rows["optimizer_state_bytes"].notna() & rows["metric_mean"].notna()].sort_values("optimizer")
    if rows.empty:
        return None
    unit, size = byte_unit(rows["optimizer_state_bytes"].max())
    x, y = (rows["optimizer_state_bytes"] / size).tolist(), rows["metric_mean"].tolist()
    front = set(pareto_front(x, y, bool(rows["higher_is_better"].iloc[0])))
    metric = rows["metric_name"].iloc[0]
    traces = []
    for i, (_, r) in enumerate(rows.iterrows()):
        color = palette[r["optimizer"]]
        has_ci = math.isfinite(r["metric_ci_low"])
        traces.append({
            "type": "scatter", "mode": "markers", "name": r["optimizer"], "x": [x[i]], "y": [y[i]],
            "marker": {"size": 11, "color": color if i in front else "white", "line": {"color": color, "width": 2}},
            "error_y": {"type": "data", "symmetric": False, "array": [r["metric_ci_high"] - y[i]],
                        "arrayminus": [y[i] - r["metric_ci_low"]], "color": color, "visible": has_ci},
            "customdata": [[f"{r['lr']:.3g}", _ci_text(r), fmt_bytes(r["optimizer_state_bytes"]),
                            fmt(r["state_pct_of_adamw"], ".1f", "%")]],
            "hovertemplate": (f"<b>{r['optimizer']}</b><br>lr %{{customdata[0]}}<br>{metric} %{{y:.4f}}"
                              "<br>95% CI %{customdata[1]}<br>state %{customdata[2]} (%{customdata[3]} of AdamW)"
                              "<extra></extra>"),
        })
    fx, fy = zip(*sorted((x[i], y[i]) for i in front))
    traces.append({"type": "scatter", "mode": "lines", "name": "Pareto front (filled)", "x": list(fx), "y": list(fy),
                   "line": {"shape": "hv", "dash": "dash", "color": "#888", "width": 1}, "hoverinfo": "skip"})
    log = min(x) > 0 and max(x) / min(x) > 20
    direction = "higher is better" if rows["higher_is_better"].iloc[0] else "lower is better"
    return _figure(traces, _layout(
        title={"text": f"{metric} ({direction}) vs optimizer state; bars: 95% CI over seeds", "font": {"size": 13}},
        xaxis={"title": {"text": f"optimizer state, exact ({unit})"}, "type": "log" if log else "linear"},
        yaxis={"title": {"text": metric}}))


def curve_figure(task_runs: pd.DataFrame, kind: str, palette: dict[str, str]) -> dict | None:
    """Mean over ok seeds per optimizer, with a ± 1 std band; ``kind`` 'train' (loss) or 'eval' (metric)."""
    ok = task_runs[task_runs["status"] == "ok"]
    if ok.empty:
        return None
    traces = []
    for name, runs in ok.groupby("optimizer", sort=True):
        stats = mean_curve(runs["curve"], kind)
        if stats.empty:
            continue
        steps, mean, std = stats["step"].tolist(), stats["mean"].tolist(), stats["std"].fillna(0).tolist()
        if len(runs) > 1:
            traces.append({"type": "scatter", "mode": "lines", "x": steps + steps[::-1],
                           "y": _round([m + s for m, s in zip(mean, std)] + [m - s for m, s in zip(mean, std)][::-1]),
                           "fill": "toself", "fillcolor": _rgba(palette[name], 0.15), "line": {"width": 0},
                           "hoverinfo": "skip", "showlegend": False, "legendgroup": name, "name": f"{name} ± std"})
        traces.append({"type": "scatter", "mode": "lines+markers" if kind == "eval" else "lines", "x": steps,
                       "y": _round(mean), "name": f"{name} (n={len(runs)})", "legendgroup": name,
                       "line": {"color": palette[name], "width": 2.5 if name == BASELINE else 1.5},
                       "hovertemplate": f"{name}<br>step %{{x}}<br>%{{y:.4f}}<extra></extra>"})
    metric = task_runs["metric_name"].iloc[0]
    label = "train loss" if kind == "train" else f"held-out {metric}"
    return _figure(traces, _layout(title={"text": f"{label} (mean over seeds, band ± 1 std)", "font": {"size": 13}},
                                   xaxis={"title": {"text": "step"}}, yaxis={"title": {"text": label}}))


def read_sweep(sweeps_dir: Path, preset: str, task: str) -> pd.DataFrame | None:
    """The task's published sweep points (``optbench sweep``'s CSV), or None when there is none."""
    path = sweeps_dir / preset / f"{task}.csv"
    return pd.read_csv(path) if path.is_file() else None


def sweep_figure(points: pd.DataFrame | None, palette: dict[str, str]) -> dict | None:
    """Final held-out loss against lr per optimizer (mean and std over seeds, failed lrs left out); the chosen
    lr is a star."""
    if points is None or points.empty:
        return None
    ok = points[(points["status"] == "ok") & points["eval_loss"].notna()]
    traces = []
    for name, rows in ok.groupby("optimizer", sort=True):
        stats = rows.groupby("lr")["eval_loss"].agg(["mean", "std", "count"]).reset_index()
        chosen = set(points.loc[(points["optimizer"] == name) & (points["chosen"] == 1), "lr"])
        color = palette.get(name, "#444")
        traces.append({"type": "scatter", "mode": "lines+markers", "name": name, "x": stats["lr"].tolist(),
                       "y": _round(stats["mean"]), "legendgroup": name,
                       "error_y": {"type": "data", "array": _round(stats["std"].fillna(0)), "color": color},
                       "marker": {"color": color, "size": [14 if lr in chosen else 6 for lr in stats["lr"]],
                                  "symbol": ["star" if lr in chosen else "circle" for lr in stats["lr"]]},
                       "line": {"color": color}, "customdata": stats["count"].tolist(),
                       "hovertemplate": f"{name}<br>lr %{{x:.3g}}<br>held-out loss %{{y:.4f}} "
                                        "(seeds: %{customdata})<extra></extra>"})
    return _figure(traces, _layout(
        title={"text": "lr sensitivity: final held-out loss (mean ± std over seeds; star = chosen lr)",
               "font": {"size": 13}},
        xaxis={"title": {"text": "learning rate"}, "type": "log"}, yaxis={"title": {"text": "held-out loss"}}))


def memory_figure(rows: pd.DataFrame) -> dict | None:
    """The tracked peak split by category: one stacked horizontal bar per optimizer."""
    rows = rows[rows["peak_bytes"].notna()].sort_values("peak_bytes")
    if rows.empty:
        return None
    unit, size = byte_unit(rows["peak_bytes"].max())
    traces = [{"type": "bar", "orientation": "h", "name": cat, "y": rows["optimizer"].tolist(),
               "x": _round((rows[col].fillna(0) / size).tolist()), "marker": {"color": color},
               "hovertemplate": f"%{{y}}<br>{cat}: %{{x:.3f}} {unit}<extra></extra>"}
              for cat, col, color in zip(MEMORY_CATEGORIES, PEAK_COLUMNS, CATEGORY_COLORS)]
    return _figure(traces, _layout(barmode="stack", height=max(320, 28 * len(rows) + 120),
                                   title={"text": "peak memory by category (memory pass)", "font": {"size": 13}},
                                   xaxis={"title": {"text": f"tracked peak ({unit})"}}, margin={"l": 110}))


def ratio_figure(summary: pd.DataFrame, palette: dict[str, str]) -> dict | None:
    """Per optimizer, state memory against step time, both relative to AdamW (geometric means over tasks)."""
    rows = summary[summary["state_ratio_gmean"].notna() & summary["step_time_ratio_gmean"].notna()]
    if rows.empty:
        return None
    positions = ("top center", "bottom center", "middle right", "middle left")  # neighbours' labels alternate sides
    rows = rows.sort_values("state_ratio_gmean").reset_index(drop=True)
    traces = [{"type": "scatter", "mode": "markers+text", "name": r["optimizer"], "x": [r["state_ratio_gmean"]],
               "y": [r["step_time_ratio_gmean"]], "text": [r["optimizer"]], "textposition": positions[i % 4],
               "marker": {"size": 10, "color": palette[r["optimizer"]]}, "showlegend": False,
               "hovertemplate": f"<b>{r['optimizer']}</b><br>state ÷ AdamW %{{x:.3f}}<br>step time ÷ AdamW %{{y:.2f}}"
                                "<extra></extra>"} for i, r in rows.iterrows()]
    return _figure(traces, _layout(title={"text": "state memory and step time relative to AdamW (geomean over tasks)",
                                          "font": {"size": 13}},
                                   xaxis={"title": {"text": "optimizer state ÷ AdamW's"}},
                                   yaxis={"title": {"text": "step time ÷ AdamW's"}}))


def profile_figures(profiles: dict[str, pd.DataFrame] | None, palette: dict[str, str]) -> list[dict]:
    """One step plot per measure: the share of tasks on which each optimizer is within a factor τ of the best
    (``profiles`` as ``Board.profiles``: per measure, one row per optimizer and a ``τ=<tau>`` column per factor)."""
    figures = []
    for measure, table in sorted((profiles or {}).items()):
        taus = [c for c in table.columns if str(c).startswith("τ=")]
        x = [float(c[2:]) for c in taus]
        traces = [{"type": "scatter", "mode": "lines+markers", "name": r["optimizer"], "x": x,
                   "y": [float(r[c]) for c in taus],
                   "line": {"shape": "hv", "color": palette.get(r["optimizer"], "#444")},
                   "hovertemplate": f"{r['optimizer']}<br>τ %{{x:g}}: %{{y:.0%}} of tasks<extra></extra>"}
                  for _, r in table.sort_values("optimizer").iterrows()]
        figures.append(_figure(traces, _layout(
            title={"text": f"performance profile: {measure}", "font": {"size": 13}},
            xaxis={"title": {"text": "τ (within a factor τ of the task's best)"}, "type": "log"},
            yaxis={"title": {"text": "share of tasks"}, "range": [0, 1.05]})))
    return figures


# ---------------------------------------------------------------------------------------------
# Pages


def inline_markdown(text: str) -> Markup:
    """The header's markdown as HTML: `code` and **bold**, everything else escaped."""
    html = str(escape(text))
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)
    return Markup(re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", html))


def _sort_key(cell: Cell) -> str:
    """The ``data-sort`` value: a plain decimal for numbers (tablesort's number parsing has no exponents)."""
    if cell.key is None:
        return ""
    if isinstance(cell.key, str):
        return cell.key
    return f"{float(cell.key):.12f}".rstrip("0").rstrip(".")


def _html_table(table: list[dict[str, Cell]]) -> dict:
    """Header labels, whether each column sorts as a number, and the rows' (text, sort key) cells."""
    labels = list(table[0]) if table else []
    numeric = {label: all(not isinstance(row[label].key, str) for row in table) for label in labels}
    return {"labels": labels, "numeric": numeric,
            "rows": [[(row[label].text, _sort_key(row[label])) for label in labels] for row in table]}


def task_page(board: Board, task: str, sweeps: pd.DataFrame | None, palette: dict[str, str]) -> dict:
    """Everything the task template shows."""
    rows = board.task_cells(task)
    ordered = rows.assign(_rank=metric_ranks(rows)).sort_values(["_rank", "optimizer"])
    table = task_table(rows)
    for row, (_, r) in zip(table, ordered.iterrows()):  # the site adds the family after the name
        items = list(row.items())
        row.clear()
        row.update([items[0], ("family", Cell(r["family"], r["family"])), *items[1:]])
    verdicts = "verdict" in rows.columns and rows["verdict"].notna().any()
    attrs = [{"optimizer": r["optimizer"], "family": r["family"],
              "state_pct": "" if not math.isfinite(r["state_pct_of_adamw"]) else f"{r['state_pct_of_adamw']:.4f}",
              "verdict": r["verdict"] if verdicts and isinstance(r["verdict"], str) else "",
              "note": r.get("board_note", "") or ""} for _, r in ordered.iterrows()]
    state_pcts = [r["state_pct_of_adamw"] for _, r in rows.iterrows() if math.isfinite(r["state_pct_of_adamw"])]
    task_runs = board.task_runs(task)
    figures = {"pareto": pareto_figure(rows, palette), "curve-train": curve_figure(task_runs, "train", palette),
               "curve-eval": curve_figure(task_runs, "eval", palette), "sweep": sweep_figure(sweeps, palette),
               "memory": memory_figure(rows)}
    return {"task": task, "facts": task_facts(task, rows, task_runs), "notes": table_notes(rows),
            "table": _html_table(table), "attrs": attrs, "figures": figures,
            "budget_max": max(100, math.ceil(max(state_pcts, default=100))),
            "families": sorted(set(rows["family"])),
            "verdicts": sorted(set(rows["verdict"].dropna())) if verdicts else [],
            "methods": sorted(set(rows["memory_method"]) - {""})}


def overview_table(board: Board) -> dict:
    """Per optimizer: family, the verdict per task (or its rank and Δ vs AdamW before verdicts exist), then the
    overall table's ratios to AdamW."""
    cells = board.cells.assign(_rank=metric_ranks(board.cells))
    n_per_task = cells.groupby("task")["optimizer"].size()
    verdicts = "verdict" in cells.columns and cells["verdict"].notna().any()
    by_cell = {(r["task"], r["optimizer"]): r for _, r in cells.iterrows()}
    table = []
    for row in overall_table(board.summary):
        name = row["optimizer"].text
        family = cells.loc[cells["optimizer"] == name, "family"].iloc[0]
        per_task = {}
        for task in board.tasks:
            r = by_cell.get((task, name))
            if r is None:
                per_task[task] = Cell("—", None)
            elif verdicts:
                text = r["verdict"] if isinstance(r["verdict"], str) else "—"
                per_task[task] = Cell(text, text)
            else:
                rank = r["_rank"]
                delta = "baseline" if name == BASELINE else fmt(r["delta_vs_adamw"], "+.4f")
                text = f"#{rank:.0f} of {n_per_task[task]} ({delta})" if math.isfinite(rank) else "—"
                per_task[task] = Cell(text, float(rank) if math.isfinite(rank) else None)
        note = cells.loc[cells["optimizer"] == name, "board_note"].fillna("").iloc[0]
        table.append({"optimizer": row["optimizer"], "family": Cell(family, family), **per_task,
                      **{k: v for k, v in row.items() if k != "optimizer"}, "note": Cell(note, note)})
    return _html_table(table)


def _json_script(figures: dict) -> dict[str, Markup]:
    """Figures as JSON safe inside a <script type="application/json"> element."""
    return {key: Markup(json.dumps(fig, separators=(",", ":")).replace("</", "<\\/"))
            for key, fig in figures.items() if fig is not None}


def write_site(board: Board, ctx: ReportContext, out_dir: str | Path, *, sweeps_dir: str | Path,
               leaderboard: Path | None = None) -> list[Path]:
    """Write ``index.html``, ``<task>.html`` and ``assets/`` under ``out_dir``; return the paths written."""
    import jinja2

    out_dir = Path(out_dir)
    (out_dir / "assets").mkdir(parents=True, exist_ok=True)
    written = []
    for name, source in SHIPPED.items():
        shutil.copyfile(source, out_dir / "assets" / name)
        written.append(out_dir / "assets" / name)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ASSETS / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["md"] = inline_markdown
    palette = colors(board.cells["optimizer"])
    common = {"preset": ctx.preset, "tasks": board.tasks, "header": header_facts(board.runs, ctx),
              "leaderboard": Path("..", leaderboard.name).as_posix() if leaderboard else None}
    overview_figures = {"ratios": ratio_figure(board.summary, palette),
                        **{f"profile-{i}": fig for i, fig in enumerate(profile_figures(board.profiles, palette))}}
    pages = {"index.html": env.get_template("index.html.j2").render(
        **common, page="index", table=overview_table(board), overall_text=OVERALL_TEXT,
        figures=_json_script(overview_figures), has_profiles=bool(board.profiles))}
    for task in board.tasks:
        page = task_page(board, task, read_sweep(Path(sweeps_dir), ctx.preset, task), palette)
        page["figures"] = _json_script(page["figures"])
        pages[f"{task}.html"] = env.get_template("task.html.j2").render(**common, page=task, **page)
    for name, html in pages.items():
        (out_dir / name).write_text(html)
        written.append(out_dir / name)
    return written
