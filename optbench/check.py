"""The regression gate: is a candidate optimizer worse than a baseline on the same seeds?

``optbench check --candidate NAME`` trains the candidate and the baseline (``adamw`` unless
told otherwise) on the same tasks, preset and seeds through the runner, then decides per task.

Decision rule (printed with every verdict)
------------------------------------------
Per task, with seeds s = 1..n shared by both optimizers, let ``d_s = candidate_s - baseline_s``
of the task's final metric, sign-flipped when the metric is lower-is-better, so that
``d < 0`` always means "candidate worse". Seeds fix the model init and the data order, so the
two runs of one seed differ only by the optimizer and the per-seed difference removes the
seed-to-seed spread (a paired design).

- ``δ`` (the non-inferiority margin, metric units) is ``--tolerance`` when given, else
  ``max(2 x the baseline's seed std, 1% of |baseline mean|)``. The first term scales with
  how noisy the task is at this budget; the floor keeps a lucky, tight baseline from
  making the gate fire on noise.
- Test: one-sided t-test of ``H0: mean(d) >= -δ`` (candidate worse by at most δ) against
  ``H1: mean(d) < -δ``. Default paired (``t = (mean(d) + δ) / (sd(d)/√n)``, n-1 degrees of
  freedom); ``--test welch`` uses Welch's unequal-variance t on the two samples instead.
- FAIL when the shortfall ``-mean(d)`` exceeds δ significantly (p < α, default α = 0.05);
  or exceeds the hard bound (``--hard-bound``, default 3δ) whatever the p-value — with 3
  seeds a t-test has little power, and a candidate that much worse should not pass on a
  technicality; or any candidate run diverged (non-finite loss) or raised.
- Zero variance (every seed gives the same difference, e.g. an equivalent implementation):
  the shortfall is known exactly, p is 0 when it exceeds δ and 1 otherwise. With one seed
  no test is possible and only the hard bound applies.
- Optional gates: ``--max-memory-ratio R`` fails when candidate/baseline optimizer-state
  bytes exceed R (exact bytes; peak memory is shown when measured but not gated);
  ``--max-time-ratio R`` fails when the median full training step (forward, backward,
  optimizer step) is more than R times slower.
- A baseline run that diverged or errored makes the task ERROR (nothing to judge against).
  Exit status: 0 when every task passes, 1 when any fails or errors.

Stored runs are reused through the runner's key (task, optimizer, resolved hparams, seed,
preset, device, task options) only when the record's environment matches this machine
(``optbench.env.hardware_key``: device, device name, CPU, torch version, threads); otherwise
the run is done again here (``on_mismatch="rerun"``, the old record is kept beside it as
``*.json.otherenv``) or the check refuses (``on_mismatch="refuse"``, a ValueError naming the
records). The candidate's runs are always redone unless ``reuse_candidate``: its code
(a plugin file under development) may have changed while its name and hparams did not.
Baseline and candidate runs alternate seed by seed, so that load on the machine spreads over
both sides of the step-time ratio.

Devices: everything here is device-agnostic and goes through the runner; ``device="cuda"``
(the ``gpu`` preset) has not been run on this machine.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from scipy import stats
from tabulate import tabulate

from optbench import registry
from optbench.env import HARDWARE_FIELDS, default_device, environment, hardware_key
from optbench.lrs import resolve_lr
from optbench.records import CorruptRecordError, read_record
from optbench.runner import Cell, cell_key, make_cells, run_grid

TESTS = ("paired", "welch")
MISMATCH_POLICIES = ("rerun", "refuse")
DEFAULT_ALPHA = 0.05
STD_FACTOR = 2.0  # default δ: this many baseline seed stds ...
RELATIVE_FLOOR = 0.01  # ... but at least this share of |baseline mean|
HARD_BOUND_FACTOR = 3.0  # default hard bound: this many δ


# ---------------------------------------------------------------------------------------------
# The statistics: small pieces, no runs involved


def oriented(values: Sequence[float], higher_is_better: bool) -> list[float]:
    """Values turned so that larger is better."""
    return [float(v) if higher_is_better else -float(v) for v in values]


def sample_std(values: Sequence[float]) -> float:
    """Seed standard deviation (n-1 denominator); 0 for fewer than two values."""
    return statistics.stdev(values) if len(values) >= 2 else 0.0


def default_tolerance(baseline: Sequence[float]) -> tuple[float, str]:
    """``max(2 x baseline seed std, 1% of |baseline mean|)`` and which term won."""
    spread = STD_FACTOR * sample_std(baseline)
    floor = RELATIVE_FLOOR * abs(statistics.fmean(baseline))
    if spread >= floor and spread > 0:
        return spread, f"{STD_FACTOR:g} x baseline seed std"
    if floor > 0:
        return floor, f"{100 * RELATIVE_FLOOR:g}% of |baseline mean|"
    return 1e-12, "baseline mean and std are 0"


def _t_p_value(shifted_mean: float, se: float, df: float) -> float:
    """One-sided p of ``H1: true mean < 0`` for a shifted mean with standard error ``se``."""
    if se == 0 or not math.isfinite(se):
        return 0.0 if shifted_mean < 0 else 1.0
    return float(stats.t.cdf(shifted_mean / se, df))


def paired_p_value(diffs: Sequence[float], margin: float) -> tuple[float | None, float | None]:
    """p of ``H1: mean(d) < -margin`` from per-seed differences, and the degrees of freedom."""
    n = len(diffs)
    if n < 2:
        return None, None
    se = sample_std(diffs) / math.sqrt(n)
    return _t_p_value(statistics.fmean(diffs) + margin, se, n - 1), float(n - 1)


def welch_p_value(candidate: Sequence[float], baseline: Sequence[float],
                  margin: float) -> tuple[float | None, float | None]:
    """p of ``H1: mean(c) - mean(b) < -margin`` (Welch's t, Welch–Satterthwaite df), and the df."""
    nc, nb = len(candidate), len(baseline)
    if nc < 2 or nb < 2:
        return None, None
    vc, vb = sample_std(candidate) ** 2 / nc, sample_std(baseline) ** 2 / nb
    se = math.sqrt(vc + vb)
    shifted = statistics.fmean(candidate) - statistics.fmean(baseline) + margin
    if se == 0:
        return _t_p_value(shifted, 0.0, 1.0), None
    df = (vc + vb) ** 2 / (vc**2 / (nc - 1) + vb**2 / (nb - 1))
    return _t_p_value(shifted, se, df), df


@dataclass(frozen=True)
class QualityResult:
    """The quality comparison on one task, in the metric's own units and direction."""

    n: int
    baseline_mean: float
    baseline_std: float
    candidate_mean: float
    candidate_std: float
    difference: float  # mean(candidate) - mean(baseline), raw metric units
    shortfall: float  # how much worse the candidate is (negative = better), direction-aware
    tolerance: float
    tolerance_source: str
    hard_bound: float
    test: str
    p_value: float | None
    df: float | None
    alpha: float
    passed: bool
    reason: str


def compare_quality(candidate: Sequence[float], baseline: Sequence[float], higher_is_better: bool, *,
                    tolerance: float | None = None, hard_bound: float | None = None, alpha: float = DEFAULT_ALPHA,
                    test: str = "paired") -> QualityResult:
    """Apply the decision rule (module docstring) to final metrics listed in the same seed order."""
    check_test(test)
    if test == "paired" and len(candidate) != len(baseline):
        raise ValueError(f"a paired test needs one value per seed on both sides, got {len(candidate)} "
                         f"candidate and {len(baseline)} baseline values")
    if not candidate or not baseline:
        raise ValueError("nothing to compare: no finished runs on one side")
    check_alpha(alpha)
    cand, base = oriented(candidate, higher_is_better), oriented(baseline, higher_is_better)
    if tolerance is None:
        tolerance, source = default_tolerance(baseline)
    else:
        source = "--tolerance"
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0 (metric units), got {tolerance}")
    hard_bound = HARD_BOUND_FACTOR * tolerance if hard_bound is None else hard_bound
    if hard_bound < tolerance:
        raise ValueError(f"hard bound {hard_bound} must be >= the tolerance {tolerance}")
    shortfall = statistics.fmean(base) - statistics.fmean(cand)
    if test == "paired":
        p, df = paired_p_value([c - b for c, b in zip(cand, base)], tolerance)
    else:
        p, df = welch_p_value(cand, base, tolerance)
    n = min(len(cand), len(base))
    test_name = f"{test} t, n={n}" if p is not None else f"none (n={n}): hard bound only"
    if shortfall > hard_bound:
        passed, reason = False, f"candidate worse by {shortfall:.4g} > hard bound {hard_bound:.4g}"
    elif p is not None and p < alpha:
        passed, reason = False, f"candidate worse by {shortfall:.4g} > δ={tolerance:.4g} with p={p:.3g} < {alpha:g}"
    elif shortfall > tolerance:
        passed, reason = True, f"worse by {shortfall:.4g} > δ={tolerance:.4g}, but not significant"
        if p is not None:
            reason += f" (p={p:.3g} >= {alpha:g})"
    elif shortfall > 0:
        passed, reason = True, f"worse by {shortfall:.4g}, within δ={tolerance:.4g}"
    else:
        passed, reason = True, "not worse (same mean)" if shortfall == 0 else f"not worse (better by {-shortfall:.4g})"
    return QualityResult(
        n=n, baseline_mean=statistics.fmean(baseline), baseline_std=sample_std(baseline),
        candidate_mean=statistics.fmean(candidate), candidate_std=sample_std(candidate),
        difference=statistics.fmean(candidate) - statistics.fmean(baseline), shortfall=shortfall,
        tolerance=tolerance, tolerance_source=source, hard_bound=hard_bound, test=test_name, p_value=p, df=df,
        alpha=alpha, passed=passed, reason=reason,
    )


def check_test(test: str) -> str:
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; known: {', '.join(TESTS)}")
    return test


def check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha


def check_ratio(name: str, value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# One task's verdict from its run records


@dataclass
class TaskVerdict:
    task: str
    metric: str
    higher_is_better: bool
    verdict: str  # PASS, FAIL or ERROR
    reasons: list[str] = field(default_factory=list)
    quality: QualityResult | None = None
    state_bytes: tuple[int | None, int | None] = (None, None)  # (candidate, baseline)
    state_ratio: float | None = None
    peak_ratio: float | None = None
    step_time_ratio: float | None = None
    optimizer_step_time_ratio: float | None = None
    lrs: tuple[str, str] = ("", "")  # (candidate, baseline): "value (source)"


def _lr_of(records: Sequence[dict]) -> str:
    lrs = sorted({(r["hparams"].get("lr"), r.get("lr_source", "?")) for r in records}, key=str)
    return ", ".join(f"{lr:g} ({source})" if isinstance(lr, (int, float)) else f"{lr} ({source})" for lr, source in lrs)


def _ratio(candidate: float | None, baseline: float | None) -> float | None:
    if candidate is None or baseline is None:
        return None
    if baseline == 0:
        return 1.0 if candidate == 0 else math.inf
    return candidate / baseline


def _median_of(records: Sequence[dict], section: str, key: str) -> float | None:
    values = [r[section].get(key) for r in records]
    return statistics.median(values) if values and all(v is not None for v in values) else None


def _failure(record: dict) -> str:
    if record["status"] == "diverged":
        return f"seed {record['seed']}: diverged at step {record['diverged_at_step']} (non-finite loss or metric)"
    return f"seed {record['seed']}: error: {record['error']}"


@dataclass(frozen=True)
class Gates:
    """The thresholds of a check; see the module docstring."""

    tolerance: float | None = None
    hard_bound: float | None = None
    alpha: float = DEFAULT_ALPHA
    test: str = "paired"
    max_memory_ratio: float | None = None
    max_time_ratio: float | None = None


def judge_task(task: str, candidate: Sequence[dict], baseline: Sequence[dict], gates: Gates) -> TaskVerdict:
    """The verdict for one task from the candidate's and the baseline's records (same seed order)."""
    metric = registry.get_task(task).metric
    verdict = TaskVerdict(task, metric.name, metric.higher_is_better, "PASS")
    verdict.lrs = (_lr_of(candidate), _lr_of(baseline))
    bad_base = [_failure(r) for r in baseline if r["status"] != "ok"]
    bad_cand = [_failure(r) for r in candidate if r["status"] != "ok"]
    if bad_cand:
        verdict.verdict = "FAIL"
        verdict.reasons += [f"candidate {line}" for line in bad_cand]
    if bad_base:
        verdict.verdict = "FAIL" if bad_cand else "ERROR"
        verdict.reasons += [f"baseline {line}: nothing to judge against" for line in bad_base]
    if bad_cand or bad_base:
        return verdict
    verdict.quality = compare_quality(
        [r["metrics"]["final_metric"] for r in candidate], [r["metrics"]["final_metric"] for r in baseline],
        metric.higher_is_better, tolerance=gates.tolerance, hard_bound=gates.hard_bound, alpha=gates.alpha,
        test=gates.test)
    if not verdict.quality.passed:
        verdict.verdict = "FAIL"
        verdict.reasons.append(verdict.quality.reason)
    _fill_costs(verdict, candidate, baseline, gates)
    return verdict


def _fill_costs(verdict: TaskVerdict, candidate: Sequence[dict], baseline: Sequence[dict], gates: Gates) -> None:
    def state(records):  # identical across seeds for every sane optimizer; the max is the safe side
        values = [r["memory"]["optimizer_state_bytes"] for r in records]
        return max(values) if all(v is not None for v in values) else None

    verdict.state_bytes = (state(candidate), state(baseline))
    verdict.state_ratio = _ratio(*verdict.state_bytes)
    verdict.peak_ratio = _ratio(_median_of(candidate, "memory", "peak_bytes"),
                                _median_of(baseline, "memory", "peak_bytes"))
    verdict.step_time_ratio = _ratio(_median_of(candidate, "timing", "step_s_median"),
                                     _median_of(baseline, "timing", "step_s_median"))
    verdict.optimizer_step_time_ratio = _ratio(_median_of(candidate, "timing", "optimizer_step_s_median"),
                                               _median_of(baseline, "timing", "optimizer_step_s_median"))
    for name, value, limit, what in (
        ("memory", verdict.state_ratio, gates.max_memory_ratio, "optimizer-state bytes"),
        ("time", verdict.step_time_ratio, gates.max_time_ratio, "median step time"),
    ):
        if limit is None:
            continue
        if value is None:
            verdict.verdict = "FAIL"
            verdict.reasons.append(f"--max-{name}-ratio given but the {what} were not recorded")
        elif value > limit:
            verdict.verdict = "FAIL"
            verdict.reasons.append(f"{what} ratio {value:.3g}x > --max-{name}-ratio {limit:g}")


# ---------------------------------------------------------------------------------------------
# Running: which stored runs may be reused, then the runner


def describe_hardware(env: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in zip(HARDWARE_FIELDS, hardware_key(dict(env))))


def hardware_difference(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """Which hardware fields differ between two run environments, or None when they match."""
    a, b = hardware_key(dict(stored)), hardware_key(dict(current))
    if a == b:
        return None
    return "; ".join(f"{k} {x!r} here {y!r}" for k, x, y in zip(HARDWARE_FIELDS, a, b) if x != y)


def prepare_store(cells: Sequence[Cell], *, preset: str, device: str, runs_dir: str | Path, fresh: bool,
                  on_mismatch: str, role: str) -> list[str]:
    """Make the runner redo what must not be reused; return one line per decision.

    ``fresh``: drop stored records of these cells (the candidate's, by default). Otherwise a
    stored record is reused only if measured on matching hardware; a mismatching one is set
    aside as ``*.json.otherenv`` and rerun, or refused (ValueError) under ``on_mismatch="refuse"``.
    """
    if on_mismatch not in MISMATCH_POLICIES:
        raise ValueError(f"unknown environment-mismatch policy {on_mismatch!r}; known: {', '.join(MISMATCH_POLICIES)}")
    here = environment(device)
    lines, mismatched = [], []
    for cell in cells:
        path = cell_key(cell, preset, torch.device(device).type).path(runs_dir)
        if not path.exists():
            continue
        if fresh:
            path.unlink()
            lines.append(f"{role} {cell.label}: stored run dropped, run again (the candidate is always rerun "
                         "unless --reuse-candidate)")
            continue
        try:
            record = read_record(path)
        except CorruptRecordError:
            continue  # the runner names it, sets it aside and reruns it
        diff = hardware_difference(record.get("env", {}), here)
        if diff is None:
            if record["status"] == "error":
                continue  # the runner reruns stored errors for a check
            lines.append(f"{role} {cell.label}: reused {path} (same task, preset, seed, hparams, environment)")
            continue
        mismatched.append((cell, path, diff))
    if mismatched and on_mismatch == "refuse":
        names = "\n  ".join(f"{p} ({d})" for _, p, d in mismatched)
        raise ValueError(f"{len(mismatched)} stored {role} run(s) were measured on another environment and "
                         f"--on-env-mismatch is 'refuse':\n  {names}\n"
                         "use --on-env-mismatch rerun or another --runs-dir")
    for cell, path, diff in mismatched:
        aside = path.with_suffix(".json.otherenv")
        path.replace(aside)
        lines.append(f"{role} {cell.label}: stored run measured on another environment ({diff}): rerun here, "
                     f"old record kept as {aside}")
    return lines


@dataclass
class CheckReport:
    candidate: str
    baseline: str
    preset: str
    seeds: list[int]
    device: str
    runs_dir: str
    gates: Gates
    environment: dict
    verdicts: list[TaskVerdict]
    store_log: list[str]
    candidate_hparams: dict = field(default_factory=dict)
    baseline_hparams: dict = field(default_factory=dict)
    ran: int = 0
    reused: int = 0

    @property
    def passed(self) -> bool:
        return all(v.verdict == "PASS" for v in self.verdicts)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_json(self) -> dict:
        return asdict(self) | {"passed": self.passed, "rule": decision_rule(self.gates)}


def run_check(candidate: str, *, baseline: str = "adamw", tasks: Sequence[str], seeds: Sequence[int],
              preset: str = "cpu", runs_dir: str | Path, device: str | None = None,
              candidate_hparams: Mapping[str, Any] | None = None, baseline_hparams: Mapping[str, Any] | None = None,
              task_options: Mapping[str, Mapping[str, Any]] | None = None, gates: Gates = Gates(),
              reuse_candidate: bool = False, on_mismatch: str = "rerun", lr_from_baseline: bool = False,
              measure_memory_pass: bool = True, progress: bool = True,
              log: Callable[[str], None] = print) -> CheckReport:
    """Run (or reuse) both optimizers' cells and judge every task. Bad names raise ValueError before any run.

    The candidate runs at its own learning rate (explicit ``lr`` hparam > sweep table > the task's
    default > its spec's ``default_lr``); ``lr_from_baseline`` gives it the baseline's resolved lr
    on each task instead, unless an explicit ``lr`` is among ``candidate_hparams``.
    """
    registry.check_preset(preset)
    check_test(gates.test)
    check_alpha(gates.alpha)
    check_ratio("--max-memory-ratio", gates.max_memory_ratio)
    check_ratio("--max-time-ratio", gates.max_time_ratio)
    if gates.tolerance is not None and not gates.tolerance > 0:
        raise ValueError(f"--tolerance must be > 0 (metric units), got {gates.tolerance}")
    if gates.hard_bound is not None and (gates.hard_bound <= 0 or gates.hard_bound < (gates.tolerance or 0)):
        raise ValueError(f"--hard-bound must be > 0 and >= --tolerance, got {gates.hard_bound}")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct integers, got {seeds}")
    device = device or default_device(preset)
    for name in (candidate, baseline):
        reason = registry.get_optimizer(name).unavailable_reason(torch.device(device).type)
        if reason:
            raise ValueError(f"optimizer {name!r} cannot run on {device}: {reason}")
    for name in tasks:
        reason = registry.get_task(name).requires.unmet(torch.device(device).type)
        if reason:
            raise ValueError(f"task {name!r} cannot run on {device}: {reason}")
    base_cells = make_cells(tasks, [baseline], seeds, baseline_hparams, task_options)
    cand_cells = []
    for task in tasks:
        hparams = dict(candidate_hparams or {})
        if lr_from_baseline and "lr" not in hparams:
            hparams["lr"] = baseline_lr(task, baseline, preset, baseline_hparams)
        cand_cells += make_cells([task], [candidate], seeds, hparams, task_options)
    for cell in base_cells + cand_cells:  # resolves lr and hparams: a bad key raises here, before any run
        cell_key(cell, preset, torch.device(device).type)
    store_log = prepare_store(cand_cells, preset=preset, device=device, runs_dir=runs_dir,
                              fresh=not reuse_candidate, on_mismatch=on_mismatch, role="candidate")
    store_log += prepare_store(base_cells, preset=preset, device=device, runs_dir=runs_dir, fresh=False,
                               on_mismatch=on_mismatch, role="baseline")
    for line in store_log:
        log(f"  {line}")
    # Baseline and candidate alternate seed by seed, so that a machine getting busier or quieter
    # during the check does not land on one side of the step-time ratio.
    device_type = torch.device(device).type
    paths = {id(c): cell_key(c, preset, device_type).path(runs_dir) for c in base_cells + cand_cells}
    order, seen = [], set()
    for pair in zip(base_cells, cand_cells):
        for cell in pair:
            if paths[id(cell)] not in seen:  # a candidate identical to the baseline runs once
                seen.add(paths[id(cell)])
                order.append(cell)
    outcome = run_grid(order, preset=preset, runs_dir=runs_dir, device=device, rerun_failed=True,
                       progress=progress, measure_memory_pass=measure_memory_pass, log=log)
    base_records = [read_record(paths[id(c)]) for c in base_cells]
    cand_records = [read_record(paths[id(c)]) for c in cand_cells]
    verdicts = [judge_task(task, [r for c, r in zip(cand_cells, cand_records) if c.task == task],
                           [r for c, r in zip(base_cells, base_records) if c.task == task], gates) for task in tasks]
    if lr_from_baseline and "lr" not in (candidate_hparams or {}):
        for v in verdicts:
            v.lrs = (v.lrs[0].replace("(explicit)", "(the baseline's: --lr-from-baseline)"), v.lrs[1])
    return CheckReport(candidate, baseline, preset, seeds, device, str(runs_dir), gates, environment(device),
                       verdicts, store_log, dict(candidate_hparams or {}), dict(baseline_hparams or {}),
                       ran=outcome.ran, reused=outcome.reused)


def baseline_lr(task: str, baseline: str, preset: str, baseline_hparams: Mapping[str, Any] | None = None) -> float:
    """The learning rate the baseline runs at on ``task`` (explicit, sweep table, task or optimizer default)."""
    explicit = (baseline_hparams or {}).get("lr")
    return resolve_lr(registry.get_task(task), registry.get_optimizer(baseline), preset, explicit)[0]


# ---------------------------------------------------------------------------------------------
# Output


def decision_rule(gates: Gates) -> str:
    delta = (f"δ = {gates.tolerance:g} (--tolerance)" if gates.tolerance is not None else
             f"δ = max({STD_FACTOR:g} x baseline seed std, {100 * RELATIVE_FLOOR:g}% of |baseline mean|)")
    hard = f"{gates.hard_bound:g}" if gates.hard_bound is not None else f"{HARD_BOUND_FACTOR:g}δ"
    test = ("paired t on per-seed differences d = candidate - baseline" if gates.test == "paired"
            else "Welch t on the two samples")
    lines = [
        "decision rule (per task; metric differences are turned so that negative = candidate worse):",
        f"  {delta}; test: one-sided {test}, H0 'worse by at most δ' vs H1 'worse by more than δ'",
        f"  FAIL if worse by more than δ with p < {gates.alpha:g}, or worse by more than {hard} whatever p,",
        "  or any candidate run diverged or errored; ERROR if a baseline run did not finish",
    ]
    if gates.max_memory_ratio is not None:
        lines.append(f"  FAIL if optimizer-state bytes ratio > {gates.max_memory_ratio:g}")
    if gates.max_time_ratio is not None:
        lines.append(f"  FAIL if median step time ratio > {gates.max_time_ratio:g}")
    return "\n".join(lines)


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_report(report: CheckReport) -> str:
    def named(name: str, hparams: Mapping[str, Any]) -> str:
        return repr(name) + (f" ({', '.join(f'{k}={v}' for k, v in hparams.items())})" if hparams else "")

    head = (f"optbench check: candidate {named(report.candidate, report.candidate_hparams)} vs baseline "
            f"{named(report.baseline, report.baseline_hparams)}; preset {report.preset}, "
            f"seeds {','.join(map(str, report.seeds))}, device {report.device} "
            f"({describe_hardware(report.environment)}); runs in {report.runs_dir}: "
            f"{report.ran} run, {report.reused} reused")
    rows = []
    for v in report.verdicts:
        q = v.quality
        metric = f"{v.metric} ({'max' if v.higher_is_better else 'min'})"
        if q is None:
            rows.append([v.task, metric, "", "", "", "", "", "", "", "", "", v.verdict])
            continue
        p = "n/a" if q.p_value is None else f"{q.p_value:.3g}"
        state = f"{_fmt_ratio(v.state_ratio)} ({_fmt_bytes(v.state_bytes[0])})"
        rows.append([v.task, metric, f"{q.baseline_mean:.4f} ± {q.baseline_std:.4f}",
                     f"{q.candidate_mean:.4f} ± {q.candidate_std:.4f}", f"{q.difference:+.4f}",
                     f"{q.tolerance:.4g}", q.test, p, state, _fmt_ratio(v.peak_ratio),
                     f"{_fmt_ratio(v.step_time_ratio)} (opt {_fmt_ratio(v.optimizer_step_time_ratio)})", v.verdict])
    table = tabulate(rows, headers=["task", "metric", f"baseline {report.baseline}", f"candidate {report.candidate}",
                                    "diff", "δ", "test", "p", "state mem (cand. bytes)", "peak mem",
                                    "step time (opt step)", "verdict"],
                     disable_numparse=True)
    notes = []
    for v in report.verdicts:
        notes.append(f"  {v.task}: lr candidate {v.lrs[0]}, baseline {v.lrs[1]}")
        if v.quality is not None:
            notes.append(f"  {v.task}: {v.quality.reason}; δ from {v.quality.tolerance_source}, "
                         f"hard bound {v.quality.hard_bound:.4g}")
        notes += [f"  {v.task}: {v.verdict}: {reason}" for reason in v.reasons
                  if v.quality is None or reason != v.quality.reason]
    failed = [v.task for v in report.verdicts if v.verdict != "PASS"]
    summary = ("PASS: no regression on " + ", ".join(v.task for v in report.verdicts) if not failed
               else f"FAIL: {', '.join(failed)} ({len(failed)} of {len(report.verdicts)} task(s))")
    return "\n".join([head, decision_rule(report.gates), "", table, "", *notes, "", summary])
