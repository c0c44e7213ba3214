"""The SNR studies reviewers asked of SlimAdam, as a library: each study returns table rows.

Studies (``optbench study NAME`` writes ``<name>.md``, ``<name>.csv`` and, but for ``seeds``,
``<name>.png`` under ``--out``):

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
is trained once per :class:`Context` (``all`` shares them). Figures are drawn by
:mod:`optbench.study_plots`; the ``optbench study`` verb parses, runs and writes.
"""

from __future__ import annotations

import csv
import json
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optbench import registry, snr, study_plots

NOISE_SEEDS = (0, 1, 2)


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
    study_plots.plot_metric_vs_saved(ctx, rows, "alpha", series="criterion", label="alpha")
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
    study_plots.plot_metric_vs_saved(ctx, rows, "criterion", series="criterion", label=None)
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
    study_plots.plot_bars(ctx, rows, "proxy", group="rules_from")
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
    study_plots.plot_lr(ctx, rows)
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
    study_plots.plot_cost(ctx, rows)
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
    study_plots.plot_curves(ctx, rows)
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
# Tables


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
