"""Running a check: the candidate's and the baseline's cells through the runner and the run store.

``optbench check --candidate NAME`` trains the candidate and the baseline (``adamw`` unless told
otherwise) on the same tasks, preset and seeds, then judges every task by the gate's rule
(``optbench.gate``; statistics in ``optbench.stats``; printing in ``optbench.check_output``).

Stored runs (``optbench.store``): a baseline record is reused only when its run key matches
(task, optimizer, resolved hparams, input files, seed, preset, device, task options) *and* it
was measured on this machine's hardware (``optbench.env.hardware_key``); otherwise the run is
done again here and, once it has finished, the old record is kept beside it as
``*.json.otherenv`` (``on_mismatch="rerun"``), or the check stops before running anything
(``on_mismatch="refuse"``, a usage error naming the records). Stored error records are rerun.
The candidate's runs are always redone unless ``reuse_candidate`` (its code, a plugin under
development, may have changed while its name did not); its stored record is replaced only when
the new run has finished, so a Ctrl-C never loses a record. Baseline and candidate runs
alternate seed by seed, so that load on the machine spreads over both sides of the step-time
ratio; a candidate identical to the baseline runs once.

The candidate's learning rate: its own (explicit ``lr`` > sweep table > task > spec), or one
per task chosen by the caller (``candidate_lrs``: the baseline's with ``--lr-from-baseline``,
or a tuned one: ``tune=Protocol()`` tunes it on each task by the same protocol the baseline's
published lr came from, ``optbench.sweep``, on the tuning seeds, before the check's runs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from optbench import registry
from optbench.env import default_device, environment
from optbench.errors import UsageError
from optbench.gate import Gates, TaskVerdict, judge_task
from optbench.lrs import resolve_lr
from optbench.runner import Cell, GridPlan, execute_grid, make_cells, plan_grid
from optbench.store import ENV_POLICIES, ReusePolicy

if TYPE_CHECKING:
    from optbench.executors import Executor
    from optbench.sweep import Protocol

MISMATCH_POLICIES = ENV_POLICIES


@dataclass(frozen=True)
class CandidateLr:
    """A learning rate the check chose for the candidate on one task, and how to say where it came from."""

    lr: float
    source: str  # e.g. "the baseline's: --lr-from-baseline"


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


def baseline_lr(task: str, baseline: str, preset: str, baseline_hparams: Mapping[str, Any] | None = None) -> float:
    """The learning rate the baseline runs at on ``task`` (explicit, sweep table, task or optimizer default)."""
    explicit = (baseline_hparams or {}).get("lr")
    return resolve_lr(registry.get_task(task), registry.get_optimizer(baseline), preset, explicit)[0]


def lrs_from_baseline(tasks: Sequence[str], baseline: str, preset: str,
                      baseline_hparams: Mapping[str, Any] | None = None) -> dict[str, CandidateLr]:
    """The baseline's learning rate on each task, for a candidate that is a variant of the baseline."""
    return {task: CandidateLr(baseline_lr(task, baseline, preset, baseline_hparams),
                              "the baseline's: --lr-from-baseline") for task in tasks}


def tuned_lrs(candidate: str, tasks: Sequence[str], preset: str, protocol: Protocol, *, runs_dir: str | Path,
              device: str, task_options: Mapping[str, Mapping[str, Any]] | None, rerun: bool, progress: bool,
              executor: Executor | None, log: Callable[[str], None]) -> dict[str, CandidateLr]:
    """The candidate's lr per task by the tuning protocol (``optbench.sweep``); runs go to ``<runs_dir>/tune``.

    A task where no lr finished is left out (the candidate then runs at its own lr there, and fails
    if it diverges); a chosen lr at the grid's edge is used and says so.
    """
    from optbench.sweep import describe_tuning, tune_lr

    chosen = {}
    for task in tasks:
        result = tune_lr(task, candidate, preset, runs_dir=Path(runs_dir) / "tune", protocol=protocol,
                         device=device, task_options=(task_options or {}).get(task), progress=progress,
                         rerun=rerun, executor=executor, log=log)
        log(f"  {describe_tuning(task, result)}")
        if result.chosen_lr is not None:
            edge = ", at the grid's edge" if result.at_edge else ""
            chosen[task] = CandidateLr(result.chosen_lr, f"tuned by the sweep protocol: --tune{edge}")
    return chosen


def _check_inputs(candidate: str, baseline: str, tasks: Sequence[str], seeds: Sequence[int], preset: str,
                  device: str) -> None:
    """Usage errors a check can name before planning anything."""
    registry.check_preset(preset)
    if not tasks:
        raise UsageError("no tasks to check; give --tasks NAME,.. or 'all'")
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds must be distinct integers, got {list(seeds)}")
    kind = torch.device(device).type
    for name in (candidate, baseline):
        reason = registry.get_optimizer(name).unavailable_reason(kind)
        if reason:
            raise UsageError(f"optimizer {name!r} cannot run on {device}: {reason}")
    for name in tasks:
        reason = registry.get_task(name).requires.unmet(kind)
        if reason:
            raise UsageError(f"task {name!r} cannot run on {device}: {reason}")


