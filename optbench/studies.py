"""The SNR studies reviewers asked of SlimAdam, as a library: each study declares the runs it needs
(arms) and turns their records into table rows with verdicts.

Kalra, Kirchenbauer, Barkeshli & Goldstein, "When Can You Get Away with Low Memory Adam?" (2025)
derive SlimAdam's compression rules from the SNR of Adam's second moment V in a proxy run
(optbench/snr.py). The studies (``optbench study NAME`` writes ``<name>.md`` and ``<name>.csv``,
and a figure ``<name>.png`` for all but ``seeds``, under ``--out``):

- ``alpha``: rules at several alphas from one proxy trace, against AdamW and the static rules.
- ``criterion``: snr vs variance vs relerr (optbench/snr.py gives their thresholds); also
  ``criterion_matched``: rule sets of different criteria at matched memory saved, paired.
- ``proxy``: rules from a quarter-width proxy (same parameter names) against the full-model rules.
- ``lr``: rules derived at several proxy learning rates against the lr-scale 0.1 rules.
- ``eos``: the edge of stability (Cohen et al. 2021, "Gradient Descent on Neural Networks
  Typically Occurs at the Edge of Stability"): proxy lrs doubling from 0.1 x until the proxy
  diverges (or a cap); where compressibility breaks down (saved drops, axes flip).
- ``stability``: rules from the early, middle and late thirds of one proxy trace against the
  all-steps rules, and a conditioning figure of V over training (``stability_conditioning``).
- ``cost``: the proxy run (steps, seconds, Adam state and peak bytes) beside what SlimAdam saves.
- ``curves``: loss-vs-step of AdamW, SlimAdam (static rules) and SlimAdam (SNR rules) per task.
- ``seeds``: the same three optimizers' per-seed held-out losses.

The protocol (as the board's): every arm runs at every seed of ``Context.seeds`` (at least 2;
3 by default) and each comparison is the board's verdict (``optbench.verdicts.compare``) on
paired per-seed differences of final held-out loss (``metrics.eval_loss``), with the task's
margin (``TaskSpec.margin``) as a share of the baseline's mean loss; a divergence is worse.
Baselines are AdamW and SlimAdam with the paper's static Table-1 rules (``slimadam``'s default),
and, where a study asks about a rule set, the reference rule set of that study. AdamW runs at
AdamW's tuned lr and every SlimAdam arm (any rules) at SlimAdam's (``optbench.lrs``, which falls
back to the task's starting lr where the sweep table has no entry; the tables say which).
Proxy runs are Adam at a constant lr of ``lr_scale`` x the task's tuned AdamW lr.

Runs go through the run store (``optbench.runner.plan_grid``/``execute_grid``) under
``Context.runs_dir``, one grid for every study asked for: an interrupted call resumes, and a rule
set that several studies (or several alphas) share is trained once. Proxy traces are kept per
process. Figures are drawn by :mod:`optbench.study_plots`; the ``optbench study`` verb parses,
checks, runs and writes.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from optbench import registry, snr, study_plots, verdicts

ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
CRITERION_ALPHAS = (0.015625, 0.0625, 0.25, 1.0, 2.0, 4.0)  # wide: the variance criterion needs small alpha
LR_SCALES = (0.03, 0.1, 0.3, 1.0)
REFERENCE_SCALE = 0.1  # the proxy lr scale the other studies' rules come from
EOS_FACTOR = 2.0  # the eos study doubles the proxy lr from REFERENCE_SCALE ...
EOS_CAP = 16.0  # ... while it stays at or below this multiple of the tuned AdamW lr
WINDOWS = ("early", "middle", "late")
ALL_STEPS = "all"
# V below Adam's eps^2 (eps = 1e-8) is under the update's eps in sqrt(V) + eps: a slice mean that
# small is counted as this floor in the conditioning figure, so an all-zero slice (no gradient yet)
# gives a large finite figure instead of a division by zero.
CONDITIONING_FLOOR = 1e-16
SAVED_DROP = 0.05  # eos: compressibility "breaks down" where saved falls this far below the 0.1x rules ...
FLIP_SHARE = 0.1  # ... or where this share of the candidate tensors changed axes

VERDICT_TEST = (
    "verdicts as the board's (optbench.verdicts): final held-out loss (metrics.eval_loss), paired per-seed "
    "differences d = arm - baseline, 95% t-interval for mean(d); δ = the task's margin x the baseline's mean "
    "loss; equivalent: CI inside (-δ, +δ); else better: CI below 0; else worse: CI above 0; else inconclusive; "
    "an arm diverged on a seed where the baseline finished: worse. Shown as verdict, mean d [95% CI]."
)
LR_SOURCES = {"sweep": "tuned", "task": "not tuned: the task's starting lr",
              "optimizer": "not tuned: the optimizer's default lr", "explicit": "explicit"}


# ---------------------------------------------------------------------------------------------
# What a study asks for: proxy runs, rule sets and arms (an optimizer with its rules, all seeds).


@dataclass(frozen=True)
class Proxy:
    """One proxy run: Adam at ``lr_scale`` x the task's tuned AdamW lr, on the task's model or a narrow one."""

    task: str
    lr_scale: float = REFERENCE_SCALE
    variant: str = "full"  # "full", or "narrow": a quarter-width model (narrow_model)


@dataclass(frozen=True)
class Rules:
    """Where a SlimAdam arm's rules come from.

    ``static``: the paper's Table-1 rules by layer role (``slimadam`` with no rules); ``derived``:
    from ``proxy`` with ``criterion`` at ``alpha``, averaged over the recorded steps of ``window``;
    ``committed``: ``optimizers/rules/<task>.json`` (what ``slimadam-snr`` runs) where it exists
    and the preset is not smoke, else derived from the reference proxy at alpha 1.
    """

    kind: str
    proxy: Proxy | None = None
    criterion: str = "snr"
    alpha: float = 1.0
    window: str = ALL_STEPS


@dataclass(frozen=True)
class Arm:
    """One optimizer configuration of a task, trained at every seed of the context."""

    task: str
    optimizer: str  # "adamw" or "slimadam"
    rules: Rules | None = None

    @property
    def label(self) -> str:
        if self.rules is None:
            return "AdamW"
        r = self.rules
        if r.kind == "static":
            return "SlimAdam (static rules)"
        if r.kind == "committed":
            return "SlimAdam (SNR rules)"
        proxy = "" if r.proxy.variant == "full" else f", {r.proxy.variant} proxy"
        window = "" if r.window == ALL_STEPS else f", {r.window} steps"
        return f"SlimAdam ({r.criterion} alpha {r.alpha:g}, proxy lr x{r.proxy.lr_scale:g}{proxy}{window})"


def adamw_arm(task: str) -> Arm:
    return Arm(task, "adamw")


def static_arm(task: str) -> Arm:
    return Arm(task, "slimadam", Rules("static"))


def committed_arm(task: str) -> Arm:
    return Arm(task, "slimadam", Rules("committed"))


def derived_arm(task: str, lr_scale: float = REFERENCE_SCALE, variant: str = "full", criterion: str = "snr",
                alpha: float = 1.0, window: str = ALL_STEPS) -> Arm:
    return Arm(task, "slimadam", Rules("derived", Proxy(task, _scale(lr_scale), variant), criterion, alpha, window))


def _scale(value: float) -> float:
    """Scales as keys: 0.1 x 2^k is computed, 0.8 is typed; both must name the same proxy."""
    return round(float(value), 9)


# ---------------------------------------------------------------------------------------------
# The context: traces, rules and records, each computed once per process.


@dataclass
class Context:
    preset: str
    seeds: tuple[int, ...]
    out: Path
    runs_dir: Path
    proxy_seed: int = 0
    proxy_steps: int | None = None
    every: int | None = None  # None: snr.proxy_run's default for the proxy's steps
    alphas: tuple[float, ...] = ALPHAS
    criterion_alphas: tuple[float, ...] = CRITERION_ALPHAS
    lr_scales: tuple[float, ...] = LR_SCALES
    eos_cap: float = EOS_CAP
    device: str = "cpu"
    command: str = "optbench study"
    dry_run: bool = False  # plan only: no proxy and no training runs (rule sets unknown, counts are bounds)
    progress: bool = True
    log: Callable[[str], None] = print
    traces: dict[Proxy, snr.ProxyTrace | snr.ProxyDiverged] = field(default_factory=dict)
    records: dict[tuple[Arm, int], dict] = field(default_factory=dict)
    tensors: dict[str, list[snr.ParamInfo]] = field(default_factory=dict)
    ran: int = 0
    reused: int = 0
    failed: list[str] = field(default_factory=list)
    errored: int = 0

    # -- learning rates and proxies ------------------------------------------------------------

    def lr(self, task: str, optimizer: str) -> tuple[float, str]:
        """The lr an optimizer trains ``task`` at, and its source (optbench.lrs: 'sweep' = tuned)."""
        from optbench.lrs import resolve_lr

        return resolve_lr(registry.get_task(task), registry.get_optimizer(optimizer), self.preset)

    def proxy_lr(self, proxy: Proxy) -> float:
        return proxy.lr_scale * self.lr(proxy.task, "adamw")[0]

    def trace(self, proxy: Proxy) -> snr.ProxyTrace | None:
        """The proxy's trace, or None when it diverged (``diverged`` says where)."""
        if self.dry_run:
            raise RuntimeError("a dry run trains no proxy")
        if proxy not in self.traces:
            spec = registry.get_task(proxy.task)
            steps = self.proxy_steps or spec.budget(self.preset).steps
            lr = self.proxy_lr(proxy)
            model_fn = None if proxy.variant == "full" else narrow_model(proxy.task)
            self.log(f"  proxy {proxy.task} ({proxy.variant}, lr x{proxy.lr_scale:g} = {lr:.3g}, {steps} steps)")
            try:
                self.traces[proxy] = snr.proxy_run(spec, self.preset, lr=lr, every=self.every, steps=steps,
                                                   seed=self.proxy_seed, device=self.device, model_fn=model_fn)
            except snr.ProxyDiverged as exc:
                self.log(f"    diverged at step {exc.step}")
                self.traces[proxy] = exc
        found = self.traces[proxy]
        return None if isinstance(found, snr.ProxyDiverged) else found

    def diverged(self, proxy: Proxy) -> snr.ProxyDiverged | None:
        self.trace(proxy)
        found = self.traces[proxy]
        return found if isinstance(found, snr.ProxyDiverged) else None

    def params(self, task: str) -> list[snr.ParamInfo]:
        """The task's trainable tensors (name, shape, role), from its model; nothing trains."""
        from optbench.model_info import get_model_info

        if task not in self.tensors:
            model = registry.get_task(task).instantiate(self.preset, self.proxy_seed, "cpu").model
            info = get_model_info(model)
            self.tensors[task] = [snr.ParamInfo(n, tuple(p.shape), info.role(n)) for n, p in model.named_parameters()
                                  if p.requires_grad]
        return self.tensors[task]

    def roles(self, task: str, candidates_only: bool = True) -> dict[str, str]:
        """Role per tensor; by default only tensors with axis options (norms, biases and 1-D tensors are
        never compressed, so agreement over them would be agreement by construction)."""
        return {p.name: p.role for p in self.params(task) if not candidates_only or snr.axis_options(p.shape, p.role)}

    # -- rules ----------------------------------------------------------------------------------

    def rules(self, arm: Arm) -> dict[str, list[int] | None] | None:
        """The arm's rules by parameter name; None for AdamW, for the static rules, and where the arm
        cannot run (``unavailable`` says why)."""
        r = arm.rules
        if r is None or r.kind == "static" or self.unavailable(arm):
            return None
        if r.kind == "committed":
            return committed_rules(self, arm.task)[0]
        trace = self.trace(r.proxy)
        return snr.derive_rules(window_trace(trace, r.window), r.criterion, r.alpha)

    def rules_or_static(self, arm: Arm) -> dict[str, list[int] | None] | None:
        """As ``rules``, with the static rules written out by name (for memory saved and agreement)."""
        if arm.rules is not None and arm.rules.kind == "static":
            return static_rules(self.params(arm.task))
        return self.rules(arm)

    def unavailable(self, arm: Arm) -> str | None:
        """Why an arm cannot run (its proxy diverged, its window has no recorded steps), or None."""
        r = arm.rules
        if r is None or r.kind != "derived" or self.dry_run:
            return None
        trace = self.trace(r.proxy)
        if trace is None:
            return f"proxy diverged at step {self.traces[r.proxy].step}"
        if not window_trace(trace, r.window).rows:
            return f"no recorded steps in the {r.window} window"
        return None

    def proxies(self, arm: Arm) -> list[Proxy]:
        """The proxy runs an arm's rules need."""
        r = arm.rules
        if r is None or r.kind == "static":
            return []
        if r.kind == "committed":
            return [] if committed_rules_path(self, arm.task) else [Proxy(arm.task)]
        return [r.proxy]

    # -- runs -----------------------------------------------------------------------------------

    def cells(self, arm: Arm) -> list:
        from optbench.runner import Cell

        hparams: dict[str, Any] = {"lr": self.lr(arm.task, arm.optimizer)[0]}
        rules = self.rules(arm)
        if rules is not None:
            hparams["rules"] = rules
        return [Cell(arm.task, arm.optimizer, seed, hparams) for seed in self.seeds]

    def run(self, arms: Sequence[Arm]) -> None:
        """Train every seed of every arm that can run, through the run store (reused when stored)."""
        from optbench.runner import execute_grid, plan_grid

        runnable = [a for a in dict.fromkeys(arms) if not self.unavailable(a)]
        cells, owners = [], []
        for arm in runnable:
            for cell in self.cells(arm):
                cells.append(cell)
                owners.append((arm, cell.seed))
        if not cells:
            return
        plan = plan_grid(cells, preset=self.preset, runs_dir=self.runs_dir, device=self.device, log=self.log)
        distinct = len({d.key.digest() for d in plan.decisions})
        stored = len({d.key.digest() for d in plan.decisions if d.action == "reuse"})
        self.log(f"  {len(cells)} arm-seed cells, {distinct} distinct runs: {stored} stored in {self.runs_dir}, "
                 f"{distinct - stored} to train")
        outcome = execute_grid(plan, progress=self.progress, measure_memory_pass=False)
        for owner, record in zip(owners, outcome.by_cell, strict=True):
            if record is not None:
                self.records[owner] = record
        self.ran += outcome.ran
        self.reused += outcome.reused
        self.failed += outcome.failed + outcome.reused_failed
        self.errored += len(outcome.errored)

    def same_runs(self, a: Arm, b: Arm) -> bool:
        """Whether two arms trained the very same runs (their rule sets came out identical)."""
        ra, rb = self.arm_records(a), self.arm_records(b)
        return bool(ra) and ra.keys() == rb.keys() and all(
            ra[s].get("run_key") is not None and ra[s].get("run_key") == rb[s].get("run_key") for s in ra)

    def arm_records(self, arm: Arm) -> dict[int, dict]:
        return {s: self.records[(arm, s)] for s in self.seeds if (arm, s) in self.records}

    def per_seed(self, arm: Arm) -> dict[int, tuple[str, float | None]]:
        """seed -> (status, final held-out loss): what the verdict compares."""
        return {s: (r["status"], r["metrics"]["eval_loss"]) for s, r in self.arm_records(arm).items()}

    def compare(self, arm: Arm, baseline: Arm) -> verdicts.Comparison:
        margin = registry.get_task(arm.task).margin
        return verdicts.compare(arm.task, arm.label, self.per_seed(arm), self.per_seed(baseline), margin)


