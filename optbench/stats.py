"""The gate's statistics: pure functions over final metrics, no runs and no records involved.

``compare_quality`` applies the regression gate's decision rule (``optbench.gate`` states it
in full) to two lists of per-seed values; the other functions are its pieces, small enough to
check against scipy on known numbers. scipy is imported only when a p-value is computed, so
the command line starts fast.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from optbench.errors import UsageError

TESTS = ("paired", "welch")
DEFAULT_ALPHA = 0.05
STD_FACTOR = 2.0  # default δ: this many baseline seed stds ...
RELATIVE_FLOOR = 0.01  # ... but at least this share of |baseline mean|
HARD_BOUND_FACTOR = 3.0  # default hard bound: this many δ


def t_cdf(x: float, df: float) -> float:
    """Student's t distribution function."""
    from scipy import stats

    return float(stats.t.cdf(x, df))


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (inverse distribution function), e.g. ``t_quantile(0.975, n - 1)`` for a 95% CI."""
    from scipy import stats

    return float(stats.t.ppf(p, df))


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


def one_sided_p(shifted_mean: float, se: float, df: float) -> float:
    """One-sided p of ``H1: true mean < 0`` for a shifted mean with standard error ``se``.

    With ``se == 0`` the mean is known exactly: p is 0 when it is below 0, else 1.
    """
    if se == 0 or not math.isfinite(se):
        return 0.0 if shifted_mean < 0 else 1.0
    return t_cdf(shifted_mean / se, df)


def paired_p_value(diffs: Sequence[float], margin: float) -> tuple[float | None, float | None]:
    """p of ``H1: mean(d) < -margin`` from per-seed differences, and the degrees of freedom."""
    n = len(diffs)
    if n < 2:
        return None, None
    se = sample_std(diffs) / math.sqrt(n)
    return one_sided_p(statistics.fmean(diffs) + margin, se, n - 1), float(n - 1)


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
        return one_sided_p(shifted, 0.0, 1.0), None
    df = (vc + vb) ** 2 / (vc**2 / (nc - 1) + vb**2 / (nb - 1))
    return one_sided_p(shifted, se, df), df


def check_test(test: str) -> str:
    if test not in TESTS:
        raise UsageError(f"unknown test {test!r}; known: {', '.join(TESTS)}")
    return test


def check_alpha(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise UsageError(f"alpha must be in (0, 1), got {alpha}")
    return alpha


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
    """Apply the decision rule (``optbench.gate``) to final metrics listed in the same seed order."""
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
        raise UsageError(f"tolerance must be > 0 (metric units), got {tolerance}")
    hard_bound = HARD_BOUND_FACTOR * tolerance if hard_bound is None else hard_bound
    if hard_bound < tolerance:
        raise UsageError(f"hard bound {hard_bound} must be >= the tolerance {tolerance}")
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
