"""The SNR studies' figures (matplotlib, Agg): one function per study, drawn from its table rows.

Verdict figures show the paired mean difference of final held-out loss against a baseline with
its 95% CI as an error bar, and the task's equivalence band (±δ) shaded: a bar inside the band is
"equivalent", one wholly below 0 "better", wholly above "worse" (optbench.verdicts).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

from optbench import snr

if TYPE_CHECKING:
    from optbench.studies import Context


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _task_axes(plt, n: int, rows: int = 1, height: float = 3.2):
    fig, axes = plt.subplots(rows, max(1, n), figsize=(4.6 * max(1, n), height * rows), squeeze=False)
    return fig, axes


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _tasks(rows: Sequence[dict]) -> list[str]:
    return sorted({r["task"] for r in rows})


def _save(ctx: Context, fig, plt, name: str, title: str, dpi: int = 110) -> None:
    fig.suptitle(f"{title}; {ctx.preset} preset, seeds {','.join(map(str, ctx.seeds))}", fontsize=9)
    fig.tight_layout()
    fig.savefig(ctx.out / f"{name}.png", dpi=dpi)
    plt.close(fig)


def _verdict_points(ax, xs, rows: Sequence[dict], prefix: str, **style) -> None:
    """Mean paired difference with its 95% CI per row (rows without one are skipped), and ±δ shaded."""
    pts = [(x, r) for x, r in zip(xs, rows, strict=True) if _finite(r.get(f"{prefix}_diff"))]
    for x, r in pts:
        d, lo, hi = r[f"{prefix}_diff"], r.get(f"{prefix}_ci_low"), r.get(f"{prefix}_ci_high")
        err = [[d - lo], [hi - d]] if _finite(lo) and _finite(hi) else None
        ax.errorbar([x], [d], yerr=err, fmt=style.get("marker", "o"), color=style.get("color", "tab:blue"),
                    capsize=3, ms=4)
    margins = [r[f"{prefix}_margin"] for _, r in pts if _finite(r.get(f"{prefix}_margin"))]
    if margins and not getattr(ax, "_optbench_band", False):  # one band per axes, however many series
        m = statistics.median(margins)
        ax.axhspan(-m, m, color="grey", alpha=0.15, lw=0)
        ax.axhline(0, color="grey", lw=0.8)
        ax._optbench_band = True


def plot_diff_vs_saved(ctx: Context, rows: Sequence[dict], name: str) -> None:
    """Rule sets: held-out loss minus AdamW's (paired mean, 95% CI) against second-moment entries saved."""
    plt = _pyplot()
    tasks = _tasks(rows)
    fig, axes = _task_axes(plt, len(tasks))
    markers = {"snr": "o", "variance": "s", "relerr": "^"}
    colors = {"snr": "tab:blue", "variance": "tab:orange", "relerr": "tab:green"}
    for ax, task in zip(axes[0], tasks, strict=False):
        task_rows = [r for r in rows if r["task"] == task and _finite(r.get("v_saved"))]
        for crit in (c for c in snr.CRITERIA if any(r.get("criterion") == c for r in task_rows)):
            mine = [r for r in task_rows if r.get("criterion") == crit]
            _verdict_points(ax, [100 * r["v_saved"] for r in mine], mine, "vs_adamw", marker=markers[crit],
                            color=colors[crit])
            ax.plot([], [], markers[crit], color=colors[crit], label=crit)
        static = [r for r in task_rows if r["arm"].startswith("SlimAdam (static")]
        _verdict_points(ax, [100 * r["v_saved"] for r in static], static, "vs_adamw", marker="*", color="black")
        if static:
            ax.plot([], [], "*", color="black", label="static rules (Table 1)")
        ax.set_title(task)
        ax.set_xlabel("second-moment entries saved (%)")
        ax.set_ylabel("held-out loss - AdamW's (95% CI)")
        ax.legend(fontsize=7)
    title = {"alpha": "SNR rules at several alpha", "criterion": "criteria at several alpha"}.get(name, name)
    _save(ctx, fig, plt, name, f"{title}; grey band: the equivalence margin")


def plot_proxy(ctx: Context, rows: Sequence[dict]) -> None:
    """Per task: the full-model and quarter-width proxies' rules, loss minus AdamW's with its CI."""
    plt = _pyplot()
    tasks = _tasks(rows)
    fig, axes = _task_axes(plt, len(tasks))
    for ax, task in zip(axes[0], tasks, strict=False):
        task_rows = [r for r in rows if r["task"] == task and "rules_from" in r]
        _verdict_points(ax, list(range(len(task_rows))), task_rows, "vs_adamw")
        for i, r in enumerate(task_rows):
            if _finite(r.get("v_saved")):
                ax.annotate(f"saved {100 * r['v_saved']:.0f}%", (i, r.get("vs_adamw_diff", 0) or 0), fontsize=7,
                            textcoords="offset points", xytext=(6, 0))
        ax.set_xticks(range(len(task_rows)), [r["rules_from"] for r in task_rows], fontsize=7)
        ax.set_xlim(-0.5, len(task_rows) - 0.5)
        agree = next((r.get("agreement_with_full") for r in task_rows if r["rules_from"] != "full-model proxy"), None)
        ax.set_title(task + (f": axes agree on {100 * agree:.0f}% of tensors" if _finite(agree) else ""), fontsize=9)
        ax.set_ylabel("held-out loss - AdamW's (95% CI)")
    _save(ctx, fig, plt, "proxy", "rules from a quarter-width proxy vs the full model")


