"""LEADERBOARD.md: the board (``optbench.board``) written as GitHub markdown.

It computes nothing: the figures come from ``optbench.tables``, which the site renders too.
Memory figures always say their kind: *state* is the exact optimizer-state byte count
(``optbench.state``); *peak* is the tracked peak of the runner's memory pass, whose
``method`` string is quoted in a footnote.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from optbench.board import BASELINE, Board, _number, environments
from optbench.tables import NOT_COMPARABLE, fmt, fmt_metric, overall_table, peak_methods, task_table, texts


@dataclass
class ReportContext:
    preset: str
    runs_dir: Path
    produced_by: str | None  # the command that made the runs
    report_command: str  # the command that made this report
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


def md_cell(text: object) -> str:
    """Text safe inside a GitHub markdown table cell."""
    return str(text).replace("\r", " ").replace("\n", " ").replace("|", "\\|")


def _table(rows: list[dict]) -> str:
    return tabulate(rows, headers="keys", tablefmt="github", disable_numparse=True)


def header_facts(runs: pd.DataFrame, ctx: ReportContext) -> list[str]:
    """The header's bullet points (markdown inline code marks commands); the site shows the same list."""
    envs = environments(runs)
    first = envs.iloc[0]
    commits = runs["env_git_commit"].fillna("unknown").value_counts()
    versions = ", ".join(sorted(set(runs["env_optbench"].astype(str))))
    return [
        f"Date: {ctx.date}",
        f"Hardware: {first['env_device_name']} ({first['env_device']}); CPU {first['env_cpu']}; "
        f"{first['env_threads']} torch threads",
        f"torch {first['env_torch']}; optbench {versions}; git commit(s): "
        + ", ".join(f"`{c}` ({n} runs)" for c, n in commits.items()),
        f"Preset: `{ctx.preset}`; seeds: {', '.join(str(s) for s in sorted(runs['seed'].unique()))}",
        f"Runs made by: `{ctx.produced_by}`" if ctx.produced_by
        else "Runs made by: not recorded (pass `--command` to `optbench report`)",
        f"This page made by: `{ctx.report_command}` from {len(runs)} run records in `{ctx.runs_dir}`",
        "Optimizers are compared at tuned learning rates (the `optbench sweep` table, `tasks/tuned_lrs.json`); "
        "a row whose learning rate did not come from the sweep says where it came from in the `lr` column.",
        "Memory: **state** = exact optimizer-state bytes (numel × element size of every tensor the optimizer "
        "holds, `optbench.state`); **peak** = tracked peak of the runner's separate memory pass (method in each "
        "task's footnote). Quality: mean ± sample std over seeds, ok runs only. Times: median step "
        "(forward+backward+step, warm-up excluded), median over seeds.",
    ]


def _header(runs: pd.DataFrame, ctx: ReportContext) -> list[str]:
    envs = environments(runs)
    lines = [f"# optbench leaderboard: preset `{ctx.preset}`", ""] + [f"- {fact}" for fact in header_facts(runs, ctx)]
    if len(envs) > 1:
        lines += ["", f"> **Mixed environments:** the `{ctx.preset}` runs here come from {len(envs)} different "
                      "hardware/torch setups; step times and peaks are not comparable across them.", ""]
        lines.append(_table([{"device": e["env_device"], "device name": e["env_device_name"], "cpu": e["env_cpu"],
                              "threads": e["env_threads"], "torch": e["env_torch"], "runs": e["runs"],
                              "tasks": e["tasks"]} for _, e in envs.iterrows()]))
    return lines


def task_facts(task: str, rows: pd.DataFrame, task_runs: pd.DataFrame) -> list[str]:
    """What a task section says above its table: metric, budget, target, run notes, a missing baseline."""
    first = rows.iloc[0]
    direction = "higher is better" if first["higher_is_better"] else "lower is better"
    steps = ", ".join(str(s) for s in sorted(task_runs["steps"].unique()))
    batch = ", ".join(str(b) for b in sorted(task_runs["batch_size"].unique()))
    target = "; no target set"
    if math.isfinite(first["target"]):
        sign = "≥" if first["higher_is_better"] else "≤"
        target = f"; steps-to-target: first eval with {first['metric_name']} {sign} {first['target']:g}"
    facts = [f"Metric: {first['metric_name']} ({direction}); budget {steps} steps × batch {batch}{target}."]
    notes = sorted(set(n for n in task_runs["notes"] if n))
    if notes:
        facts.append(f"Notes from the runs: {'; '.join(notes)}")
    if BASELINE not in set(rows["optimizer"]):
        facts.append(f"No `{BASELINE}` runs for this task: ratios to AdamW are not available.")
    return facts


def table_notes(rows: pd.DataFrame) -> list[str]:
    """Lines below a task's table: optimizer notes from the registry, and what "n/c" means when it appears."""
    lines = []
    if "board_note" in rows.columns:
        notes = rows[rows["board_note"].fillna("") != ""]
        lines += [f"Note on `{r['optimizer']}`: {md_cell(r['board_note'])}" for _, r in notes.iterrows()]
    saves_nothing = no_saving_here(rows)
    if saves_nothing:
        names = ", ".join(f"`{name}`" for name in saves_nothing)
        lines.append(f"Saves no state here: {names} hold as much optimizer state as AdamW on this task (no tensor "
                     "fits the method's rule, e.g. low-rank and orthogonalized updates apply to 2-D hidden matrices "
                     "only), so they run their fallback update on every tensor, and their verdicts compare that "
                     "fallback's implementation with AdamW's, not the method.")
    if any(row["step × AdamW"].text == NOT_COMPARABLE for row in task_table(rows)):
        lines.append(f"{NOT_COMPARABLE}: step time measured on other hardware or with another number of concurrent "
                     "runs than AdamW's on this task, so no ratio is given.")
    return lines


