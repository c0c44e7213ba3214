"""SlimAdam's signal-to-noise analysis of Adam's second moment, and the rules it yields.

Kalra, Kirchenbauer, Barkeshli & Goldstein, "When Can You Get Away with Low Memory Adam?"
(2025): train a proxy with Adam, look at ``V`` (the un-bias-corrected ``exp_avg_sq``) and ask,
per tensor, along which axes ``K`` it can be replaced by its mean. The signal-to-noise ratio

    SNR_K(V) = mean over the other axes of  (mean_K V)^2 / var_K V

(population variance; non-finite ratios dropped) is large when ``V`` hardly varies along ``K``.
Rule: average the criterion over the recorded steps, keep the axis options with SNR > alpha
(strict), pick the highest; none left -> leave the tensor uncompressed (``null``).

Two simpler criteria for the same decision are offered so the SNR can be judged against them.
Each is thresholded so that, for a tensor whose slices all have the same SNR ``s`` and the
same mean, it takes the same decision as ``SNR > alpha``:

- ``variance``: the plain variance of ``V`` along ``K`` (averaged over the other axes), made
  scale-free by the square of the tensor's mean of ``V``; compress when it is below ``1/alpha``.
  Unlike the SNR it divides by one tensor-wide mean, not by each slice's own mean.
- ``relerr``: the relative L2 error of replacing ``V`` by its mean along ``K``,
  ``||V - mean_K V|| / ||V||``; compress when it is below ``1/sqrt(1 + alpha)``
  (for equal slices ``relerr^2 = 1 / (1 + s)``).

Options: every non-empty subset of a tensor's dims, as the reference code does (3 for a matrix,
7 for a 3-D tensor, 15 for a 4-D conv weight); the three a paper names are ``fan_in`` (every dim
but 0), ``fan_out`` (dim 0) and ``both`` (all dims), the others ``axes_<dims>``.

The math is a set of small pure functions (``snr_along``, ``variance_along``, ``relerr_along``,
``axis_options``, ``choose_axes``); ``proxy_run`` is the Adam training that records them, and
``optbench.snr_trace`` reads a recorded trace back (ours, or the reference code's logs).
Rules files are read and written by ``optbench.rules``.
"""

from __future__ import annotations

import csv
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optbench.loop import TrainingStep
from optbench.model_info import get_model_info
from optbench.rules import compressed_numel, dump_rules, read_rules, write_rules  # noqa: F401 (dump_rules: re-exported)
from optbench.spec import Budget, TaskInstance, TaskSpec
from optbench.state import optimizer_state_bytes

Axes = tuple[int, ...]
OPTION_NAMES = ("fan_in", "fan_out", "both")
NEVER_COMPRESSED_ROLES = ("norm", "bias")
TRACE_COLUMNS = ("step", "parameter", "role", "shape", "option", "axes", "snr", "mean", "mean_sq", "variance",
                 "relerr")


