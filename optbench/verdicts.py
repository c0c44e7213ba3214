"""The board's verdicts: is an optimizer better than, equivalent to, or worse than AdamW on a task?

Pure functions over run records (as the report's runs frame); nothing here trains. The rule,
printed in the leaderboard with every table:

- Per task, the quantity compared is the final held-out loss (``metrics.eval_loss``, lower is
  better), the task's primary metric. Seeds fix the model init and the data order, so the
  runs of one seed differ only by the optimizer: the test is on the paired per-seed
  differences ``d_s = loss(candidate, s) - loss(adamw, s)`` over the seeds both finished.
- A 95% confidence interval for the mean of ``d``: ``mean ± t(0.975, n-1) · sd / √n``.
- The margin ``δ = margin x mean AdamW loss``; ``margin`` is declared on each TaskSpec before
  any result (at most 2%).
- **equivalent** if the whole CI lies inside ``(-δ, +δ)`` (two one-sided tests at 2.5% each:
  the difference is shown to be smaller than the margin); else **better** if the CI lies
  below 0; else **worse** if it lies above 0; else **inconclusive**.
- A candidate that diverged on a seed on which AdamW finished is **worse** on that task (a
  divergence at the tuned lr is a failure of the method at this budget). Fewer than 2 paired
  seeds, or a run that errored, leaves the cell **inconclusive** with the reason.

A task's power to discriminate is reported beside its verdicts: the share of resolved
(non-inconclusive) verdicts, and the median Kendall τ between the optimizer rankings that
two different seeds give. The overall table adds AlgoPerf-style performance profiles
(Dehghani et al. 2021, "The Benchmark Lottery"; Dolan & Moré 2002): for each optimizer, the
share of tasks on which its mean held-out loss, or its optimizer-state bytes, are within a
factor τ of the best optimizer's on that task.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import pandas as pd

VERDICTS = ("better", "equivalent", "worse", "inconclusive")
RESOLVED = ("better", "equivalent", "worse")
CONFIDENCE = 0.95
BASELINE = "adamw"
QUALITY_TAUS = (1.0, 1.01, 1.02, 1.05, 1.1, 1.25)
MEMORY_TAUS = (1.0, 2.0, 4.0, 16.0, 64.0, 256.0)

RULE = (
    "verdict vs AdamW per task, on final held-out loss: paired per-seed differences d = candidate - AdamW, "
    f"{int(CONFIDENCE * 100)}% t-interval for mean(d); δ = the task's margin x AdamW's mean loss. "
    "equivalent: CI inside (-δ, +δ); else better: CI below 0; else worse: CI above 0; else inconclusive. "
    "A candidate diverged where AdamW finished: worse."
)


def _t_quantile(p: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(p, df))


def paired_interval(diffs: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): the t-interval for the mean of paired differences (n >= 2)."""
    n = len(diffs)
    if n < 2:
        raise ValueError(f"a paired interval needs at least 2 differences, got {n}")
    mean = statistics.fmean(diffs)
    half = _t_quantile(0.5 + confidence / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def decide(low: float, high: float, margin: float) -> str:
    """The verdict for a CI (low, high) of candidate - baseline loss, with equivalence margin ``margin`` (> 0)."""
    if -margin < low and high < margin:
        return "equivalent"
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return "inconclusive"


@dataclass(frozen=True)
class Comparison:
    """One (task, candidate) against the baseline. Differences are candidate - baseline, in loss units."""

    task: str
    optimizer: str
    verdict: str
    n: int  # paired seeds
    diff: float = math.nan  # mean paired difference
    ci_low: float = math.nan
    ci_high: float = math.nan
    margin: float = math.nan  # δ in loss units
    baseline_loss: float = math.nan
    rel_diff: float = math.nan  # diff / baseline_loss
    reason: str = ""


def compare(task: str, optimizer: str, candidate: Mapping[int, tuple[str, float]],
            baseline: Mapping[int, tuple[str, float]], margin: float) -> Comparison:
    """Compare per-seed (status, loss) of a candidate with the baseline's; ``margin`` is relative (e.g. 0.01)."""
    ok_base = {s: v for s, (status, v) in baseline.items() if status == "ok" and v is not None and math.isfinite(v)}
    if len(ok_base) < 2:
        return Comparison(task, optimizer, "inconclusive", 0, reason="baseline has fewer than 2 finished seeds")
    base_loss = statistics.fmean(ok_base.values())
    delta = margin * abs(base_loss)
    shared = sorted(set(candidate) & set(ok_base))
    diverged = [s for s in shared if candidate[s][0] == "diverged"]
    errored = [s for s in shared if candidate[s][0] == "error"]
    paired = [s for s in shared if candidate[s][0] == "ok" and candidate[s][1] is not None
              and math.isfinite(candidate[s][1])]
    diffs = [candidate[s][1] - ok_base[s] for s in paired]
    common = {"margin": delta, "baseline_loss": base_loss}
    if diverged:
        mean = statistics.fmean(diffs) if diffs else math.nan
        return Comparison(task, optimizer, "worse", len(paired), diff=mean, rel_diff=mean / base_loss, **common,
                          reason=f"diverged on {len(diverged)} of {len(shared)} seeds")
    if errored:
        return Comparison(task, optimizer, "inconclusive", len(paired), **common,
                          reason=f"errored on {len(errored)} of {len(shared)} seeds")
    if len(diffs) < 2:
        return Comparison(task, optimizer, "inconclusive", len(diffs), **common,
                          reason=f"{len(diffs)} paired seed(s); the test needs 2")
    mean, low, high = paired_interval(diffs)
    return Comparison(task, optimizer, decide(low, high, delta), len(diffs), diff=mean, ci_low=low, ci_high=high,
                      rel_diff=mean / base_loss, **common)


def _per_seed(runs: pd.DataFrame, value: str) -> dict[tuple[str, str], dict[int, tuple[str, float]]]:
    out: dict[tuple[str, str], dict[int, tuple[str, float]]] = {}
    for row in runs.itertuples(index=False):
        v = getattr(row, value)
        out.setdefault((row.task, row.optimizer), {})[int(row.seed)] = (
            row.status, None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
    return out


def verdict_table(runs: pd.DataFrame, margins: Mapping[str, float], *, baseline: str = BASELINE,
                  value: str = "eval_loss") -> pd.DataFrame:
    """One row per (task, optimizer other than the baseline) with its Comparison's fields.

    ``runs`` needs the columns task, optimizer, seed, status and ``value``, one row per run of the
    configuration being ranked; ``margins`` maps each task to its relative margin.
    """
    cells = _per_seed(runs, value)
    rows = []
    for (task, optimizer), per_seed in sorted(cells.items()):
        if optimizer == baseline:
            continue
        base = cells.get((task, baseline))
        if base is None:
            rows.append(asdict(Comparison(task, optimizer, "inconclusive", 0, reason=f"no {baseline} runs")))
            continue
        rows.append(asdict(compare(task, optimizer, per_seed, base, margins[task])))
    return pd.DataFrame(rows, columns=list(Comparison.__dataclass_fields__))


def seed_rank_agreement(runs: pd.DataFrame, value: str = "eval_loss") -> float:
    """Median Kendall τ between the optimizer rankings of every two seeds (optimizers finished on both)."""
    from scipy.stats import kendalltau

    ok = runs[runs["status"] == "ok"].dropna(subset=[value])
    by_seed = {s: g.set_index("optimizer")[value] for s, g in ok.groupby("seed")}
    taus = []
    for a, b in itertools.combinations(sorted(by_seed), 2):
        shared = by_seed[a].index.intersection(by_seed[b].index)
        if len(shared) >= 3:
            tau = kendalltau(by_seed[a][shared], by_seed[b][shared]).statistic
            if math.isfinite(tau):
                taus.append(tau)
    return statistics.median(taus) if taus else math.nan


def discrimination(verdicts: pd.DataFrame, runs: pd.DataFrame, value: str = "eval_loss") -> pd.DataFrame:
    """Per task: verdict counts, the share resolved, and the seed-rank agreement (median Kendall τ)."""
    rows = []
    for task, group in verdicts.groupby("task", sort=True):
        counts = group["verdict"].value_counts()
        row = {"task": task, "comparisons": len(group), **{v: int(counts.get(v, 0)) for v in VERDICTS}}
        row["resolved_share"] = sum(row[v] for v in RESOLVED) / len(group) if len(group) else math.nan
        row["seed_rank_tau"] = seed_rank_agreement(runs[runs["task"] == task], value)
        rows.append(row)
    return pd.DataFrame(rows)


def resolved_share(verdicts: pd.DataFrame) -> float:
    return float(verdicts["verdict"].isin(RESOLVED).mean()) if len(verdicts) else math.nan


def performance_profile(values: pd.DataFrame, column: str, taus: Sequence[float]) -> pd.DataFrame:
    """Share of tasks on which each optimizer's ``column`` is within a factor τ of the task's best (lowest).

    ``values`` has one row per (task, optimizer); a missing or non-finite value (a diverged optimizer) is
    never within any factor. The best is floored at 1e-12 so that a zero (no state) stays comparable.
    """
    tasks = sorted(values["task"].unique())
    names = sorted(values["optimizer"].unique())
    table = values.pivot(index="optimizer", columns="task", values=column).reindex(index=names, columns=tasks)
    best = table.min(axis=0, skipna=True).clip(lower=1e-12)
    ratio = table / best
    rows = {}
    for name in names:
        r = ratio.loc[name]
        rows[name] = {f"τ={tau:g}": float((r <= tau * (1 + 1e-12)).sum() / len(tasks)) for tau in taus}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("optimizer").reset_index()
