"""The SNR studies' figures (matplotlib, Agg): one function per study, drawn from its table rows."""

from __future__ import annotations

import json
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


def _task_axes(plt, n: int, height: float = 3.2):
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, height), squeeze=False)
    return fig, axes[0]


def plot_metric_vs_saved(ctx: Context, rows: Sequence[dict], name: str, series: str, label: str | None) -> None:
    plt = _pyplot()
    tasks = sorted({r["task"] for r in rows})
    fig, axes = _task_axes(plt, len(tasks))
    markers = {"snr": "o", "variance": "s", "relerr": "^"}
    for ax, task in zip(axes, tasks, strict=True):
        task_rows = [r for r in rows if r["task"] == task]
        base = next(r for r in task_rows if r["criterion"] == "uncompressed")
        ax.axhline(base["metric"], color="grey", ls="--", lw=1, label="uncompressed (AdamW)")
        for crit in (c for c in snr.CRITERIA if any(r[series] == c for r in task_rows)):
            pts = sorted((100 * r["v_saved"], r["metric"], r["alpha"]) for r in task_rows if r[series] == crit)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[crit], ls="", alpha=0.8,
                    label=crit if name == "criterion" else "SNR rules")
            if label:  # one label per point: the alphas that gave the same rules
                grouped: dict[tuple[float, float], list[float]] = {}
                for x, y, a in pts:
                    grouped.setdefault((x, y), []).append(a)
                for (x, y), alist in grouped.items():
                    ax.annotate("alpha " + ", ".join(f"{a:g}" for a in alist), (x, y), textcoords="offset points",
                                xytext=(-4, 5), ha="right" if x > 50 else "left", fontsize=7)
        ax.set_title(task)
        ax.set_xlabel("second-moment entries saved (%)")
        ax.set_ylabel(f"final {base['metric_name']}")
        ax.legend(fontsize=7)
    title = {"alpha": "SNR rules at several alpha", "criterion": "criteria at alphas "
             + ", ".join(f"{a:g}" for a in ctx.criterion_alphas)}[name]
    fig.suptitle(f"{title}; {ctx.preset} preset, seed {ctx.seed}", fontsize=9)
    fig.tight_layout()
    fig.savefig(ctx.out / f"{name}.png", dpi=110)
    plt.close(fig)


def plot_bars(ctx: Context, rows: Sequence[dict], name: str, group: str) -> None:
    plt = _pyplot()
    tasks = sorted({r["task"] for r in rows})
    fig, axes = _task_axes(plt, len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        task_rows = [r for r in rows if r["task"] == task]
        labels = ["uncompressed"] + [r[group] for r in task_rows]
        values = [task_rows[0]["uncompressed_metric"]] + [r["metric"] for r in task_rows]
        ax.bar(range(len(values)), values, color=["grey", "tab:blue", "tab:orange"][: len(values)])
        for i, r in enumerate(task_rows, start=1):
            ax.annotate(f"saved {100 * r['v_saved']:.0f}%", (i, values[i]), ha="center", va="bottom", fontsize=7)
        lo, hi = min(values), max(values)
        ax.set_ylim(lo - 0.5 * (hi - lo + 1e-3), hi + 0.5 * (hi - lo + 1e-3))
        ax.set_xticks(range(len(values)), labels, fontsize=7)
        ax.set_title(f"{task}: axes agree on {100 * task_rows[-1]['agreement_with_full']:.0f}% of tensors", fontsize=9)
        ax.set_ylabel("final metric")
    fig.suptitle(f"rules from a quarter-width proxy vs the full model; {ctx.preset} preset", fontsize=9)
    fig.tight_layout()
    fig.savefig(ctx.out / f"{name}.png", dpi=110)
    plt.close(fig)


def plot_lr(ctx: Context, rows: Sequence[dict]) -> None:
    plt = _pyplot()
    tasks = sorted({r["task"] for r in rows})
    fig, axes = _task_axes(plt, len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        task_rows = sorted((r for r in rows if r["task"] == task), key=lambda r: r["lr_scale"])
        xs = [r["lr_scale"] for r in task_rows]
        ax.plot(xs, [100 * r["v_saved"] for r in task_rows], "o-", label="second moment saved (%)")
        ax.plot(xs, [100 * r["agreement_with_0.1"] for r in task_rows], "s--", label="axes agree with 0.1 (%)")
        ax.set_xscale("log")
        ax.set_ylim(-5, 105)
        ax.set_xlabel("proxy lr / task lr")
        ax.set_title(task)
        ax.legend(fontsize=7)
    fig.suptitle(f"SNR rules (alpha 1) at several proxy learning rates; {ctx.preset} preset", fontsize=9)
    fig.tight_layout()
    fig.savefig(ctx.out / "lr.png", dpi=110)
    plt.close(fig)


def plot_cost(ctx: Context, rows: Sequence[dict]) -> None:
    plt = _pyplot()
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
    ax.set_title(f"cost of the proxy run vs the saving; {ctx.preset} preset", fontsize=9)
    fig.tight_layout()
    fig.savefig(ctx.out / "cost.png", dpi=110)
    plt.close(fig)


CURVE_STYLES = {"AdamW": {"color": "black", "lw": 2.2, "alpha": 0.6},
                "SlimAdam static": {"color": "tab:orange", "lw": 1.2, "ls": "--"},
                "SlimAdam": {"color": "tab:green", "lw": 1.2, "ls": ":"}}


def plot_curves(ctx: Context, rows: Sequence[dict]) -> None:
    plt = _pyplot()
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.2), squeeze=False)
    for col, task in enumerate(tasks):
        for r in (r for r in rows if r["task"] == task):
            train, ev = json.loads(r["train_curve"]), json.loads(r["eval_curve"])
            style = CURVE_STYLES.get(r["optimizer"].split(" (")[0] + (" static" if "static" in r["optimizer"] else ""),
                                     {})
            axes[0][col].plot([s for s, _ in train], [v for _, v in train],
                              label=f"{r['optimizer']} (v saved {100 * r['v_saved']:.0f}%)", **style)
            axes[1][col].plot([s for s, _ in ev], [v for _, v in ev], marker=".", label=r["optimizer"], **style)
            axes[1][col].set_ylabel(r["metric_name"])
        axes[0][col].set_title(task)
        axes[0][col].set_ylabel("train loss")
        axes[1][col].set_xlabel("step")
        axes[0][col].legend(fontsize=6)
    fig.suptitle(f"AdamW vs SlimAdam (static and SNR rules), same lr; {ctx.preset} preset, seed {ctx.seed}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(ctx.out / "curves.png", dpi=100)
    plt.close(fig)