def _plan_log(plan: GridPlan, roles: Sequence[str]) -> list[str]:
    """One line per stored run that matters: reused, replaced, or rerun and why (a shared cell once)."""
    roles_of: dict[str, list[str]] = {}
    for decision, role in zip(plan.decisions, roles):
        roles_of.setdefault(decision.key.digest(), []).append(role)
    lines = []
    for cell, decision in zip(plan.cells, plan.decisions):
        who = roles_of.pop(decision.key.digest(), None)
        if who is None or (decision.action == "run" and decision.reason == "not stored yet"):
            continue
        reason = decision.reason
        if decision.action == "reuse":
            reason += " (same run key and hardware)"
        elif "candidate" in who and decision.reason.startswith("stored run is replaced"):
            reason += " (the candidate is always rerun unless --reuse-candidate)"
        lines.append(f"{' and '.join(who)} {cell.label}: {reason}")
    return lines


def run_check(candidate: str, *, baseline: str = "adamw", tasks: Sequence[str], seeds: Sequence[int],
              preset: str = "cpu", runs_dir: str | Path, device: str | None = None,
              candidate_hparams: Mapping[str, Any] | None = None, baseline_hparams: Mapping[str, Any] | None = None,
              task_options: Mapping[str, Mapping[str, Any]] | None = None, gates: Gates | None = None,
              reuse_candidate: bool = False, on_mismatch: str = "rerun", lr_from_baseline: bool = False,
              candidate_lrs: Mapping[str, CandidateLr] | None = None, measure_memory_pass: bool = True,
              progress: bool = True, executor: Executor | None = None, tune: Protocol | None = None,
              log: Callable[[str], None] = print) -> CheckReport:
    """Run (or reuse) both optimizers' cells and judge every task. Bad input raises a usage error before any run.

    The candidate runs at its own learning rate, unless ``candidate_lrs`` gives one per task
    (``lr_from_baseline`` fills it with the baseline's); an explicit ``lr`` among
    ``candidate_hparams`` wins over both. ``tune``: the candidate's lr per task is tuned first by
    this protocol (``tuned_lrs``; the CLI passes the published one, ``Protocol()``), and the
    baseline's lr should come from the published sweep (a line says when it does not).
    """
    tasks, seeds, gates = list(tasks), list(seeds), gates or Gates()
    device = device or default_device(preset)
    _check_inputs(candidate, baseline, tasks, seeds, preset, device)
    candidate_hparams, baseline_hparams = dict(candidate_hparams or {}), dict(baseline_hparams or {})
    if tune is not None and ("lr" in candidate_hparams or lr_from_baseline or candidate_lrs is not None):
        raise UsageError("--tune chooses the candidate's lr: drop --lr-from-baseline and --hparam lr=...")
    if tune is not None:
        for task in tasks:
            lr, source = resolve_lr(registry.get_task(task), registry.get_optimizer(baseline), preset,
                                    baseline_hparams.get("lr"))
            if source != "sweep":
                log(f"  {task}: the baseline's lr {lr:g} comes from '{source}', not a published sweep of preset "
                    f"{preset}: the candidate is tuned, the baseline is not")
        candidate_lrs = tuned_lrs(candidate, tasks, preset, tune, runs_dir=runs_dir, device=device,
                                  task_options=task_options, rerun=not reuse_candidate, progress=progress,
                                  executor=executor, log=log)
    if "lr" in candidate_hparams:
        candidate_lrs = {}
    elif candidate_lrs is None and lr_from_baseline:
        candidate_lrs = lrs_from_baseline(tasks, baseline, preset, baseline_hparams)
    candidate_lrs = dict(candidate_lrs or {})
    base_cells = make_cells(tasks, [baseline], seeds, baseline_hparams, task_options)
    cand_cells: list[Cell] = []
    for task in tasks:
        hparams = {**candidate_hparams, **({"lr": candidate_lrs[task].lr} if task in candidate_lrs else {})}
        cand_cells += make_cells([task], [candidate], seeds, hparams, task_options)
    # Baseline and candidate alternate seed by seed, so that a machine getting busier or quieter
    # during the check does not land on one side of the step-time ratio.
    order = [cell for pair in zip(base_cells, cand_cells) for cell in pair]
    roles = ["baseline", "candidate"] * len(base_cells)
    policy = ReusePolicy(errors=False, hardware=environment(device), other_hardware=on_mismatch)
    plan = plan_grid(order, preset=preset, runs_dir=runs_dir, device=device, reuse=policy,
                     fresh=[] if reuse_candidate else cand_cells,
                     device_here=executor is None or executor.name == "local", log=log)
    store_log = _plan_log(plan, roles)
    for line in store_log:
        log(f"  {line}")
    outcome = execute_grid(plan, executor=executor, progress=progress, measure_memory_pass=measure_memory_pass)
    base_records, cand_records = outcome.by_cell[0::2], outcome.by_cell[1::2]
    verdicts = []
    for task in tasks:
        mine = [i for i, cell in enumerate(base_cells) if cell.task == task]
        chosen = candidate_lrs.get(task)
        verdicts.append(judge_task(task, [cand_records[i] for i in mine], [base_records[i] for i in mine], gates,
                                   candidate_lr=f"{chosen.lr:g} ({chosen.source})" if chosen else None))
    return CheckReport(candidate, baseline, preset, seeds, device, str(runs_dir), gates, environment(device),
                       verdicts, store_log, candidate_hparams, baseline_hparams,
                       ran=outcome.ran, reused=outcome.reused)
