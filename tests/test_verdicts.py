"""The board's verdict rule on constructed paired differences, one case per outcome."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from optbench.verdicts import (
    compare,
    decide,
    discrimination,
    paired_interval,
    performance_profile,
    resolved_share,
    verdict_table,
)

BASE = {s: ("ok", 2.0 + 0.05 * s) for s in range(5)}  # AdamW losses 2.00 .. 2.20, mean 2.10
MARGIN = 0.01  # δ = 0.021 nats


def shifted(offsets):
    return {s: ("ok", BASE[s][1] + off) for s, off in zip(range(5), offsets)}


def test_better_when_the_interval_lies_below_zero_and_outside_the_margin():
    c = compare("t", "x", shifted([-0.10, -0.12, -0.09, -0.11, -0.10]), BASE, MARGIN)
    assert c.verdict == "better" and c.ci_high < 0 and c.ci_low < -c.margin


def test_equivalent_when_the_interval_lies_inside_the_margin():
    c = compare("t", "x", shifted([0.004, -0.003, 0.002, 0.0, -0.001]), BASE, MARGIN)
    assert c.verdict == "equivalent" and -c.margin < c.ci_low and c.ci_high < c.margin


def test_worse_when_the_interval_lies_above_zero_and_outside_the_margin():
    c = compare("t", "x", shifted([0.08, 0.1, 0.09, 0.07, 0.11]), BASE, MARGIN)
    assert c.verdict == "worse" and c.ci_low > 0


def test_inconclusive_when_the_interval_straddles_zero_and_the_margin():
    c = compare("t", "x", shifted([0.2, -0.2, 0.15, -0.1, 0.05]), BASE, MARGIN)
    assert c.verdict == "inconclusive" and c.ci_low < 0 < c.ci_high


def test_significant_but_within_margin_is_equivalent():
    # Every seed 0.5% worse: significant, yet inside a 1% margin: the practical answer is "equivalent".
    c = compare("t", "x", shifted([0.0105, 0.0106, 0.0104, 0.0105, 0.0105]), BASE, MARGIN)
    assert c.ci_low > 0 and c.verdict == "equivalent"


def test_divergence_is_worse_and_errors_are_inconclusive():
    diverged = {**shifted([0.0] * 5), 3: ("diverged", None)}
    assert compare("t", "x", diverged, BASE, MARGIN).verdict == "worse"
    errored = {**shifted([0.0] * 5), 1: ("error", None)}
    c = compare("t", "x", errored, BASE, MARGIN)
    assert c.verdict == "inconclusive" and "errored" in c.reason
    one_seed = {0: ("ok", 2.0)}
    assert compare("t", "x", one_seed, BASE, MARGIN).verdict == "inconclusive"


def test_interval_matches_a_t_interval():
    mean, low, high = paired_interval([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.3027; sd = 1; half = 4.3027 / sqrt(3)
    assert mean == 2.0 and high - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert decide(-0.5, 0.5, 1.0) == "equivalent" and decide(-2, -0.1, 1.0) == "better"
    assert decide(0.1, 2, 1.0) == "worse" and decide(-2, 2, 1.0) == "inconclusive"
    with pytest.raises(ValueError):
        paired_interval([1.0])


def _runs(losses: dict[str, list[float]], task="t") -> pd.DataFrame:
    return pd.DataFrame([{"task": task, "optimizer": o, "seed": s, "status": "ok", "eval_loss": v}
                         for o, vs in losses.items() for s, v in enumerate(vs)])


def test_table_discrimination_and_profiles():
    runs = _runs({"adamw": [2.0, 2.1, 2.2, 2.1, 2.0], "good": [1.8, 1.9, 2.0, 1.9, 1.8],
                  "same": [2.0, 2.1, 2.2, 2.1, 2.0], "noisy": [1.5, 2.6, 1.7, 2.5, 2.0]})
    table = verdict_table(runs, {"t": MARGIN})
    verdicts = dict(zip(table["optimizer"], table["verdict"]))
    assert verdicts == {"good": "better", "same": "equivalent", "noisy": "inconclusive"}
    assert resolved_share(table) == pytest.approx(2 / 3)
    disc = discrimination(table, runs)
    assert disc.loc[0, "resolved_share"] == pytest.approx(2 / 3) and -1 <= disc.loc[0, "seed_rank_tau"] <= 1

    values = pd.DataFrame({"task": ["a", "a", "b", "b"], "optimizer": ["x", "y", "x", "y"],
                           "loss": [1.0, 1.015, 2.0, 1.0]})
    profile = performance_profile(values, "loss", (1.0, 1.02, 2.0)).set_index("optimizer")
    assert profile.loc["x", "τ=1"] == 0.5 and profile.loc["y", "τ=1"] == 0.5
    assert profile.loc["y", "τ=1.02"] == 1.0 and profile.loc["x", "τ=2"] == 1.0
