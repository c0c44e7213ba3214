"""The regression gate's verdicts: is a candidate optimizer worse than a baseline on the same seeds?

Pure functions over run records: nothing here trains (``optbench.check`` runs the cells,
``optbench.check_output`` prints the verdicts, ``optbench.stats`` holds the statistics).

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
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optbench.errors import UsageError
from optbench.state_check import state_formula_issue
from optbench.stats import DEFAULT_ALPHA, QualityResult, check_alpha, check_test, compare_quality

VERDICTS = ("PASS", "FAIL", "ERROR")


@dataclass(frozen=True)
class Gates:
    """The thresholds of a check (module docstring); bad values are usage errors."""

    tolerance: float | None = None
    hard_bound: float | None = None
    alpha: float = DEFAULT_ALPHA
    test: str = "paired"
    max_memory_ratio: float | None = None
    max_time_ratio: float | None = None

    def __post_init__(self) -> None:
        check_test(self.test)
        check_alpha(self.alpha)
        for flag, value in (("--max-memory-ratio", self.max_memory_ratio), ("--max-time-ratio", self.max_time_ratio)):
            if value is not None and not value > 0:
                raise UsageError(f"{flag} must be > 0, got {value}")
        if self.tolerance is not None and not self.tolerance > 0:
            raise UsageError(f"--tolerance must be > 0 (metric units), got {self.tolerance}")
        if self.hard_bound is not None and (not self.hard_bound > 0 or self.hard_bound < (self.tolerance or 0)):
            raise UsageError(f"--hard-bound must be > 0 and >= --tolerance, got {self.hard_bound}")


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
    flags: list[str] = field(default_factory=list)  # worth a look, not a failure (e.g. a wrong state formula)


def lr_label(records: Sequence[Mapping[str, Any]]) -> str:
    """The learning rate(s) of some records, with where each came from: ``"0.001 (sweep)"``."""
    lrs = sorted({(r["hparams"].get("lr"), r.get("lr_source", "?")) for r in records}, key=str)
    return ", ".join(f"{lr:g} ({source})" if isinstance(lr, (int, float)) else f"{lr} ({source})" for lr, source in lrs)


def _ratio(candidate: float | None, baseline: float | None) -> float | None:
    if candidate is None or baseline is None:
        return None
    if baseline == 0:
        return 1.0 if candidate == 0 else math.inf
    return candidate / baseline


def _median_of(records: Sequence[Mapping[str, Any]], section: str, key: str) -> float | None:
    values = [r[section].get(key) for r in records]
    return statistics.median(values) if values and all(isinstance(v, (int, float)) for v in values) else None


def _failure(record: Mapping[str, Any]) -> str:
    if record["status"] == "diverged":
        return f"seed {record['seed']}: diverged at step {record['diverged_at_step']} (non-finite loss or metric)"
    return f"seed {record['seed']}: error: {record['error']}"


def judge_task(task: str, candidate: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]],
               gates: Gates, candidate_lr: str | None = None) -> TaskVerdict:
    """The verdict for one task from the candidate's and the baseline's records (same seed order).

    ``candidate_lr``: how the candidate's lr is shown when the check chose it (e.g. the
    baseline's, or a tuned one); by default, as its records say.
    """
    metrics = (list(baseline) + list(candidate))[0]["metrics"]
    verdict = TaskVerdict(task, metrics["metric_name"], bool(metrics["higher_is_better"]), "PASS")
    verdict.lrs = (candidate_lr or lr_label(candidate), lr_label(baseline))
    verdict.flags = sorted({f"candidate's {issue}" for r in candidate if (issue := state_formula_issue(r))})
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
        verdict.higher_is_better, tolerance=gates.tolerance, hard_bound=gates.hard_bound, alpha=gates.alpha,
        test=gates.test)
    if not verdict.quality.passed:
        verdict.verdict = "FAIL"
        verdict.reasons.append(verdict.quality.reason)
    _judge_costs(verdict, candidate, baseline, gates)
    return verdict


NOT_COMPARABLE = ("the runs differ in hardware or in how many runs shared their node (timing.concurrent_runs); "
                  "--executor local gives comparable step times")


def _comparable_timing(records: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the finished runs' step times compare: same hardware and concurrency (``env.timing_key``)."""
    from optbench.env import timing_key  # env imports torch; the gate's statistics do not need it

    return len({timing_key(dict(r)) for r in records if r["status"] == "ok"}) <= 1


def _judge_costs(verdict: TaskVerdict, candidate: Sequence[Mapping[str, Any]],
                 baseline: Sequence[Mapping[str, Any]], gates: Gates) -> None:
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
    comparable = _comparable_timing([*candidate, *baseline])
    if not comparable:
        verdict.step_time_ratio = verdict.optimizer_step_time_ratio = None
        verdict.flags.append(f"step times not compared: {NOT_COMPARABLE}")
    for name, value, limit, what in (
        ("memory", verdict.state_ratio, gates.max_memory_ratio, "optimizer-state bytes"),
        ("time", verdict.step_time_ratio, gates.max_time_ratio, "median step time"),
    ):
        if limit is None:
            continue
        if name == "time" and not comparable:
            verdict.verdict = "FAIL"
            verdict.reasons.append(f"--max-time-ratio given but {NOT_COMPARABLE}")
        elif value is None:
            verdict.verdict = "FAIL"
            verdict.reasons.append(f"--max-{name}-ratio given but the {what} were not recorded")
        elif value > limit:
            verdict.verdict = "FAIL"
            verdict.reasons.append(f"{what} ratio {value:.3g}x > --max-{name}-ratio {limit:g}")