def plot_scales(ctx: Context, rows: Sequence[dict], name: str) -> None:
    """Per task, against the proxy lr scale: saved and agreement with the 0.1x rules (top), and the
    held-out loss difference to the 0.1x rules' with its CI (bottom); the eos edge marked."""
    plt = _pyplot()
    tasks = _tasks(rows)
    fig, axes = _task_axes(plt, len(tasks), rows=2)
    for col, task in enumerate(tasks):
        task_rows = sorted((r for r in rows if r["task"] == task), key=lambda r: r["lr_scale"])
        top, bottom = axes[0][col], axes[1][col]
        ok = [r for r in task_rows if _finite(r.get("v_saved"))]
        top.plot([r["lr_scale"] for r in ok], [100 * r["v_saved"] for r in ok], "o-", label="second moment saved (%)")
        agree = [r for r in ok if _finite(r.get("agreement_with_0.1"))]
        top.plot([r["lr_scale"] for r in agree], [100 * r["agreement_with_0.1"] for r in agree], "s--",
                 label="axes agree with 0.1x (%)")
        for r in task_rows:
            if r.get("proxy", "stable") != "stable":
                top.axvline(r["lr_scale"], color="tab:red", ls=":", lw=1, label="proxy diverged")
            if r.get("edge"):
                top.axvline(r["lr_scale"], color="black", ls="--", lw=1,
                            label="edge (largest stable)" if r["edge"] == "edge" else "cap (no divergence)")
        top.set_ylim(-5, 105)
        top.set_title(task)
        top.legend(fontsize=6)
        _verdict_points(bottom, [r["lr_scale"] for r in ok], ok, "vs_0.1")
        bottom.set_ylabel("held-out loss - 0.1x rules' (95% CI)", fontsize=8)
        for ax in (top, bottom):
            ax.set_xscale("log", base=2 if name == "eos" else 10)
        bottom.set_xlabel("proxy lr / tuned AdamW lr")
    title = {"lr": "SNR rules (alpha 1) at several proxy learning rates",
             "eos": "SNR rules (alpha 1) up to the proxy's edge of stability"}.get(name, name)
    _save(ctx, fig, plt, name, title)


def plot_conditioning(ctx: Context, series: Sequence[dict]) -> None:
    """Per task: the conditioning figure of V along the chosen axes against the step, median and
    interquartile range over the role's compressed tensors, one line per role."""
    plt = _pyplot()
    tasks = sorted({p["task"] for p in series})
    fig, axes = _task_axes(plt, len(tasks), height=3.6)
    for ax, task in zip(axes[0], tasks, strict=False):
        mine = [p for p in series if p["task"] == task and _finite(p["conditioning"])]
        for role in sorted({p["role"] for p in mine}):
            steps = sorted({p["step"] for p in mine if p["role"] == role})
            quart = []
            for s in steps:
                values = sorted(p["conditioning"] for p in mine if p["role"] == role and p["step"] == s)
                q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
                quart.append(q)
            line, = ax.plot(steps, [q[1] for q in quart], label=role, lw=1.2)
            ax.fill_between(steps, [q[0] for q in quart], [q[2] for q in quart], color=line.get_color(), alpha=0.2)
        ax.set_yscale("log")
        ax.set_title(task)
        ax.set_xlabel("proxy step")
        ax.set_ylabel("max/min of slice means of V")
        ax.legend(fontsize=6)
    _save(ctx, fig, plt, "stability", "conditioning of V along the chosen axes (median, IQR over tensors)")


def plot_cost(ctx: Context, rows: Sequence[dict]) -> None:
    plt = _pyplot()
    rows = [r for r in rows if "proxy_peak_upper_bytes" in r]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    tasks = [r["task"] for r in rows]
    x = range(len(tasks))
    kib = 1 / 1024
    ax.bar([i - 0.2 for i in x], [r["proxy_peak_upper_bytes"] * kib for r in rows], 0.4,
           label="proxy run peak (full Adam + SNR scratch, upper bound)")
    ax.bar([i + 0.2 for i in x], [r["state_bytes_saved"] * kib for r in rows], 0.4,
           label="optimizer state SlimAdam (SNR) saves per run")
    ax.set_xticks(list(x), tasks, fontsize=8)
    ax.set_ylabel("KiB")
    ax.legend(fontsize=7)
    _save(ctx, fig, plt, "cost", "cost of the proxy run vs the saving")


CURVE_STYLES = {"AdamW": {"color": "black", "lw": 2.2, "alpha": 0.6},
                "SlimAdam (static rules)": {"color": "tab:orange", "lw": 1.2, "ls": "--"},
                "SlimAdam (SNR rules)": {"color": "tab:green", "lw": 1.2, "ls": ":"}}


def plot_curves(ctx: Context, rows: Sequence[dict]) -> None:
    plt = _pyplot()
    tasks = _tasks(rows)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.2), squeeze=False)
    for col, task in enumerate(tasks):
        for r in (r for r in rows if r["task"] == task and "train_curve" in r):
            train, ev = json.loads(r["train_curve"]), json.loads(r["eval_curve"])
            style = CURVE_STYLES.get(r["arm"], {})
            saved = f" (v saved {100 * r['v_saved']:.0f}%)" if _finite(r.get("v_saved")) else ""
            axes[0][col].plot([s for s, _ in train], [v for _, v in train], label=f"{r['arm']}{saved}", **style)
            axes[1][col].plot([s for s, _ in ev], [v for _, v in ev], marker=".", label=r["arm"], **style)
            axes[1][col].set_ylabel(r.get("metric_name", "metric"))
        axes[0][col].set_title(task)
        axes[0][col].set_ylabel("train loss (seed mean)")
        axes[1][col].set_xlabel("step")
        axes[0][col].legend(fontsize=6)
    _save(ctx, fig, plt, "curves", "AdamW vs SlimAdam (static and SNR rules), each at its tuned lr", dpi=100)
