"""``optbench study NAME``: the SNR studies reviewers asked of SlimAdam, as tables and plots.

Studies (each writes ``<name>.md``, ``<name>.csv`` and, but for ``seeds``, ``<name>.png`` under ``--out``):

- ``alpha``: rules at several alphas from one proxy trace; second-moment memory saved vs final metric.
- ``criterion``: snr vs variance vs relerr (see optbench/snr.py for their thresholds) at matched
  memory saved.
- ``proxy``: rules derived on a narrower model (a quarter of the width, same parameter names)
  applied to the full task: agreement of chosen axes by role, and final metric.
- ``lr``: rules derived at several proxy learning rates: agreement with the lr-scale 0.1 rules,
  memory saved, final metric.
- ``cost``: the proxy run (steps, seconds, Adam state and peak bytes) beside what SlimAdam saves.
- ``curves``: loss-vs-step of AdamW, SlimAdam (static rules) and SlimAdam (SNR rules) per task.
- ``seeds``: AdamW and SlimAdam (SNR rules) at seeds 0, 1, 2 per task: the seed-to-seed spread
  that the single-seed differences of the other studies must be read against.

Every SlimAdam run uses the task's AdamW learning rate (SlimAdam is meant as a drop-in with no
lr retuning), so rule sets are compared at one lr. A rule set that appears in several studies
is trained once per process (``all`` shares them).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optbench import registry, snr

HELP = "SNR studies for SlimAdam: alpha, criterion, proxy, lr, cost, curves (or all)"
STUDIES = ("alpha", "criterion", "proxy", "lr", "cost", "curves", "seeds")
ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
LR_SCALES = (0.03, 0.1, 0.3, 1.0)
DEFAULT_TASKS = {  # the two-task studies use one vision and one language task to stay cheap
    "alpha": ("digits-mlp", "topics-gpt"),
    "criterion": ("digits-mlp", "topics-gpt"),
    "proxy": ("digits-mlp", "topics-gpt"),
    "lr": ("digits-mlp", "topics-gpt"),
    "cost": None,  # None = every registered CPU task
    "curves": None,
    "seeds": None,
}
NOISE_SEEDS = (0, 1, 2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=(*STUDIES, "all"), help="which study")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks (default: per study, see --help)")
    parser.add_argument("--preset", default="cpu", help="budget preset (cpu for the committed results, smoke to test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proxy-steps", type=int, default=None, help="proxy run steps (default: the budget's)")
    parser.add_argument("--every", type=int, default=10, help="record V at step 1 and every this many steps")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in ALPHAS), help="alpha grid")
    parser.add_argument("--lr-scales", default=",".join(f"{s:g}" for s in LR_SCALES), help="proxy lr scales")
    parser.add_argument("--criterion-alphas", default="0.015625,0.0625,0.25,1,2,4",
                        help="alpha grid of the criterion study (wide: the variance criterion needs small alpha)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine more threads oversubscribe; "
                             "the studies compare metrics and memory, not time)")
    parser.add_argument("--out", default="results/snr", help="output folder (default results/snr)")


# ---------------------------------------------------------------------------------------------
# Shared state: proxy traces and training runs, each computed once per process.


@dataclass
class Context:
    preset: str
    seed: int
    out: Path
    proxy_steps: int | None
    every: int
    alphas: tuple[float, ...]
    criterion_alphas: tuple[float, ...]
    lr_scales: tuple[float, ...]
    log: Callable[[str], None] = print
    traces: dict[tuple, snr.ProxyTrace] = field(default_factory=dict)
    runs: dict[tuple, dict] = field(default_factory=dict)

    def trace(self, task: str, lr_scale: float = 0.1, variant: str = "full") -> snr.ProxyTrace:
        key = (task, lr_scale, variant)
        if key not in self.traces:
            spec = registry.get_task(task)
            steps = self.proxy_steps or spec.budget(self.preset).steps
            model_fn = None if variant == "full" else narrow_model(task)
            self.log(f"  proxy {task} ({variant}, lr-scale {lr_scale:g}, {steps} steps)")
            self.traces[key] = snr.proxy_run(spec, self.preset, lr_scale=lr_scale, every=self.every,
                                             steps=steps, seed=self.seed, model_fn=model_fn)
        return self.traces[key]

    def train(self, task: str, optimizer: str = "slimadam", rules: Mapping[str, Any] | None = None,
              measure_memory: bool = False, seed: int | None = None) -> dict:
        """A run record; SlimAdam variants and AdamW all at the task's AdamW lr."""
        from optbench.runner import run_one

        seed = self.seed if seed is None else seed
        canon = None if rules is None else json.dumps(snr.load_rules(rules), sort_keys=True)
        key = (task, optimizer, canon, measure_memory, seed)
        if not measure_memory and (task, optimizer, canon, True, seed) in self.runs:
            return self.runs[(task, optimizer, canon, True, seed)]  # a measured run serves unmeasured requests
        if key not in self.runs:
            hparams: dict[str, Any] = {"lr": adamw_lr(task, self.preset)}
            if rules is not None:
                hparams["rules"] = snr.load_rules(rules)
            tag = "" if rules is None else f" (rules {zlib.crc32(canon.encode()):08x})"
            self.log(f"  train {task} / {optimizer}{tag}" + (f" seed {seed}" if seed != self.seed else ""))
            record = run_one(task, optimizer, hparams=hparams, seed=seed, preset=self.preset,
                             measure_memory_pass=measure_memory)
            if record["status"] == "error":
                raise RuntimeError(f"{task} / {optimizer} failed: {record['error']}")
            self.runs[key] = record
        return self.runs[key]