def committed_rules_path(ctx: Context, task: str) -> Path | None:
    """``optimizers/rules/<task>.json`` when the studies use it (it exists; the preset is not smoke)."""
    from optbench.optimizers.slimadam import snr_rules_path

    path = snr_rules_path(task)
    return path if path.is_file() and ctx.preset != "smoke" else None


def committed_rules(ctx: Context, task: str) -> tuple[dict, str]:
    """The committed rules (what ``slimadam-snr`` runs), else the reference proxy's at alpha 1; and which."""
    path = committed_rules_path(ctx, task)
    if path is not None:
        return snr.load_rules(path), "committed"
    return snr.derive_rules(ctx.trace(Proxy(task)), "snr", 1.0), "derived here (proxy lr x0.1, alpha 1)"


def static_rules(params: Sequence[snr.ParamInfo]) -> dict[str, list[int] | None]:
    """The role-based static rules (the paper's Table 1, as optimizers/slimadam.py applies them)."""
    from optbench.model_info import ModelInfo
    from optbench.optimizers.slimadam import static_rules as table1

    axes = table1(ModelInfo(roles={p.name: p.role for p in params}), {p.name: p.shape for p in params})
    return {p.name: (None if axes.get(p.name) is None else list(axes[p.name])) for p in params}


def narrow_model(task: str) -> Callable:
    """A quarter-width model of ``task`` with the same parameter names and roles (the proxy)."""
    builders = {"digits-mlp": _narrow_digits_mlp, "topics-gpt": _narrow_topics_gpt, "digits-vit": _narrow_digits_vit}
    if task not in builders:
        raise ValueError(f"no narrow proxy model for task {task!r}; known: {', '.join(builders)}")
    return builders[task]


