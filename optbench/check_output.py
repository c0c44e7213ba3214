"""How ``optbench check`` prints its verdicts: the rule it applied, one row per task, a summary line.

Formatting only: the verdicts come from ``optbench.gate``, the runs from ``optbench.check``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from optbench.gate import Gates
from optbench.stats import HARD_BOUND_FACTOR, RELATIVE_FLOOR, STD_FACTOR
from optbench.units import format_bytes

if TYPE_CHECKING:
    from optbench.check import CheckReport


def decision_rule(gates: Gates) -> str:
    """The rule a check applies, in words, with its thresholds."""
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


def describe_hardware(env: Mapping[str, Any]) -> str:
    from optbench.env import HARDWARE_FIELDS, hardware_key

    return ", ".join(f"{k} {v}" for k, v in zip(HARDWARE_FIELDS, hardware_key(dict(env))))


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_report(report: CheckReport) -> str:
    """The whole printed report: header, rule, table, per-task notes, summary."""
    from tabulate import tabulate

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
        state = f"{_fmt_ratio(v.state_ratio)} ({format_bytes(v.state_bytes[0], digits=1, missing='n/a')})"
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
        notes += [f"  {v.task}: FLAG: {flag}" for flag in v.flags]
    failed = [v.task for v in report.verdicts if v.verdict != "PASS"]
    summary = ("PASS: no regression on " + ", ".join(v.task for v in report.verdicts) if not failed
               else f"FAIL: {', '.join(failed)} ({len(failed)} of {len(report.verdicts)} task(s))")
    return "\n".join([head, decision_rule(report.gates), "", table, "", *notes, "", summary])


def report_json(report: CheckReport) -> dict:
    """The report as JSON for CI (``--json``): every verdict, the rule, whether the check passed."""
    return asdict(report) | {"passed": report.passed, "rule": decision_rule(report.gates)}