def adamw_lr(task: str, preset: str) -> float:
    from optbench.lrs import resolve_lr

    return resolve_lr(registry.get_task(task), registry.get_optimizer("adamw"), preset)[0]


def narrow_model(task: str) -> Callable:
    """A quarter-width model of ``task`` with the same parameter names and roles (the proxy)."""
    builders = {"digits-mlp": _narrow_digits_mlp, "topics-gpt": _narrow_topics_gpt, "digits-vit": _narrow_digits_vit}
    if task not in builders:
        raise ValueError(f"no narrow proxy model for task {task!r}; known: {', '.join(builders)}")
    return builders[task]


def _narrow_digits_mlp():
    from optbench.tasks import digits_mlp

    return digits_mlp.build_model(hidden=digits_mlp.HIDDEN // 4)


def _narrow_topics_gpt():
    from optbench.tasks import topics_gpt as t
    from optbench.tasks._text import VOCAB
    from optbench.tasks._transformer import GPT, with_info

    d = t.D_MODEL // 4
    return with_info(GPT(VOCAB, t.CONTEXT, t.N_LAYERS, d, t.N_HEADS, t.D_MLP // 4), d_model=d, n_heads=t.N_HEADS,
                     task="topics-gpt")


def _narrow_digits_vit():
    from optbench.tasks import digits_vit as t
    from optbench.tasks._transformer import ViT, with_info

    d = t.D_MODEL // 4
    return with_info(ViT(8, t.PATCH, 1, 10, t.N_LAYERS, d, t.N_HEADS, t.D_MLP // 4), d_model=d, n_heads=t.N_HEADS,
                     task="digits-vit")


def metric(record: dict) -> float:
    value = record["metrics"]["final_metric"]
    return math.nan if value is None else float(value)


def _roles(trace: snr.ProxyTrace, candidates_only: bool = True) -> dict[str, str]:
    """Role per tensor; by default only tensors that have axis options (agreement over biases, norms
    and 1-D tensors, which are never compressed, would be agreement by construction)."""
    return {p.name: p.role for p in trace.params if not candidates_only or trace.options(p)}


# ---------------------------------------------------------------------------------------------
# The studies: each returns rows (for the CSV and the markdown table) and draws its figure.


def study_alpha(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    rows = []
    for task in tasks:
        trace = ctx.trace(task)
        full = ctx.train(task, rules={})
        rows.append(_rules_row(task, "uncompressed", math.nan, trace, {}, full, full))
        for alpha in ctx.alphas:
            rules = snr.derive_rules(trace, "snr", alpha)
            rows.append(_rules_row(task, "snr", alpha, trace, rules, ctx.train(task, rules=rules), full))
    _plot_metric_vs_saved(ctx, rows, "alpha", series="criterion", label="alpha")
    return rows


def study_criterion(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    rows = []
    for task in tasks:
        trace = ctx.trace(task)
        full = ctx.train(task, rules={})
        rows.append(_rules_row(task, "uncompressed", math.nan, trace, {}, full, full))
        for crit in snr.CRITERIA:
            for alpha in ctx.criterion_alphas:
                rules = snr.derive_rules(trace, crit, alpha)
                row = _rules_row(task, crit, alpha, trace, rules, ctx.train(task, rules=rules), full)
                row["threshold"] = snr.CRITERIA[crit].threshold(alpha)
                rows.append(row)
    _plot_metric_vs_saved(ctx, rows, "criterion", series="criterion", label=None)
    return rows


def matched_criteria(rows: Sequence[dict], tolerance: float = 0.05) -> list[dict]:
    """For every snr rule set, the variance and relerr rule sets closest in second-moment saved
    (within ``tolerance``), and how their metrics and choices compare."""
    out = []
    for task in sorted({r["task"] for r in rows}):
        task_rows = [r for r in rows if r["task"] == task and r["criterion"] != "uncompressed"]
        seen = set()
        for ref in (r for r in task_rows if r["criterion"] == "snr"):
            if ref["rules_json"] in seen:
                continue
            seen.add(ref["rules_json"])
            row = {"task": task, "snr_alpha": ref["alpha"], "v_saved": ref["v_saved"], "snr_metric": ref["metric"]}
            for crit in ("variance", "relerr"):
                cands = [r for r in task_rows if r["criterion"] == crit]
                best = min(cands, key=lambda r: abs(r["v_saved"] - ref["v_saved"]), default=None)
                if best is None or abs(best["v_saved"] - ref["v_saved"]) > tolerance:
                    row.update({f"{crit}_alpha": math.nan, f"{crit}_v_saved": math.nan,
                                f"{crit}_metric": math.nan, f"{crit}_same_axes": math.nan})
                    continue
                a, b = json.loads(ref["rules_json"]), json.loads(best["rules_json"])
                same = sum(a.get(k) == b.get(k) for k in set(a) | set(b)) / max(1, len(set(a) | set(b)))
                row.update({f"{crit}_alpha": best["alpha"], f"{crit}_v_saved": best["v_saved"],
                            f"{crit}_metric": best["metric"], f"{crit}_same_axes": same})
            out.append(row)
    return out


def study_proxy(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    rows = []
    for task in tasks:
        full_trace, narrow_trace = ctx.trace(task), ctx.trace(task, variant="narrow")
        full_rules = snr.derive_rules(full_trace, "snr", 1.0)
        narrow_rules = snr.derive_rules(narrow_trace, "snr", 1.0)
        agreement = snr.rules_agreement(full_rules, narrow_rules, _roles(full_trace))
        base = ctx.train(task, rules={})
        sources = (("full-model proxy", full_rules, full_trace), ("quarter-width proxy", narrow_rules, narrow_trace))
        for source, rules, trace in sources:
            rec = ctx.train(task, rules=rules)
            saving = snr.memory_saving(full_trace.params, rules)
            rows.append({"task": task, "rules_from": source, "proxy_params": sum(p.numel for p in trace.params),
                         "v_saved": saving["v_saved_share"], "metric": metric(rec),
                         "uncompressed_metric": metric(base),
                         "agreement_with_full": 1.0 if trace is full_trace else agreement["_all"],
                         "agreement_by_role": "(reference)" if trace is full_trace else ", ".join(
                             f"{r} {v:.2f}" for r, v in sorted(agreement.items()) if r != "_all")})
    _plot_bars(ctx, rows, "proxy", group="rules_from")
    return rows


def study_lr(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    rows = []
    for task in tasks:
        ref = snr.derive_rules(ctx.trace(task, 0.1), "snr", 1.0)
        base = ctx.train(task, rules={})
        for scale in ctx.lr_scales:
            trace = ctx.trace(task, scale)
            rules = snr.derive_rules(trace, "snr", 1.0)
            agreement = snr.rules_agreement(ref, rules, _roles(trace))
            rows.append({"task": task, "lr_scale": scale, "proxy_lr": trace.lr,
                         "proxy_final_metric": trace.cost["final_eval_metric"],
                         "v_saved": snr.memory_saving(trace.params, rules)["v_saved_share"],
                         "agreement_with_0.1": agreement["_all"], "metric": metric(ctx.train(task, rules=rules)),
                         "uncompressed_metric": metric(base)})
    _plot_lr(ctx, rows)
    return rows


def study_cost(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    from optbench.memory import measure_training_memory

    rows = []
    for task in tasks:
        trace = ctx.trace(task)
        rules, source = snr_rules_for(ctx, task)
        adam = ctx.train(task, "adamw", measure_memory=True)
        slim = ctx.train(task, rules=rules, measure_memory=True)
        proxy_peak = _proxy_peak_bytes(ctx, task, measure_training_memory)
        saved = adam["memory"]["optimizer_state_bytes"] - slim["memory"]["optimizer_state_bytes"]
        rows.append({
            "task": task, "rules": source, "proxy_steps": trace.cost["steps"],
            "recorded_steps": trace.cost["recorded_steps"],
            "proxy_train_s": trace.cost["train_s"], "snr_stats_s": trace.cost["stats_s"],
            "proxy_adam_state_bytes": trace.cost["adam_state_bytes"],
            "proxy_peak_bytes": proxy_peak, "stats_scratch_bytes": trace.cost["stats_scratch_bytes"],
            # the statistics run between steps; adding their scratch to the training peak bounds the proxy's peak
            "proxy_peak_upper_bytes": (proxy_peak or 0) + trace.cost["stats_scratch_bytes"],
            "adamw_state_bytes": adam["memory"]["optimizer_state_bytes"],
            "slimadam_snr_state_bytes": slim["memory"]["optimizer_state_bytes"],
            "state_bytes_saved": saved,
            "adamw_peak_bytes": adam["memory"]["peak_bytes"], "slimadam_snr_peak_bytes": slim["memory"]["peak_bytes"],
            "adamw_train_s": adam["timing"].get("train_s"), "slimadam_snr_train_s": slim["timing"].get("train_s"),
        })
    _plot_cost(ctx, rows)
    return rows


def snr_rules_for(ctx: Context, task: str) -> tuple[dict, str]:
    """The committed ``optimizers/rules/<task>.json`` when there is one (what ``slimadam-snr`` runs),
    else rules derived from this process's lr-scale 0.1 proxy at alpha 1."""
    from optbench.optimizers.slimadam import snr_rules_path

    committed = snr_rules_path(task)
    if committed.is_file() and ctx.preset != "smoke":
        return snr.load_rules(committed), "committed"
    return snr.derive_rules(ctx.trace(task), "snr", 1.0), "derived here"


def _proxy_peak_bytes(ctx: Context, task: str, measure) -> int | None:
    """Peak bytes of two proxy steps (full Adam) under tensor-level tracking, plus the float64 scratch
    the statistics need (they run between steps, after the step's temporaries are freed)."""
    import torch

    spec = registry.get_task(task)
    inst = spec.instantiate(ctx.preset, ctx.seed, "cpu")
    opt = torch.optim.Adam(inst.model.parameters(), lr=snr.proxy_lr(spec, 0.1))
    report = measure(inst.model, opt, inst.batches, snr.proxy_step(inst, spec.budget(ctx.preset)), steps=2)
    return getattr(report, "peak_bytes", None)


def study_curves(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    """AdamW, SlimAdam with static role rules, and SlimAdam with SNR rules: the committed
    ``optimizers/rules/<task>.json`` (run as ``slimadam-snr``) when there is one, else rules
    derived here from the lr-scale 0.1 proxy."""
    rows = []
    for task in tasks:
        trace = ctx.trace(task)
        rules, source = snr_rules_for(ctx, task)
        snr_label = f"SlimAdam (SNR rules, {source})"
        snr_run = ctx.train(task, rules=rules)  # the same optimizer slimadam-snr builds from the committed file
        static = _static_rules(trace)
        runs = {"AdamW": (ctx.train(task, "adamw"), 0.0),
                "SlimAdam (static rules)": (ctx.train(task, "slimadam"),
                                            snr.memory_saving(trace.params, static)["v_saved_share"]),
                snr_label: (snr_run, snr.memory_saving(trace.params, rules)["v_saved_share"])}
        agreement = snr.rules_agreement(static, rules, _roles(trace))
        for label, (rec, saved) in runs.items():
            rows.append({"task": task, "optimizer": label, "final_train_loss": rec["metrics"]["final_train_loss"],
                         "metric": metric(rec), "metric_name": rec["metrics"]["metric_name"], "v_saved": saved,
                         "snr_axes_agree_with_static": agreement["_all"] if label == snr_label else math.nan,
                         "optimizer_state_bytes": rec["memory"]["optimizer_state_bytes"],
                         "train_curve": json.dumps(rec["curve"]["train"]),
                         "eval_curve": json.dumps(rec["curve"]["eval"])})
    _plot_curves(ctx, rows)
    return rows


def study_seeds(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    """Final metric of AdamW and of SlimAdam with the SNR rules at three seeds (rules fixed)."""
    import statistics

    rows = []
    for task in tasks:
        rules, source = snr_rules_for(ctx, task)
        for label, kwargs in (("AdamW", {"optimizer": "adamw"}), (f"SlimAdam (SNR rules, {source})",
                                                                 {"rules": rules})):
            values = [metric(ctx.train(task, seed=s, **kwargs)) for s in NOISE_SEEDS]
            rows.append({"task": task, "optimizer": label, **{f"seed_{s}": v for s, v in zip(NOISE_SEEDS, values,
                                                                                             strict=True)},
                         "mean": statistics.fmean(values), "std": statistics.stdev(values),
                         "range": max(values) - min(values)})
    return rows


def _static_rules(trace: snr.ProxyTrace) -> dict[str, list[int] | None]:
    """The role-based static rules (the paper's Table 1, as optimizers/slimadam.py applies them)."""
    from optbench.model_info import ModelInfo
    from optbench.optimizers.slimadam import static_rules

    axes = static_rules(ModelInfo(roles=_roles(trace, candidates_only=False)), {p.name: p.shape for p in trace.params})
    return {k: (None if v is None else list(v)) for k, v in axes.items()}


def _rules_row(task: str, criterion: str, alpha: float, trace: snr.ProxyTrace, rules: Mapping, rec: dict,
               base: dict) -> dict:
    saving = snr.memory_saving(trace.params, rules)
    return {"task": task, "criterion": criterion, "alpha": alpha, "v_saved": saving["v_saved_share"],
            "state_saved": saving["state_saved_share"],
            "compressed_tensors": sum(v is not None for v in rules.values()),
            "metric": metric(rec), "metric_name": rec["metrics"]["metric_name"],
            "delta_vs_uncompressed": metric(rec) - metric(base),
            "final_train_loss": rec["metrics"]["final_train_loss"],
            "rules_json": json.dumps({k: rules.get(k) for k in sorted(rules)}, sort_keys=True)}


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg).


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _task_axes(plt, n: int, height: float = 3.2):
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, height), squeeze=False)
    return fig, axes[0]


def _plot_metric_vs_saved(ctx: Context, rows: Sequence[dict], name: str, series: str, label: str | None) -> None:
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


def _plot_bars(ctx: Context, rows: Sequence[dict], name: str, group: str) -> None:
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


def _plot_lr(ctx: Context, rows: Sequence[dict]) -> None:
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


def _plot_cost(ctx: Context, rows: Sequence[dict]) -> None:
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


def _plot_curves(ctx: Context, rows: Sequence[dict]) -> None:
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


# ---------------------------------------------------------------------------------------------
# Tables and the verb.


def write_table(rows: Sequence[dict], out: Path, name: str, drop: Sequence[str] = ()) -> None:
    from tabulate import tabulate

    if not rows:
        return
    keys = [k for k in rows[0] if k not in drop]
    for r in rows[1:]:
        keys += [k for k in r if k not in keys and k not in drop]
    with (out / f"{name}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = [{k: r.get(k, "") for k in keys} for r in rows]
    (out / f"{name}.md").write_text(tabulate(table, headers="keys", tablefmt="github", floatfmt=".4g") + "\n")


def cpu_tasks() -> list[str]:
    return sorted(n for n, t in registry.tasks().items() if t.tier == "cpu")


def run(args: argparse.Namespace) -> int:
    registry.check_preset(args.preset)
    alphas = tuple(snr.check_alpha(float(a)) for a in args.alphas.split(","))
    criterion_alphas = tuple(snr.check_alpha(float(a)) for a in args.criterion_alphas.split(","))
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    scales = tuple(float(s) for s in args.lr_scales.split(","))
    if 0.1 not in scales:
        raise ValueError(f"--lr-scales must include 0.1 (the reference scale), got {args.lr_scales}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.every < 1:
        raise ValueError(f"--every must be >= 1, got {args.every}")
    ctx = Context(args.preset, args.seed, out, args.proxy_steps, args.every, alphas, criterion_alphas, scales)
    names = STUDIES if args.name == "all" else (args.name,)
    start = time.perf_counter()
    for name in names:
        tasks = args.tasks.split(",") if args.tasks else list(DEFAULT_TASKS[name] or cpu_tasks())
        available = set(registry.tasks())
        missing = [t for t in tasks if t not in available]
        if missing:
            raise ValueError(f"unknown task(s) {missing}; known: {', '.join(sorted(available))}")
        print(f"study {name}: {', '.join(tasks)}")
        rows = STUDY_FUNCS[name](ctx, tasks)
        drop = ("rules_json", "train_curve", "eval_curve")
        write_table(rows, out, name, drop=drop)
        if name == "criterion":
            write_table(matched_criteria(rows), out, "criterion_matched")
        print(f"  wrote {out / name}.md, .csv" + (", .png" if name != "seeds" else ""))
    print(f"done in {time.perf_counter() - start:.0f} s; {len(ctx.traces)} proxy runs, {len(ctx.runs)} training runs")
    return 0


STUDY_FUNCS: dict[str, Callable[[Context, Sequence[str]], list[dict]]] = {
    "alpha": study_alpha, "criterion": study_criterion, "proxy": study_proxy, "lr": study_lr,
    "cost": study_cost, "curves": study_curves, "seeds": study_seeds,
}