NARROW_TASKS = ("digits-mlp", "digits-vit", "topics-gpt")


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


# ---------------------------------------------------------------------------------------------
# Pure pieces: windows of a trace, axis changes, conditioning, the eos scales.


def window_steps(steps: Iterable[int]) -> dict[str, list[int]]:
    """The recorded steps split into contiguous thirds (``early``, ``middle``, ``late``; sizes differ by
    at most one) and ``all``."""
    steps = sorted(set(steps))
    n = len(steps)
    cuts = (0, round(n / 3), round(2 * n / 3), n)
    out = {w: steps[cuts[i]:cuts[i + 1]] for i, w in enumerate(WINDOWS)}
    out[ALL_STEPS] = steps
    return out


def window_trace(trace: snr.ProxyTrace, window: str) -> snr.ProxyTrace:
    """The trace with only the rows of one window's recorded steps (``all``: the trace itself)."""
    if window == ALL_STEPS:
        return trace
    keep = set(window_steps(r["step"] for r in trace.rows)[window])
    return replace(trace, rows=[r for r in trace.rows if r["step"] in keep])


def window_rules(trace: snr.ProxyTrace, criterion: str = "snr", alpha: float = 1.0) -> dict[str, dict]:
    """Rules derived from each window of the trace and from all its steps."""
    return {w: snr.derive_rules(window_trace(trace, w), criterion, alpha) for w in (*WINDOWS, ALL_STEPS)}


def changed_axes(a: Mapping[str, Any], b: Mapping[str, Any], roles: Mapping[str, str]) -> Counter:
    """Per role, how many of the tensors in ``roles`` the two rule sets give different axes."""
    changed: Counter = Counter()
    for name, role in roles.items():
        if _axes(a.get(name)) != _axes(b.get(name)):
            changed[role] += 1
    return changed