def default_every(steps: int) -> int:
    """The trace cadence when none is given: every 10 steps, or every tenth of a shorter run, so that a
    short proxy (digits-cnn's 20 steps) still gives the rules about ten points to average over."""
    return max(1, min(10, steps // 10))


# ---------------------------------------------------------------------------------------------
# The math: pure functions of a tensor and a tuple of axes.


def _check_axes(v: torch.Tensor, axes: Sequence[int]) -> Axes:
    axes = tuple(int(a) for a in axes)
    if not axes or len(set(axes)) != len(axes) or any(not 0 <= a < v.dim() for a in axes):
        raise ValueError(f"axes {axes} are not distinct dims of a {v.dim()}-d tensor; accepted: a non-empty "
                         f"subset of {tuple(range(v.dim()))}")
    return axes


def _finite_mean(ratios: torch.Tensor) -> float:
    """Mean of the finite entries. NaN (0/0: V is zero on the whole slice) and +inf (zero variance)
    are dropped as in the reference code; if nothing finite is left but some slice had zero
    variance with a non-zero mean, the answer is +inf (V is exactly constant there), else NaN."""
    finite = torch.isfinite(ratios)
    if finite.any():
        return float(ratios[finite].mean())
    return math.inf if bool(torch.isposinf(ratios).any()) else math.nan


def snr_along(v: torch.Tensor, axes: Sequence[int]) -> float:
    """SNR_K(V): mean over the other axes of (mean_K V)^2 / var_K V (population variance)."""
    axes = _check_axes(v, axes)
    v = v.detach().double()
    mean = v.mean(dim=axes)
    var = v.var(dim=axes, correction=0)
    return _finite_mean(mean.square() / var)


def variance_along(v: torch.Tensor, axes: Sequence[int]) -> float:
    """Plain variance of V along K (population), averaged over the other axes."""
    axes = _check_axes(v, axes)
    return float(v.detach().double().var(dim=axes, correction=0).mean())


def relerr_along(v: torch.Tensor, axes: Sequence[int]) -> float:
    """Relative L2 error of replacing V by its mean along K: ||V - mean_K V|| / ||V||."""
    axes = _check_axes(v, axes)
    v = v.detach().double()
    norm = v.norm()
    if norm == 0:
        return math.nan
    return float((v - v.mean(dim=axes, keepdim=True)).norm() / norm)


def moment_stats(v: torch.Tensor, axes: Sequence[int]) -> dict[str, float]:
    """Everything the trace records for one (tensor, axes): snr, mean, mean_sq, variance, relerr,
    slice_mean_min, slice_mean_max.

    ``mean`` is the tensor's mean of V (the mean over the other axes of mean_K V), ``mean_sq`` the
    mean over the other axes of (mean_K V)^2 and ``variance`` the mean over the other axes of var_K V.
    ``slice_mean_min`` and ``slice_mean_max`` are the extremes of the slice means mean_K V: the
    values SlimAdam keeps when it compresses along K, whose spread is a conditioning figure of V
    (optbench.studies, the stability study). They are not written to the trace CSV.
    """
    axes = _check_axes(v, axes)
    v = v.detach().double()
    mean_k = v.mean(dim=axes, keepdim=True)
    var_k = (v - mean_k).square().mean(dim=axes, keepdim=True)
    norm = v.norm()
    return {
        "snr": _finite_mean(mean_k.square() / var_k),
        "mean": float(mean_k.mean()),
        "mean_sq": float(mean_k.square().mean()),
        "variance": float(var_k.mean()),
        "relerr": float((v - mean_k).norm() / norm) if norm > 0 else math.nan,
        "slice_mean_min": float(mean_k.min()),
        "slice_mean_max": float(mean_k.max()),
    }


def axis_options(shape: Sequence[int], role: str) -> dict[str, Axes]:
    """The compression axes tried for a tensor: every non-empty subset of its dims, by name.

    ``fan_in``, ``fan_out`` and ``both`` come first (for an (out, in) weight they are (1,), (0,)
    and (0, 1), the only three; for a conv weight (out, in, kh, kw) fan-in is (1, 2, 3)), then
    the other subsets, smaller first (``axes_1``, ``axes_2_3``, ...): 15 options for a 4-D conv.
    Norm weights, biases and 1-D tensors are never compressed (no options). An option that
    averages over a single element saves nothing and is left out.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or role in NEVER_COMPRESSED_ROLES:
        return {}
    dims = range(len(shape))
    named = (tuple(range(1, len(shape))), (0,), tuple(dims))
    others = (c for r in range(1, len(shape) + 1) for c in itertools.combinations(dims, r) if c not in named)
    subsets = [*named, *others]
    return {option_name(shape, axes): axes for axes in subsets if math.prod(shape[a] for a in axes) > 1}


# ---------------------------------------------------------------------------------------------
# Criteria and the decision.


@dataclass(frozen=True)
class Criterion:
    """A score per (tensor, axes, step) and a threshold derived from alpha; see the module doc."""

    name: str
    higher_is_better: bool
    score: Callable[[Mapping[str, float]], float]  # from one trace row's stats
    threshold: Callable[[float], float]  # alpha -> threshold on the score
    rule: str  # how the threshold reads, for tables

    def passes(self, value: float, alpha: float) -> bool:
        if math.isnan(value):
            return False
        t = self.threshold(alpha)
        return value > t if self.higher_is_better else value < t


def _normalized_variance(row: Mapping[str, float]) -> float:
    mean = row["mean"]
    return row["variance"] / mean**2 if mean != 0 else math.nan


CRITERIA: dict[str, Criterion] = {
    "snr": Criterion("snr", True, lambda r: r["snr"], lambda a: a, "SNR > alpha"),
    "variance": Criterion("variance", False, _normalized_variance, lambda a: 1.0 / a,
                          "var_K(V) / mean(V)^2 < 1/alpha"),
    "relerr": Criterion("relerr", False, lambda r: r["relerr"], lambda a: 1.0 / math.sqrt(1.0 + a),
                        "||V - mean_K V|| / ||V|| < 1/sqrt(1+alpha)"),
}


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"unknown criterion {name!r}; known: {', '.join(CRITERIA)}") from None


def check_alpha(alpha: float) -> float:
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    return float(alpha)


def choose_axes(scores: Mapping[str, float], options: Mapping[str, Axes], criterion: str | Criterion = "snr",
                alpha: float = 1.0) -> Axes | None:
    """The option whose step-averaged score passes the threshold and is best; ``None`` if none passes.

    ``scores`` maps an option name to its score averaged over the recorded steps; ``options`` maps
    the same names to axes. Ties go to the option listed first in ``options``.
    """
    crit = get_criterion(criterion) if isinstance(criterion, str) else criterion
    check_alpha(alpha)
    best: tuple[float, Axes] | None = None
    for name, axes in options.items():
        value = scores.get(name, math.nan)
        if not crit.passes(value, alpha):
            continue
        key = value if crit.higher_is_better else -value
        if best is None or key > best[0]:
            best = (key, axes)
    return None if best is None else best[1]


# ---------------------------------------------------------------------------------------------
# Traces, rules and memory.


@dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: tuple[int, ...]
    role: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class ProxyTrace:
    """What a proxy run recorded: one row per (step, parameter, axis option), plus its cost."""

    task: str | None
    preset: str | None
    lr: float | None
    steps: int
    every: int | None
    seed: int | None
    params: list[ParamInfo]
    rows: list[dict[str, Any]] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)
    # A trace read from a file (optbench.snr_trace) instead of recorded by a proxy run here:
    # {"path", "format", "statistics", "recorded_steps"}; the proxy's fields above are then None.
    source: dict[str, Any] | None = None

    def options(self, param: ParamInfo) -> dict[str, Axes]:
        return axis_options(param.shape, param.role)


def average_scores(rows: Sequence[Mapping[str, Any]], criterion: str | Criterion) -> dict[tuple[str, str], float]:
    """(parameter, option) -> the criterion's score averaged over recorded steps (NaN steps dropped)."""
    crit = get_criterion(criterion) if isinstance(criterion, str) else criterion
    acc: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        acc.setdefault((row["parameter"], row["option"]), []).append(crit.score(row))
    out = {}
    for key, values in acc.items():
        kept = [x for x in values if not math.isnan(x)]
        out[key] = sum(kept) / len(kept) if kept else math.nan
    return out


def derive_rules(trace: ProxyTrace, criterion: str = "snr", alpha: float = 1.0) -> dict[str, list[int] | None]:
    """Rules by exact parameter name: the chosen axes as a list, or ``None`` (uncompressed)."""
    scores = average_scores(trace.rows, criterion)
    rules: dict[str, list[int] | None] = {}
    for p in trace.params:
        opts = trace.options(p)
        chosen = choose_axes({o: scores.get((p.name, o), math.nan) for o in opts}, opts, criterion, alpha)
        rules[p.name] = None if chosen is None else list(chosen)
    return rules


def option_name(shape: Sequence[int], axes: Sequence[int] | None) -> str:
    """'fan_in', 'fan_out', 'both', 'axes_<dims>' (another subset) or 'none' for axes of a tensor of this shape."""
    if not axes:
        return "none"
    n = len(shape)
    named = {tuple(range(1, n)): "fan_in", (0,): "fan_out", tuple(range(n)): "both"}
    axes = tuple(sorted(axes))
    return named.get(axes, "axes_" + "_".join(map(str, axes)))


def memory_saving(params: Sequence[ParamInfo], rules: Mapping[str, Sequence[int] | None]) -> dict[str, float]:
    """Second-moment entries kept and saved, and the share of total optimizer state saved.

    Total optimizer state here is Adam's first plus second moment (2 N entries); SlimAdam keeps
    the first moment in full, so the total share saved is at most one half.
    """
    total = sum(p.numel for p in params)
    kept = sum(compressed_numel(p.shape, rules.get(p.name)) for p in params)
    saved = total - kept
    return {
        "v_entries_full": total,
        "v_entries_kept": kept,
        "v_saved_share": saved / total if total else 0.0,
        "state_saved_share": saved / (2 * total) if total else 0.0,
    }


def role_summary(trace: ProxyTrace, rules: Mapping[str, Sequence[int] | None],
                 criterion: str = "snr") -> list[dict[str, Any]]:
    """Per layer role: how many tensors chose each option, the modal choice and its share,
    and the role's mean step-averaged score per option."""
    scores = average_scores(trace.rows, criterion)
    by_role: dict[str, list[ParamInfo]] = {}
    for p in trace.params:
        by_role.setdefault(p.role, []).append(p)
    out = []
    for role, params in sorted(by_role.items()):
        choices = Counter(option_name(p.shape, rules.get(p.name)) for p in params)
        modal, count = choices.most_common(1)[0]
        row: dict[str, Any] = {"role": role, "tensors": len(params),
                               "choices": ", ".join(f"{k}:{v}" for k, v in sorted(choices.items())),
                               "modal": modal, "consistency": count / len(params)}
        for opt in OPTION_NAMES:
            vals = [scores[(p.name, opt)] for p in params if (p.name, opt) in scores
                    and math.isfinite(scores[(p.name, opt)])]
            row[f"{criterion}_{opt}"] = sum(vals) / len(vals) if vals else math.nan
        out.append(row)
    return out


def rules_agreement(a: Mapping[str, Any], b: Mapping[str, Any], roles: Mapping[str, str]) -> dict[str, float]:
    """Share of tensors (per role, and overall under key '_all') for which two rule sets pick the same axes."""
    per_role: dict[str, list[bool]] = {}
    for name, role in roles.items():
        if name.startswith("_"):
            continue
        same = _norm_axes(a.get(name)) == _norm_axes(b.get(name))
        per_role.setdefault(role, []).append(same)
        per_role.setdefault("_all", []).append(same)
    return {role: sum(v) / len(v) for role, v in per_role.items()}


def _norm_axes(axes: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if axes is None else tuple(sorted(int(a) for a in axes))


# ---------------------------------------------------------------------------------------------
# The proxy run.


class ProxyDiverged(RuntimeError):
    """A proxy run whose training loss went non-finite: at ``step``, with learning rate ``lr``."""

    def __init__(self, step: int, loss: float, lr: float) -> None:
        super().__init__(f"proxy run diverged at step {step} (loss {loss}) with lr {lr:g}; lower --lr-scale")
        self.step, self.loss, self.lr = step, loss, lr


def proxy_lr(task: TaskSpec, lr_scale: float) -> float:
    """lr_scale x the task's starting lr for Adam (``optbench.lrs.starting_lr``: its AdamW lr)."""
    from optbench.lrs import starting_lr
    from optbench.registry import get_optimizer

    if not lr_scale > 0:
        raise ValueError(f"lr_scale must be > 0, got {lr_scale}")
    lr, source = starting_lr(task, get_optimizer("adam"))
    if source != "task":
        raise ValueError(f"task {task.name!r} declares no 'adamw' learning rate in default_lrs "
                         f"(it has: {', '.join(task.default_lrs) or 'none'}); pass lr explicitly")
    return lr_scale * lr


def record_stats(optimizer: torch.optim.Optimizer, params: Sequence[tuple[ParamInfo, nn.Parameter]],
                 step: int) -> list[dict[str, Any]]:
    """Trace rows for every tensor and axis option, from Adam's un-bias-corrected ``exp_avg_sq``."""
    rows = []
    for info, p in params:
        state = optimizer.state.get(p, {})
        v = state.get("exp_avg_sq")
        if v is None:  # no gradient reached this tensor yet
            continue
        for opt, axes in axis_options(info.shape, info.role).items():
            stats = moment_stats(v, axes)
            rows.append({"step": step, "parameter": info.name, "role": info.role,
                         "shape": "x".join(map(str, info.shape)), "option": opt, "axes": " ".join(map(str, axes)),
                         **stats})
    return rows


def recorded_steps(steps: int, every: int) -> list[int]:
    """Step 1, then every ``every`` steps, and always the last step."""
    if every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every}")
    out = sorted({1, steps, *range(every, steps + 1, every)})
    return [s for s in out if 1 <= s <= steps]


def proxy_run(task: TaskSpec, preset: str, *, lr_scale: float = 0.1, lr: float | None = None, every: int | None = None,
              steps: int | None = None, seed: int = 0, device: str = "cpu",
              model_fn: Callable[[], nn.Module] | None = None,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> ProxyTrace:
    """Train ``task`` with Adam at ``lr`` (default ``lr_scale`` x the task's Adam lr) and record the
    second-moment statistics at step 1 and every ``every`` steps (default: ``default_every`` of the steps).

    ``model_fn`` replaces the task's model by another one carrying model metadata (a narrower or
    shallower proxy); the task's data, loss and budget are kept. Each step is ``proxy_step``: the
    task's training step (``optbench.loop``) at a constant lr.
    """
    budget = task.budget(preset)
    steps = budget.steps if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    every = default_every(steps) if every is None else every
    lr = proxy_lr(task, lr_scale) if lr is None else float(lr)
    inst = task.instantiate(preset, seed, device)
    model = inst.model
    if model_fn is not None:
        torch.manual_seed(seed)
        model = model_fn().to(device)
    info = get_model_info(model)
    named = [(ParamInfo(n, tuple(p.shape), info.role(n)), p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.Adam([p for _, p in named], lr=lr, betas=betas, eps=eps)
    trace = ProxyTrace(task=task.name, preset=preset, lr=lr, steps=steps, every=every, seed=seed,
                       params=[i for i, _ in named])
    record_at = set(recorded_steps(steps, every))
    train_s = stats_s = 0.0
    train_step = proxy_step(inst, budget)
    model.train()
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        value = float(train_step(model, optimizer, next(inst.batches), step))
        train_s += time.perf_counter() - t0
        if not math.isfinite(value):
            raise ProxyDiverged(step, value, lr)
        if step % budget.log_every == 0 or step == 1:
            trace.losses.append((step, value))
        if step in record_at:
            t0 = time.perf_counter()
            trace.rows.extend(record_stats(optimizer, named, step))
            stats_s += time.perf_counter() - t0
    n = sum(p.numel for p in trace.params)
    trace.cost = {
        "steps": steps,
        "recorded_steps": len(record_at),
        "train_s": train_s,
        "stats_s": stats_s,
        "param_entries": n,
        "adam_state_bytes": optimizer_state_bytes(optimizer),
        # moment_stats works in float64 on one tensor at a time: about 4 copies of the largest V.
        "stats_scratch_bytes": 4 * 8 * max((p.numel for p in trace.params), default=0),
        "final_eval_metric": float(inst.evaluate(model).metric),
    }
    return trace


def proxy_step(instance: TaskInstance, budget: Budget) -> TrainingStep:
    """The proxy's training step: the task's loss, autocast and clipping, at a constant lr.

    No lr schedule: the rules files in ``optimizers/rules/`` were derived at a constant proxy lr.
    """
    return TrainingStep.for_task(instance, budget, schedule=False)


# ---------------------------------------------------------------------------------------------
# Outputs.


def write_trace_csv(trace: ProxyTrace, path: str | Path) -> Path:
    """One row per (step, parameter, axis option) with the recorded statistics."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRACE_COLUMNS)
        writer.writeheader()
        for row in trace.rows:
            # repr: the shortest text that reads back as the same float, so rules re-derived from the file
            # (optbench snr --from-trace) are the rules derived here
            writer.writerow({k: (repr(row[k]) if isinstance(row[k], float) else row[k]) for k in TRACE_COLUMNS})
    return path


def read_trace_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a trace CSV, numbers parsed back (for re-deriving rules without a new run)."""
    rows = []
    with Path(path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            row = dict(row)
            row["step"] = int(row["step"])
            for key in ("snr", "mean", "mean_sq", "variance", "relerr"):
                row[key] = float(row[key])
            rows.append(row)
    return rows


def rules_document(trace: ProxyTrace, rules: Mapping[str, list[int] | None], *, criterion: str, alpha: float,
                   command: str) -> dict[str, Any]:
    """The rules JSON: exact parameter names -> axes | null, then metadata under '_' keys."""
    saving = memory_saving(trace.params, rules)
    doc: dict[str, Any] = dict(rules)
    doc.update({"_command": command, "_task": trace.task})
    if trace.preset is not None:  # the proxy's budget, or the preset whose model a trace was checked against
        doc.update({"_preset": trace.preset})
    doc.update({"_criterion": criterion, "_alpha": alpha, "_threshold": get_criterion(criterion).rule})
    if trace.source is None:
        doc.update({"_proxy_lr": trace.lr, "_proxy_steps": trace.steps, "_every": trace.every, "_seed": trace.seed})
    else:
        doc.update({"_trace": trace.source["path"], "_trace_format": trace.source["format"],
                    "_recorded_steps": trace.source["recorded_steps"]})
    doc.update({
        "_v_saved_share": round(saving["v_saved_share"], 6),
        "_state_saved_share": round(saving["state_saved_share"], 6),
        # the shapes the rules were derived on: a changed model makes the file stale (tests check this)
        "_shapes": {p.name: list(p.shape) for p in trace.params},
    })
    return doc


load_rules = read_rules  # the one rules reader (optbench.rules), also SlimAdam's


def summary_markdown(trace: ProxyTrace, rules: Mapping[str, list[int] | None], *, criterion: str, alpha: float,
                     command: str) -> str:
    """Role-level summary and the memory table, as markdown."""
    from tabulate import tabulate

    crit = get_criterion(criterion)
    roles = role_summary(trace, rules, criterion)
    saving = memory_saving(trace.params, rules)
    if trace.source is None:
        title = f"# SNR rules for {trace.task} ({trace.preset} preset)"
        origin = (f"Proxy: Adam at lr {trace.lr:g} for {trace.steps} steps (seed {trace.seed}), V recorded at "
                  f"{trace.cost.get('recorded_steps', '?')} steps (step 1 and every {trace.every}).")
    else:
        title = f"# SNR rules from {Path(trace.source['path']).name}" + (f" ({trace.task})" if trace.task else "")
        origin = (f"Trace: `{trace.source['path']}` ({trace.source['format']} format), V recorded at "
                  f"{len(trace.source['recorded_steps'])} steps (up to step {trace.steps}); "
                  f"{len(trace.params)} tensors.")
    lines = [
        title,
        "",
        f"Made by `{command}`.",
        f"{origin} Criterion `{criterion}`: {crit.rule}, alpha = {alpha:g}, score averaged over recorded steps.",
        "",
        "## Per layer role",
        "",
        f"`choices`: tensors per chosen option; `consistency`: share of the role's tensors that chose the modal "
        f"option; `{criterion}_*`: the role's mean step-averaged {criterion} per option.",
        "",
        tabulate(roles, headers="keys", tablefmt="github", floatfmt=".3g"),
        "",
        "## Per tensor",
        "",
        tabulate([{"parameter": p.name, "role": p.role, "shape": "x".join(map(str, p.shape)),
                   "axes": option_name(p.shape, rules.get(p.name)),
                   "v_entries": p.numel, "v_kept": compressed_numel(p.shape, rules.get(p.name))}
                  for p in trace.params], headers="keys", tablefmt="github"),
        "",
        "## Memory",
        "",
        tabulate([{"second-moment entries": saving["v_entries_full"], "kept": saving["v_entries_kept"],
                   "second moment saved": f"{100 * saving['v_saved_share']:.1f}%",
                   "optimizer state (m + v) saved": f"{100 * saving['state_saved_share']:.1f}%"}],
                 headers="keys", tablefmt="github"),
        "",
    ]
    return "\n".join(lines)


def write_outputs(trace: ProxyTrace, out: str | Path, *, criterion: str, alpha: float, command: str,
                  rules_out: str | Path | None = None) -> dict[str, Path]:
    """rules.json and summary.md under ``out``, trace.csv too for a proxy run (a trace read from a file
    is not written again), and the rules at ``rules_out`` as well. Rules files are written atomically:
    slimadam-snr reads them in every run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rules = derive_rules(trace, criterion, alpha)
    doc = rules_document(trace, rules, criterion=criterion, alpha=alpha, command=command)
    paths = {} if trace.source is not None else {"trace": write_trace_csv(trace, out / "trace.csv")}
    paths["rules"] = write_rules(out / "rules.json", doc)
    paths["summary"] = out / "summary.md"
    paths["summary"].write_text(summary_markdown(trace, rules, criterion=criterion, alpha=alpha, command=command))
    if rules_out is not None:
        paths["rules_out"] = write_rules(rules_out, doc)
    return paths