def no_saving_here(rows: pd.DataFrame) -> list[str]:
    """Memory-saving optimizers (any family but plain Adam's and SGD's) whose state on this task is AdamW's or more."""
    if "state_pct_of_adamw" not in rows.columns or "family" not in rows.columns:
        return []
    plain = {"adam", "sgd"}
    hit = rows[(rows["state_pct_of_adamw"] >= 99.5) & ~rows["family"].fillna("").isin(plain)]
    return sorted(hit["optimizer"])


def _task_section(task: str, rows: pd.DataFrame, task_runs: pd.DataFrame, plots: dict[str, Path] | None) -> list[str]:
    methods = peak_methods(rows)
    lines = ["", f"## {task}", ""]
    for fact in task_facts(task, rows, task_runs):
        lines += [fact, ""]
    lines.append(_table(texts(task_table(rows))))
    lines.append("")
    lines += [f"{label} peak method: {md_cell(method)}" + "  " for method, label in methods.items()]
    lines += [line + "  " for line in table_notes(rows)]
    if plots:
        links = ", ".join(f"[{title}]({path.as_posix()})" for title, path in plots.items())
        lines += ["", f"Plots: {links}"]
    return lines


OVERALL_TEXT = ("Ratios are per task to AdamW on the same task, then the geometric mean over the tasks where both "
                "exist (0 when an optimizer keeps no state on some task). Rank is by mean final metric within a task "
                "(1 = best, ties share; an optimizer with no ok run ranks last); wins count rank-1 places.")


def _overall_section(summary: pd.DataFrame) -> list[str]:
    return ["", "## Overall", "", OVERALL_TEXT, "", _table(texts(overall_table(summary)))]


def _verdicts_section(board: Board) -> list[str]:
    """The verdict rule, how well each task discriminated, and the performance profiles."""
    from optbench.verdicts import RULE, resolved_share

    disc = board.discrimination
    if disc is None or disc.empty:
        return []
    cells = board.cells.dropna(subset=["verdict"])
    total = resolved_share(cells)
    rows = [{"task": r["task"], "comparisons": r["comparisons"],
             **{v: r[v] for v in ("better", "equivalent", "worse", "inconclusive")},
             "resolved": f"{100 * r['resolved_share']:.0f}%",
             "seed-rank τ (median)": fmt(r["seed_rank_tau"], ".2f")} for _, r in disc.iterrows()]
    lines = ["", "## Verdicts against AdamW", "", f"Rule: {RULE}", "",
             f"Resolved (better, equivalent or worse): **{100 * total:.0f}%** of {len(cells)} comparisons. "
             "Per task, how well it discriminated: the share of resolved verdicts, and the median Kendall τ "
             "between the optimizer rankings that two seeds give (1 = every seed ranks alike).", "", _table(rows)]
    for measure, profile in (board.profiles or {}).items():
        lines += ["", f"Performance profile, {measure}: the share of tasks on which each optimizer is within a "
                  "factor τ of the best optimizer on that task (Dolan & Moré 2002; AlgoPerf).", "",
                  _table([{k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in r.items()}
                          for r in profile.to_dict("records")])]
    return lines


def _failed_section(runs: pd.DataFrame, corrupt: Sequence[tuple[Path, str]]) -> list[str]:
    failed = runs[runs["status"] != "ok"]
    lines = ["", "## Failed runs", ""]
    if failed.empty:
        lines.append("None: every run finished with status ok.")
    else:
        lines.append(_table([{
            "task": r["task"], "optimizer": r["optimizer"], "seed": r["seed"], "status": r["status"],
            "error": md_cell(r["error"] if isinstance(r["error"], str) and r["error"]
                             else f"diverged at step {fmt(_number(r['diverged_at_step']), '.0f')}"),
            "file": md_cell(Path(r["file"]).name),
        } for _, r in failed.iterrows()]))
    lines += ["", "## Corrupt run files (skipped)", ""]
    if not corrupt:
        lines.append("None.")
    else:
        lines.append(_table([{"file": md_cell(p), "problem": md_cell(msg)} for p, msg in corrupt]))
    return lines


def _others_section(others: pd.DataFrame) -> list[str]:
    if others.empty:
        return []
    rows = [{"task": r["task"], "optimizer": r["optimizer"], "hparams": md_cell(r["hparams"]),
             "lr source": r["lr_source"], "runs": r["n_runs"],
             "final metric": fmt_metric(r["metric_mean"], r["metric_std"], r["metric_n"])}
            for _, r in others.iterrows()]
    return ["", "## Other configurations in the runs dir (not ranked)", "",
            "Each (task, optimizer) above ranks one configuration: learning rate from the sweep, else the task's "
            "default, else the optimizer's, else an explicit one. These runs were found too:", "", _table(rows)]


def render_markdown(board: Board, corrupt: Sequence[tuple[Path, str]], ctx: ReportContext,
                    plots: dict[str, dict[str, Path]] | None = None) -> str:
    lines = _header(board.runs, ctx)
    for task in board.tasks:
        lines += _task_section(task, board.task_cells(task), board.task_runs(task), (plots or {}).get(task))
    lines += _verdicts_section(board)
    lines += _overall_section(board.summary)
    lines += _others_section(board.others)
    lines += _failed_section(board.runs, corrupt)
    return "\n".join(lines) + "\n"