def _axes(axes: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if axes is None else tuple(sorted(int(x) for x in axes))


def conditioning(row: Mapping[str, Any], floor: float = CONDITIONING_FLOOR) -> float:
    """max / min of the slice means mean_K V of one trace row (``snr.moment_stats``): how far apart the
    values SlimAdam keeps for one tensor are. The minimum is floored at ``floor`` (see CONDITIONING_FLOOR);
    NaN for a row recorded without the extremes (a trace read from a file)."""
    high, low = row.get("slice_mean_max"), row.get("slice_mean_min")
    if high is None or low is None:
        return math.nan
    return float(high) / max(float(low), floor)


def conditioning_series(trace: snr.ProxyTrace, rules: Mapping[str, Any]) -> list[dict]:
    """Per tensor the rules compress and recorded step: the conditioning figure along the chosen axes."""
    chosen = {p.name: (p.role, snr.option_name(p.shape, rules[p.name])) for p in trace.params
              if rules.get(p.name) is not None}
    return [{"parameter": r["parameter"], "role": chosen[r["parameter"]][0], "step": r["step"],
             "conditioning": conditioning(r)}
            for r in trace.rows if r["parameter"] in chosen and r["option"] == chosen[r["parameter"]][1]]


def eos_scales(cap: float = EOS_CAP) -> list[float]:
    """REFERENCE_SCALE doubling (EOS_FACTOR) while at or below ``cap``: 0.1, 0.2, ..., 12.8 for a cap of 16."""
    scales, k = [], 0
    while REFERENCE_SCALE * EOS_FACTOR**k <= cap * (1 + 1e-9):
        scales.append(_scale(REFERENCE_SCALE * EOS_FACTOR**k))
        k += 1
    return scales


def probe_edge(ctx: Context, task: str) -> tuple[list[float], float | None]:
    """The proxy lr scales probed upward until the first diverging one: (stable scales, that scale or None).

    The largest stable scale is the edge. A dry run assumes every scale up to the cap is stable.
    """
    stable = []
    for scale in eos_scales(ctx.eos_cap):
        if not ctx.dry_run and ctx.trace(Proxy(task, scale)) is None:
            return stable, scale
        stable.append(scale)
    return stable, None


# ---------------------------------------------------------------------------------------------
# Row pieces shared by the studies.


def arm_columns(ctx: Context, arm: Arm) -> dict[str, Any]:
    """lr and its source, seeds finished, mean (and sd) final held-out loss and mean final metric."""
    lr, source = ctx.lr(arm.task, arm.optimizer)
    records = ctx.arm_records(arm)
    ok = [r for r in records.values() if r["status"] == "ok" and r["metrics"]["eval_loss"] is not None]
    losses = [r["metrics"]["eval_loss"] for r in ok]
    metrics = [r["metrics"]["final_metric"] for r in ok if r["metrics"]["final_metric"] is not None]
    return {"lr": lr, "lr_source": LR_SOURCES.get(source, source),
            "seeds_ok": f"{len(ok)}/{len(ctx.seeds)}",
            "diverged": sum(r["status"] == "diverged" for r in records.values()),
            "eval_loss": statistics.fmean(losses) if losses else math.nan,
            "eval_loss_sd": statistics.stdev(losses) if len(losses) > 1 else math.nan,
            "metric": statistics.fmean(metrics) if metrics else math.nan,
            "metric_name": registry.get_task(arm.task).metric.name}


def verdict_columns(ctx: Context, arm: Arm, baseline: Arm | None, name: str) -> dict[str, Any]:
    """``vs_<name>_*``: the verdict of ``arm`` against ``baseline``, its mean difference and 95% CI, δ and
    the paired seeds; ``(baseline)`` on the baseline's own row, ``n/a`` where there is no baseline."""
    p = f"vs_{name}"
    if baseline is None or arm == baseline:
        return {f"{p}_verdict": "n/a" if baseline is None else "(baseline)"}
    c = ctx.compare(arm, baseline)
    same = ctx.same_runs(arm, baseline)
    return {f"{p}_verdict": c.verdict, f"{p}_diff": c.diff, f"{p}_ci_low": c.ci_low, f"{p}_ci_high": c.ci_high,
            f"{p}_margin": c.margin, f"{p}_n": c.n, f"{p}_reason": "same rules: the same runs" if same else c.reason}


def saved_share(ctx: Context, arm: Arm) -> float:
    rules = ctx.rules_or_static(arm)
    return 0.0 if rules is None else snr.memory_saving(ctx.params(arm.task), rules)["v_saved_share"]


def rules_row(ctx: Context, arm: Arm, baselines: Mapping[str, Arm | None], **extra: Any) -> dict[str, Any]:
    """One arm's row: what it is, its memory, its losses and a verdict against each baseline."""
    reason = ctx.unavailable(arm)
    row: dict[str, Any] = {"task": arm.task, "arm": arm.label, **extra}
    if reason:
        return {**row, "note": reason}
    rules = ctx.rules_or_static(arm)
    if rules is not None:
        row["v_saved"] = snr.memory_saving(ctx.params(arm.task), rules)["v_saved_share"]
        row["compressed_tensors"] = sum(v is not None for v in rules.values())
    elif arm.rules is None:
        row["v_saved"], row["compressed_tensors"] = 0.0, 0
    row.update(arm_columns(ctx, arm))
    for name, base in baselines.items():
        row.update(verdict_columns(ctx, arm, base, name))
    if rules is not None:
        row["_rules_json"] = json.dumps({k: rules.get(k) for k in sorted(rules)}, sort_keys=True)
    row["_arm"] = arm
    return row


def _baselines(task: str) -> dict[str, Arm]:
    return {"adamw": adamw_arm(task), "static": static_arm(task)}


BASELINE_TEXT = {
    "adamw": "`vs_adamw`: against AdamW at its tuned lr",
    "static": "`vs_static`: against SlimAdam with the paper's static Table-1 rules (`slimadam`) at its tuned lr",
}


# ---------------------------------------------------------------------------------------------
# The studies. Each has arms(ctx, task) -> the arms it trains, and rows(ctx, tasks) -> its table
# (drawing its figure); ``Study`` holds them with the table's title and what its columns compare.


def alpha_arms(ctx: Context, task: str) -> list[Arm]:
    return [*_baselines(task).values(), *(derived_arm(task, alpha=a) for a in ctx.alphas)]


def study_alpha(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    rows = []
    for task in tasks:
        base = _baselines(task)
        rows += [rules_row(ctx, arm, base, criterion="", alpha=math.nan) for arm in base.values()]
        rows += [rules_row(ctx, derived_arm(task, alpha=a), base, criterion="snr", alpha=a) for a in ctx.alphas]
    study_plots.plot_diff_vs_saved(ctx, rows, "alpha")
    return rows


def criterion_arms(ctx: Context, task: str) -> list[Arm]:
    return [*_baselines(task).values(),
            *(derived_arm(task, criterion=c, alpha=a) for c in snr.CRITERIA for a in ctx.criterion_alphas)]


def study_criterion(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    rows = []
    for task in tasks:
        base = _baselines(task)
        rows += [rules_row(ctx, arm, base, criterion="", alpha=math.nan) for arm in base.values()]
        for crit in snr.CRITERIA:
            for a in ctx.criterion_alphas:
                rows.append(rules_row(ctx, derived_arm(task, criterion=crit, alpha=a), base, criterion=crit, alpha=a,
                                      threshold=snr.CRITERIA[crit].threshold(a)))
    study_plots.plot_diff_vs_saved(ctx, rows, "criterion")
    return rows


def matched_criteria(rows: Sequence[dict], tolerance: float = 0.05) -> list[dict]:
    """For every distinct snr rule set, the variance and relerr rule sets closest in second-moment saved
    (within ``tolerance``) and the share of tensors on which they choose the same axes; the rows'
    arms ride along under ``_snr_arm`` and ``_<criterion>_arm`` for the verdicts."""
    out = []
    derived = [r for r in rows if r.get("criterion") in snr.CRITERIA and "_rules_json" in r]
    for task in sorted({r["task"] for r in derived}):
        task_rows = [r for r in derived if r["task"] == task]
        seen = set()
        for ref in (r for r in task_rows if r["criterion"] == "snr"):
            if ref["_rules_json"] in seen:
                continue
            seen.add(ref["_rules_json"])
            row = {"task": task, "snr_alpha": ref["alpha"], "v_saved": ref["v_saved"], "_snr_arm": ref.get("_arm")}
            for crit in ("variance", "relerr"):
                cands = [r for r in task_rows if r["criterion"] == crit]
                best = min(cands, key=lambda r: abs(r["v_saved"] - ref["v_saved"]), default=None)
                if best is None or abs(best["v_saved"] - ref["v_saved"]) > tolerance:
                    row.update({f"{crit}_alpha": math.nan, f"{crit}_v_saved": math.nan, f"{crit}_same_axes": math.nan})
                    continue
                a, b = json.loads(ref["_rules_json"]), json.loads(best["_rules_json"])
                same = sum(a.get(k) == b.get(k) for k in set(a) | set(b)) / max(1, len(set(a) | set(b)))
                row.update({f"{crit}_alpha": best["alpha"], f"{crit}_v_saved": best["v_saved"],
                            f"{crit}_same_axes": same, f"_{crit}_arm": best.get("_arm")})
            out.append(row)
    return out


def matched_verdicts(ctx: Context, matched: Sequence[dict]) -> list[dict]:
    """``matched_criteria`` with, per matched criterion, its rule set's verdict against the snr rule set."""
    out = []
    for m in matched:
        row = dict(m)
        for crit in ("variance", "relerr"):
            arm = m.get(f"_{crit}_arm")
            row.update(verdict_columns(ctx, arm, m["_snr_arm"], f"snr_for_{crit}") if arm is not None else
                       {f"vs_snr_for_{crit}_verdict": "no match"})
        out.append(row)
    return out


def proxy_arms(ctx: Context, task: str) -> list[Arm]:
    return [*_baselines(task).values(), derived_arm(task), derived_arm(task, variant="narrow")]


def study_proxy(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    rows = []
    for task in tasks:
        full, narrow = derived_arm(task), derived_arm(task, variant="narrow")
        base = {**_baselines(task), "full": full}
        roles = ctx.roles(task)
        for source, arm in (("full-model proxy", full), ("quarter-width proxy", narrow)):
            trace = ctx.trace(arm.rules.proxy)
            extra: dict[str, Any] = {"rules_from": source}
            if trace is not None and not ctx.unavailable(full):
                agreement = snr.rules_agreement(ctx.rules(full), ctx.rules(arm), roles)
                by_role = ", ".join(f"{r} {v:.2f}" for r, v in sorted(agreement.items()) if r != "_all")
                extra.update({"proxy_params": sum(p.numel for p in trace.params),
                              "agreement_with_full": agreement["_all"], "agreement_by_role": by_role})
            rows.append(rules_row(ctx, arm, base, **extra))
    study_plots.plot_proxy(ctx, rows)
    return rows


def lr_arms(ctx: Context, task: str) -> list[Arm]:
    return [adamw_arm(task), *(derived_arm(task, lr_scale=s) for s in ctx.lr_scales)]


def study_lr(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    rows = []
    for task in tasks:
        rows += scale_rows(ctx, task, [_scale(s) for s in ctx.lr_scales])
    study_plots.plot_scales(ctx, rows, "lr")
    return rows


def eos_arms(ctx: Context, task: str) -> list[Arm]:
    stable, _ = probe_edge(ctx, task)
    return [adamw_arm(task), *(derived_arm(task, lr_scale=s) for s in stable)]


def study_eos(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    rows = []
    for task in tasks:
        stable, diverging = probe_edge(ctx, task)
        scales = stable + ([diverging] if diverging else [])
        rows += scale_rows(ctx, task, scales, max(stable, default=None), "edge" if diverging else "cap, stable")
    study_plots.plot_scales(ctx, rows, "eos")
    return rows


def scale_rows(ctx: Context, task: str, scales: Sequence[float], edge: float | None = None,
               edge_mark: str = "edge") -> list[dict]:
    """Rules (snr, alpha 1) at each proxy lr scale against the 0.1x rules: saved, agreement, axes flipped
    (vs 0.1x and vs the previous scale), and the verdicts; the row of scale ``edge`` (the largest stable
    one) gets ``edge_mark`` in an ``edge`` column ("edge", or "cap, stable" when nothing diverged)."""
    ref = derived_arm(task)
    roles = ctx.roles(task)
    ref_rules = None if ctx.unavailable(ref) else ctx.rules(ref)
    ref_saved = saved_share(ctx, ref) if ref_rules is not None else math.nan
    rows, previous = [], None
    for scale in sorted(scales):
        arm = derived_arm(task, lr_scale=scale)
        proxy = arm.rules.proxy
        trace, diverged = ctx.trace(proxy), ctx.diverged(proxy)
        extra: dict[str, Any] = {"lr_scale": scale, "proxy_lr": ctx.proxy_lr(proxy),
                                 "proxy": f"diverged at step {diverged.step}" if diverged else "stable"}
        if edge is not None:
            extra["edge"] = edge_mark if scale == edge else ""
        if trace is not None:
            rules = ctx.rules(arm)
            saved = snr.memory_saving(ctx.params(task), rules)["v_saved_share"]
            extra.update({"proxy_final_metric": trace.cost["final_eval_metric"],
                          "v_saved_drop_vs_0.1": ref_saved - saved})
            if ref_rules is not None:
                flipped = sum(changed_axes(ref_rules, rules, roles).values())
                extra.update({"agreement_with_0.1": 1 - flipped / max(1, len(roles)), "flipped_vs_0.1": flipped})
            if previous is not None:
                extra["flipped_vs_previous"] = sum(changed_axes(previous, rules, roles).values())
            previous = rules
        rows.append(rules_row(ctx, arm, {"0.1": ref, "adamw": adamw_arm(task)}, **extra))
    return rows


def breakdown(rows: Sequence[dict], candidates: int) -> dict[str, Any]:
    """Where compressibility breaks down on one task's scale rows: the first stable scale whose rules save
    SAVED_DROP less than the 0.1x rules, and the first whose axes differ from them on FLIP_SHARE of the
    candidate tensors (None: not within the scales probed)."""
    stable = [r for r in rows if r.get("proxy") == "stable"]
    drop = next((r["lr_scale"] for r in stable if r.get("v_saved_drop_vs_0.1", 0) > SAVED_DROP), None)
    flip = next((r["lr_scale"] for r in stable if r.get("flipped_vs_0.1", 0) > FLIP_SHARE * candidates), None)
    edge = next((r["lr_scale"] for r in rows if r.get("edge")), None)
    diverged = next((r["lr_scale"] for r in rows if r.get("proxy", "stable") != "stable"), None)
    return {"edge": edge, "diverged_at": diverged, "saved_drops_at": drop, "axes_flip_at": flip}


def stability_arms(ctx: Context, task: str) -> list[Arm]:
    return [adamw_arm(task), *(derived_arm(task, window=w) for w in (*WINDOWS, ALL_STEPS))]


def study_stability(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    """Rules from the early, middle and late thirds of the reference proxy's recorded steps against the
    all-steps rules: axes changed (and their roles), memory, verdicts."""
    rows = []
    for task in tasks:
        trace = ctx.trace(Proxy(task))
        if trace is None:
            rows.append({"task": task, "note": f"reference proxy diverged at step {ctx.diverged(Proxy(task)).step}"})
            continue
        steps = window_steps(r["step"] for r in trace.rows)
        all_rules = snr.derive_rules(trace, "snr", 1.0)
        roles = ctx.roles(task)
        ref = derived_arm(task)
        previous = None
        for window in (*WINDOWS, ALL_STEPS):
            arm = derived_arm(task, window=window)
            extra: dict[str, Any] = {"window": window, "steps": _span(steps[window]), "candidates": len(roles)}
            if steps[window]:
                rules = ctx.rules(arm)
                vs_all, vs_prev = changed_axes(all_rules, rules, roles), None
                extra.update({"changed_vs_all": sum(vs_all.values()), "roles_changed_vs_all": _roles_text(vs_all)})
                if previous is not None and window != ALL_STEPS:
                    vs_prev = changed_axes(previous, rules, roles)
                    extra.update({"changed_vs_previous": sum(vs_prev.values()),
                                  "roles_changed_vs_previous": _roles_text(vs_prev)})
                previous = rules
            rows.append(rules_row(ctx, arm, {"all_steps": ref, "adamw": adamw_arm(task)}, **extra))
    return rows


def conditioning_rows(ctx: Context, tasks: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """Per task and role, the median conditioning figure (``conditioning``) over the role's compressed
    tensors and the recorded steps of each window, along the axes the all-steps rules chose; and the
    per-(tensor, step) series the figure draws."""
    table, series = [], []
    for task in tasks:
        trace = ctx.trace(Proxy(task))
        if trace is None:
            continue
        points = [{"task": task, **p} for p in conditioning_series(trace, snr.derive_rules(trace, "snr", 1.0))]
        series += points
        steps = window_steps(r["step"] for r in trace.rows)
        for role in sorted({p["role"] for p in points}):
            mine = [p for p in points if p["role"] == role]
            row: dict[str, Any] = {"task": task, "role": role, "tensors": len({p["parameter"] for p in mine})}
            for window in WINDOWS:
                values = [p["conditioning"] for p in mine if p["step"] in set(steps[window])
                          and math.isfinite(p["conditioning"])]
                row[f"median_{window}"] = statistics.median(values) if values else math.nan
            row["late_over_early"] = row["median_late"] / row["median_early"] if row["median_early"] else math.nan
            table.append(row)
    return table, series


def _span(steps: Sequence[int]) -> str:
    return f"{steps[0]}-{steps[-1]} ({len(steps)})" if steps else "none"


def _roles_text(changed: Counter) -> str:
    return ", ".join(f"{role} {n}" for role, n in sorted(changed.items())) or "-"


def cost_arms(ctx: Context, task: str) -> list[Arm]:
    return [adamw_arm(task), committed_arm(task)]


def study_cost(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    """The proxy run's cost (the reference proxy) beside what the SNR rules save per training run; peaks
    from a memory pass of two steps (optbench.runner.measure_memory) at the proxy seed."""
    rows = []
    for task in tasks:
        trace = ctx.trace(Proxy(task))
        adam, slim = adamw_arm(task), committed_arm(task)
        adam_rec, slim_rec = ctx.arm_records(adam), ctx.arm_records(slim)
        if trace is None or not adam_rec or not slim_rec:
            rows.append({"task": task, "note": "reference proxy diverged" if trace is None else "runs missing"})
            continue
        adam_state = next(iter(adam_rec.values()))["memory"]["optimizer_state_bytes"]
        slim_state = next(iter(slim_rec.values()))["memory"]["optimizer_state_bytes"]
        proxy_peak = _proxy_peak_bytes(ctx, task, trace.lr)
        rows.append({
            "task": task, "rules": committed_rules(ctx, task)[1], "proxy_steps": trace.cost["steps"],
            "recorded_steps": trace.cost["recorded_steps"], "proxy_lr": trace.lr,
            "proxy_train_s": trace.cost["train_s"], "snr_stats_s": trace.cost["stats_s"],
            "proxy_adam_state_bytes": trace.cost["adam_state_bytes"],
            "proxy_peak_bytes": proxy_peak, "stats_scratch_bytes": trace.cost["stats_scratch_bytes"],
            # the statistics run between steps; adding their scratch to the training peak bounds the proxy's peak
            "proxy_peak_upper_bytes": (proxy_peak or 0) + trace.cost["stats_scratch_bytes"],
            "adamw_state_bytes": adam_state, "slimadam_snr_state_bytes": slim_state,
            "state_bytes_saved": adam_state - slim_state,
            "adamw_peak_bytes": _peak_bytes(ctx, adam), "slimadam_snr_peak_bytes": _peak_bytes(ctx, slim),
            "adamw_train_s": _mean(r["timing"].get("train_s") for r in adam_rec.values()),
            "slimadam_snr_train_s": _mean(r["timing"].get("train_s") for r in slim_rec.values()),
            **verdict_columns(ctx, slim, adam, "adamw"),
        })
    study_plots.plot_cost(ctx, rows)
    return rows


def _mean(values: Iterable[float | None]) -> float:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else math.nan


def _peak_bytes(ctx: Context, arm: Arm) -> int | None:
    """Peak bytes of two training steps of the arm under tensor-level tracking (its memory pass)."""
    import torch

    from optbench.runner import measure_memory

    cell = ctx.cells(arm)[0]
    hparams = {k: v for k, v in cell.hparams.items() if k != "lr"}
    measured = measure_memory(registry.get_task(arm.task), registry.get_optimizer(arm.optimizer), ctx.preset,
                              ctx.proxy_seed, torch.device(ctx.device), cell.hparams["lr"], hparams, {})
    return measured.get("peak_bytes")


def _proxy_peak_bytes(ctx: Context, task: str, lr: float) -> int | None:
    """Peak bytes of two proxy steps (full Adam) under tensor-level tracking (the statistics' float64
    scratch comes on top: they run between steps, after the step's temporaries are freed)."""
    import torch

    from optbench.memory import measure_training_memory

    spec = registry.get_task(task)
    inst = spec.instantiate(ctx.preset, ctx.proxy_seed, ctx.device)
    opt = torch.optim.Adam(inst.model.parameters(), lr=lr)
    report = measure_training_memory(inst.model, opt, inst.batches, snr.proxy_step(inst, spec.budget(ctx.preset)),
                                     steps=2)
    return getattr(report, "peak_bytes", None)


def trio_arms(ctx: Context, task: str) -> list[Arm]:
    """AdamW, SlimAdam with the static rules and with the SNR rules (committed, else derived here)."""
    return [adamw_arm(task), static_arm(task), committed_arm(task)]


def study_curves(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    """Seed-mean loss curves of AdamW and of SlimAdam with the static and with the SNR rules."""
    rows = []
    for task in tasks:
        static, snr_arm = static_arm(task), committed_arm(task)
        roles = ctx.roles(task)
        agree = snr.rules_agreement(ctx.rules_or_static(static), ctx.rules(snr_arm), roles)["_all"]
        for arm in trio_arms(ctx, task):
            records = ctx.arm_records(arm)
            rows.append(rules_row(ctx, arm, _baselines(task),
                                  rules=committed_rules(ctx, task)[1] if arm == snr_arm else "",
                                  snr_axes_agree_with_static=agree if arm == snr_arm else math.nan,
                                  final_train_loss=_mean(r["metrics"]["final_train_loss"] for r in records.values()),
                                  optimizer_state_bytes=_mean(r["memory"]["optimizer_state_bytes"]
                                                              for r in records.values()),
                                  train_curve=json.dumps(mean_curve(r["curve"]["train"] for r in records.values())),
                                  eval_curve=json.dumps(mean_curve(r["curve"]["eval"] for r in records.values()))))
    study_plots.plot_curves(ctx, rows)
    return rows


def mean_curve(curves: Iterable[Sequence[Sequence[float]]]) -> list[list[float]]:
    """[[step, mean over the curves that reached that step], ...]."""
    by_step: dict[float, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            by_step.setdefault(step, []).append(value)
    return [[step, statistics.fmean(values)] for step, values in sorted(by_step.items())]


def study_seeds(ctx: Context, tasks: Sequence[str]) -> list[dict]:
    """Per seed, the final held-out loss of AdamW and of SlimAdam with the static and the SNR rules."""
    rows = []
    for task in tasks:
        for arm in trio_arms(ctx, task):
            per_seed = ctx.per_seed(arm)
            values = [v for s, (st, v) in sorted(per_seed.items()) if st == "ok" and v is not None]
            rows.append({"task": task, "arm": arm.label,
                         **{f"seed_{s}": (v if st == "ok" else st) for s, (st, v) in sorted(per_seed.items())},
                         "sd": statistics.stdev(values) if len(values) > 1 else math.nan,
                         "range": max(values) - min(values) if values else math.nan,
                         **arm_columns(ctx, arm), **verdict_columns(ctx, arm, adamw_arm(task), "adamw")})
    return rows


@dataclass(frozen=True)
class Study:
    """A study: the arms it trains per task, its table rows (drawing its figure), and its table's words."""

    name: str
    title: str
    arms: Callable[[Context, str], list[Arm]]
    rows: Callable[[Context, Sequence[str]], list[dict]]
    compares: str  # what the verdict columns compare, for the table's header
    plot: bool = True
    extra_proxies: Callable[[Context, str], list[Proxy]] | None = None


STUDIES: dict[str, Study] = {s.name: s for s in (
    Study("alpha", "SNR rules at several alphas", alpha_arms, study_alpha,
          f"{BASELINE_TEXT['adamw']}; {BASELINE_TEXT['static']}."),
    Study("criterion", "Criteria (snr, variance, relerr) at several alphas", criterion_arms, study_criterion,
          f"{BASELINE_TEXT['adamw']}; {BASELINE_TEXT['static']}."),
    Study("proxy", "Rules from a quarter-width proxy vs the full model's", proxy_arms, study_proxy,
          f"`vs_full`: the quarter-width proxy's rules against the full-model proxy's; {BASELINE_TEXT['adamw']}; "
          f"{BASELINE_TEXT['static']}."),
    Study("lr", "Rules derived at several proxy learning rates", lr_arms, study_lr,
          f"`vs_0.1`: against the rules of the proxy at 0.1 x the tuned AdamW lr; {BASELINE_TEXT['adamw']}."),
    Study("eos", "Rules up to the edge of stability of the proxy", eos_arms, study_eos,
          f"`vs_0.1`: against the rules of the proxy at 0.1 x the tuned AdamW lr; {BASELINE_TEXT['adamw']}."),
    Study("stability", "Rules from windows of training (early, middle, late thirds of the recorded steps)",
          stability_arms, study_stability,
          f"`vs_all_steps`: against the rules from all recorded steps; {BASELINE_TEXT['adamw']}."),
    Study("cost", "Cost of the proxy run vs what the SNR rules save", cost_arms, study_cost,
          "`vs_adamw`: SlimAdam with the SNR rules against AdamW at its tuned lr.",
          extra_proxies=lambda ctx, task: [Proxy(task)]),
    Study("curves", "Loss curves (seed means)", trio_arms, study_curves,
          f"{BASELINE_TEXT['adamw']}; {BASELINE_TEXT['static']}."),
    Study("seeds", "Per-seed final held-out loss", trio_arms, study_seeds, f"{BASELINE_TEXT['adamw']}.", plot=False),
)}


# ---------------------------------------------------------------------------------------------
# Running a set of studies: every arm of every study first (one grid), then the tables.


def planned_arms(ctx: Context, plan: Mapping[str, Sequence[str]]) -> dict[str, list[Arm]]:
    """Per study, its distinct arms over its tasks (in a dry run: no proxy runs, eos assumes no divergence)."""
    return {name: list(dict.fromkeys(a for t in tasks for a in STUDIES[name].arms(ctx, t)))
            for name, tasks in plan.items()}


def planned_proxies(ctx: Context, plan: Mapping[str, Sequence[str]], arms: Mapping[str, list[Arm]]) -> list[Proxy]:
    found: dict[Proxy, None] = {}
    for name, tasks in plan.items():
        for arm in arms[name]:
            found.update(dict.fromkeys(ctx.proxies(arm)))
        if STUDIES[name].extra_proxies:
            for task in tasks:
                found.update(dict.fromkeys(STUDIES[name].extra_proxies(ctx, task)))
    return list(found)


def run_studies(ctx: Context, plan: Mapping[str, Sequence[str]]) -> dict[str, list[dict]]:
    """Train what the studies in ``plan`` (study -> tasks) need, then write each one's tables and figure."""
    arms = planned_arms(ctx, plan)
    every_arm = list(dict.fromkeys(a for name in plan for a in arms[name]))
    ctx.log(f"training {len(every_arm)} arms x {len(ctx.seeds)} seeds")
    ctx.run(every_arm)
    out = {}
    for name, tasks in plan.items():
        study = STUDIES[name]
        ctx.log(f"study {name}: {', '.join(tasks)}")
        rows = study.rows(ctx, tasks)
        write_table(ctx, rows, name, study.title, study.compares)
        written = [f"{name}.md", f"{name}.csv"] + ([f"{name}.png"] if study.plot else [])
        if name == "criterion":
            write_table(ctx, matched_verdicts(ctx, matched_criteria(rows)), "criterion_matched",
                        "Criteria at matched second-moment saved (within 5 points)",
                        "`vs_snr_for_<criterion>`: that criterion's rule set against the snr rule set it matches.")
            written.append("criterion_matched.md")
        if name == "stability":
            table, series = conditioning_rows(ctx, tasks)
            write_table(ctx, table, "stability_conditioning",
                        "Conditioning of V over training: max/min of the slice means along the chosen axes",
                        f"no verdicts: a property of the proxy trace. Slice means below {CONDITIONING_FLOOR:g} "
                        "(Adam's eps^2) are counted as that floor; medians over the role's compressed tensors "
                        "and the window's recorded steps.")
            study_plots.plot_conditioning(ctx, series)
            written.append("stability_conditioning.md")
        ctx.log(f"  wrote {', '.join(written)} in {ctx.out}")
        out[name] = rows
    return out


def describe_plan(ctx: Context, plan: Mapping[str, Sequence[str]]) -> list[str]:
    """The lines a dry run prints: per study its tasks, arms and runs, then the totals (upper bounds)."""
    from optbench.runner import cell_key
    from optbench.store import RunStore

    arms = planned_arms(ctx, plan)
    lines = [f"dry run: preset {ctx.preset}, seeds {','.join(map(str, ctx.seeds))}, runs in {ctx.runs_dir}; "
             "nothing trains. Counts are upper bounds: rule sets that turn out identical share runs, and the eos "
             "study stops at the first proxy lr that diverges."]
    for name, tasks in plan.items():
        lines.append(f"  {name:<10} {', '.join(tasks)}: {len(arms[name])} arms, "
                     f"{len(arms[name]) * len(ctx.seeds)} arm-seed runs")
    every_arm = list(dict.fromkeys(a for name in plan for a in arms[name]))
    proxies = planned_proxies(ctx, plan, arms)
    fixed = [a for a in every_arm if not ctx.proxies(a)]  # their rules (hence their run keys) are known now
    store = RunStore(ctx.runs_dir)
    device = "cpu" if ctx.device == "cpu" else "cuda"
    keys = {k.digest(): k for k in (cell_key(c, ctx.preset, device) for a in fixed for c in ctx.cells(a))}
    stored = sum(store.path_of(k).exists() for k in keys.values())
    by_task = Counter(a.task for a in every_arm)
    lines += [f"  total: {len(every_arm)} distinct arms x {len(ctx.seeds)} seeds = at most "
              f"{len(every_arm) * len(ctx.seeds)} training runs "
              f"({', '.join(f'{t} {n * len(ctx.seeds)}' for t, n in sorted(by_task.items()))}); "
              f"{stored} of the {len(keys)} runs whose rules are known now are stored already",
              f"  proxy runs: at most {len(proxies)} "
              f"({', '.join(f'{t} {n}' for t, n in sorted(Counter(p.task for p in proxies).items()))})"]
    return lines


# ---------------------------------------------------------------------------------------------
# Tables


def header(ctx: Context, title: str, compares: str) -> list[str]:
    return [f"Made by `{ctx.command}`: preset {ctx.preset}, seeds {', '.join(map(str, ctx.seeds))} per arm "
            f"(proxy runs: seed {ctx.proxy_seed}, Adam at a constant lr of lr_scale x the tuned AdamW lr). "
            f"lr: AdamW at its tuned lr, every SlimAdam arm at SlimAdam's (`lr_source` says where one is not tuned).",
            f"{compares} {VERDICT_TEST}"]


def _md_cell(row: Mapping[str, Any], prefix: str) -> str:
    verdict = row[f"{prefix}_verdict"]
    diff, low, high = (row.get(f"{prefix}_{k}", math.nan) for k in ("diff", "ci_low", "ci_high"))
    text = verdict
    if isinstance(diff, float) and math.isfinite(diff):
        text += f" {diff:+.3g}"
    if isinstance(low, float) and math.isfinite(low):
        text += f" [{low:+.3g}, {high:+.3g}]"
    reason = row.get(f"{prefix}_reason")
    return text + (f" ({reason})" if reason else "")


VERDICT_PARTS = ("diff", "ci_low", "ci_high", "margin", "n", "reason")
MD_DROP = ("train_curve", "eval_curve", "metric_name")


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and not k.startswith("_")]
    return keys


def markdown_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Rows for the markdown table: each verdict's columns in one (``verdict mean d [CI]``), curves left out."""
    keys = _columns(rows)
    prefixes = [k[: -len("_verdict")] for k in keys if k.endswith("_verdict")]
    hidden = {f"{p}_{part}" for p in prefixes for part in VERDICT_PARTS} | set(MD_DROP)
    out = []
    for r in rows:
        row = {}
        for k in keys:
            if k in hidden:
                continue
            if k.endswith("_verdict"):
                row[k[: -len("_verdict")]] = _md_cell(r, k[: -len("_verdict")]) if k in r else ""
            else:
                row[k] = r.get(k, "")
        out.append(row)
    return out


def write_table(ctx: Context, rows: Sequence[dict], name: str, title: str, compares: str) -> None:
    """``<name>.csv`` (a ``#`` header line, then the columns) and ``<name>.md`` (title, header, table)."""
    from tabulate import tabulate

    lines = header(ctx, title, compares)
    keys = _columns(rows)
    with (ctx.out / f"{name}.csv").open("w", newline="") as fh:
        fh.write("# " + " ".join(lines) + "\n")
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    body = tabulate(markdown_rows(rows), headers="keys", tablefmt="github", floatfmt=".4g") if rows else "(no rows)"
    notes = ""
    if name == "eos":
        notes = "\n" + "\n".join(_eos_notes(ctx, rows)) + "\n"
    (ctx.out / f"{name}.md").write_text(f"# {title}\n\n" + "\n\n".join(lines) + "\n\n" + body + "\n" + notes)


def _eos_notes(ctx: Context, rows: Sequence[dict]) -> list[str]:
    notes = [f"Where compressibility breaks down (first stable scale whose rules save more than {SAVED_DROP:.0%} "
             f"less than the 0.1x rules, or differ from them on more than {FLIP_SHARE:.0%} of the candidate "
             f"tensors; scales probed up to {ctx.eos_cap:g} x the tuned AdamW lr):", ""]
    for task in sorted({r["task"] for r in rows}):
        b = breakdown([r for r in rows if r["task"] == task], len(ctx.roles(task)))
        edge = (f"edge (largest stable scale) {_show(b['edge'])}, the proxy diverged at {_show(b['diverged_at'])}"
                if b["diverged_at"] else f"no divergence up to {_show(b['edge'])} (the cap): the edge lies beyond")
        notes.append(f"- {task}: {edge}; saved drops at {_show(b['saved_drops_at'])}; "
                     f"axes flip at {_show(b['axes_flip_at'])}")
    return notes


def _show(scale: float | None) -> str:
    return "none within the probed scales" if scale is None else f"x{scale:g}"


def cpu_tasks() -> list[str]:
    return sorted(n for n, t in registry.tasks().items() if t.tier == "cpu")
