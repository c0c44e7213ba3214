"""Learning-rate tuning: one protocol chooses every optimizer's lr, AdamW's included.

Per (task, optimizer) (DESIGN.md "Protocol"; in the spirit of DeepOBS's and AlgoPerf's
tuning rules, and of successive halving, Jamieson & Talwalkar 2016):

1. Grid: ``points`` log-spaced lrs, ``ratio`` apart, centred on the optimizer's starting lr
   for the task (the lr it runs at before any sweep). Never an earlier sweep's winner: a rerun
   asks for the same grid and reuses its stored runs.
2. Every lr runs on the first tuning seed.
3. Successive halving: the best lr so far and its two neighbours run on every tuning seed.
   The best lr is the lowest mean over the tuning seeds among the lrs that ran on all of them
   (before any has, the lowest on the first seed).
4. A best lr at an end of the grid means the optimum may lie beyond it: the grid grows one
   step past that end (the grid's own ratio there), at most ``max_extensions`` times; a best
   lr still at the end is flagged. When no lr finishes at all, the grid grows downwards.

Steps 3 and 4 repeat until the best lr is interior (or flagged) and it and both neighbours
ran on every tuning seed.

Criterion: the final held-out loss (``metrics.eval_loss``, lower is better), the tasks'
primary metric; a record without one is ranked by its final metric. A diverged or errored
run counts as worst: an lr where any seed failed ranks below every lr that finished. Ties
keep the smaller lr. The tuning seeds (100, 101) are apart from the board's seeds (0-4), so
the lr is not chosen on the very noise the board's verdicts are then computed from.

Sweep runs skip the memory pass and go through the runner's grid, hence the run store: a
sweep is resumable and reuses every finished run. ``optbench.sweep_files`` writes and reads
what a sweep publishes (``results/sweeps/<preset>/``) and checks it against the protocol.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optbench.errors import UsageError

if TYPE_CHECKING:
    from optbench.executors import Executor

# The runner, registry and lr table import torch: they are imported where used, so that the CLI
# can read the protocol's defaults (``Protocol``) without loading torch.

# What a published sweep must meet (checked by optbench.sweep_files.audit).
MIN_POINTS = 6
MAX_RATIO = 2.2
RATIO_ROUNDING = 1.01  # lrs are rounded to 3 digits, which can stretch one step by up to 1%
MIN_SEEDS = 2


@dataclass(frozen=True)
class Protocol:
    """The tuning protocol's settings; the defaults are what ``nox -s publish`` runs."""

    points: int = 7  # initial grid size: the starting lr and 3 steps either side
    ratio: float = 2.0  # factor between neighbouring lrs
    seeds: tuple[int, ...] = (100, 101)  # the first runs every lr; all run the best and its neighbours
    max_extensions: int = 4  # how often the grid may grow past an end

    def __post_init__(self) -> None:
        if self.points < 1:
            raise UsageError(f"--points must be >= 1, got {self.points}")
        if not self.ratio > 1:
            raise UsageError(f"--ratio must be > 1, got {self.ratio}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"--seeds must be distinct integers, got {list(self.seeds)}")
        if self.max_extensions < 0:
            raise UsageError(f"--max-extensions must be >= 0, got {self.max_extensions}")


def round_lr(lr: float) -> float:
    """Three significant digits: grids read cleanly and the same grid gives the same run keys."""
    return float(f"{lr:.3g}")


def log_grid(start: float, points: int, ratio: float) -> list[float]:
    """``points`` lrs ``ratio`` apart around ``start`` (the extra point of an even count goes below)."""
    low = -(points // 2)
    return sorted({round_lr(start * ratio**k) for k in range(low, low + points)})


def starting_lr(task: str, optimizer: str) -> float:
    """The lr a run of this cell gets when no sweep has chosen one (the grid's centre)."""
    from optbench import lrs, registry

    return lrs.starting_lr(registry.get_task(task), registry.get_optimizer(optimizer))[0]


# ---------------------------------------------------------------------------------------------
# Trials and the choice among them (pure: no runs involved)


@dataclass(frozen=True)
class Trial:
    """One sweep run: what the published CSV holds per row."""

    lr: float
    seed: int
    status: str  # ok | diverged | error
    eval_loss: float | None = None
    final_metric: float | None = None
    higher_is_better: bool = False  # of final_metric
    wall_s: float | None = None

    @property
    def value(self) -> float:
        """The criterion, lower is better: held-out loss (else the oriented final metric); inf when failed."""
        if self.status != "ok":
            return math.inf
        if self.eval_loss is not None and math.isfinite(self.eval_loss):
            return float(self.eval_loss)
        if self.final_metric is not None and math.isfinite(self.final_metric):
            return -float(self.final_metric) if self.higher_is_better else float(self.final_metric)
        return math.inf

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Trial:
        metrics = record["metrics"]
        return cls(lr=float(record["hparams"]["lr"]), seed=int(record["seed"]), status=record["status"],
                   eval_loss=metrics.get("eval_loss"), final_metric=metrics.get("final_metric"),
                   higher_is_better=bool(metrics.get("higher_is_better")),
                   wall_s=(record.get("timing") or {}).get("wall_s"))


def values_by_lr(trials: Sequence[Trial]) -> dict[float, dict[int, float]]:
    """{lr: {seed: criterion value}}."""
    out: dict[float, dict[int, float]] = {}
    for t in trials:
        out.setdefault(t.lr, {})[t.seed] = t.value
    return out


def best_lr(trials: Sequence[Trial], seeds: Sequence[int]) -> float | None:
    """The lr the protocol chooses from these trials (step 3 of the module docstring); None if none finished.

    Among lrs that ran on every seed, the lowest mean; if none of those finished, the best first-seed
    value among the lrs not yet run on every seed (the next one successive halving promotes).
    """
    by_lr = values_by_lr(trials)
    full = {lr: statistics.fmean(v[s] for s in seeds) for lr, v in by_lr.items() if all(s in v for s in seeds)}
    pool = {lr: v for lr, v in full.items() if math.isfinite(v)}
    if not pool:
        pool = {lr: v[seeds[0]] for lr, v in by_lr.items()
                if lr not in full and seeds[0] in v and math.isfinite(v[seeds[0]])}
    if not pool:
        return None
    return min(pool, key=lambda lr: (pool[lr], lr))


def neighbourhood(grid: Sequence[float], lr: float) -> list[float]:
    """``lr`` and its neighbours on the sorted grid."""
    i = grid.index(lr)
    return list(grid[max(0, i - 1): i + 2])


def _step_beyond(grid: Sequence[float], upwards: bool, ratio: float) -> float:
    """One more lr past an end of the grid, at the grid's own ratio there."""
    if len(grid) >= 2:
        ratio = grid[-1] / grid[-2] if upwards else grid[1] / grid[0]
    return round_lr(grid[-1] * ratio) if upwards else round_lr(grid[0] / ratio)


@dataclass
class LrSearch:
    """The protocol's state for one (task, optimizer): which runs it still needs, and its choice."""

    grid: list[float]
    protocol: Protocol
    trials: dict[tuple[float, int], Trial] = field(default_factory=dict)
    extensions: int = 0

    def __post_init__(self) -> None:
        if not self.grid or any(not (lr > 0 and math.isfinite(lr)) for lr in self.grid):
            raise UsageError(f"learning rates must be positive numbers, got {self.grid}")
        self.grid = sorted(set(self.grid))

    def add(self, trial: Trial) -> None:
        self.trials[(trial.lr, trial.seed)] = trial

    def _missing(self, lrs: Sequence[float], seeds: Sequence[int]) -> list[tuple[float, int]]:
        return [(lr, s) for lr in lrs for s in seeds if (lr, s) not in self.trials]

    def _grow(self, upwards: bool) -> list[tuple[float, int]]:
        self.extensions += 1
        lr = _step_beyond(self.grid, upwards, self.protocol.ratio)
        self.grid = sorted({*self.grid, lr})
        return [(lr, self.protocol.seeds[0])]

    def wanted(self) -> list[tuple[float, int]]:
        """The (lr, seed) runs needed next; empty when the search is done."""
        seeds = self.protocol.seeds
        missing = self._missing(self.grid, seeds[:1])
        if missing:
            return missing
        can_grow = self.extensions < self.protocol.max_extensions
        best = self.chosen_lr
        if best is None:  # nothing finished: the grid starts too high
            return self._grow(upwards=False) if can_grow else []
        if can_grow and len(self.grid) > 1 and best in (self.grid[0], self.grid[-1]):
            return self._grow(upwards=best == self.grid[-1])
        return self._missing(neighbourhood(self.grid, best), seeds)

    @property
    def chosen_lr(self) -> float | None:
        return best_lr(list(self.trials.values()), self.protocol.seeds)


@dataclass
class SweepResult:
    """What one (task, optimizer) sweep found."""

    optimizer: str
    start_lr: float | None
    seeds: tuple[int, ...]
    trials: list[Trial]
    chosen_lr: float | None

    @property
    def grid(self) -> list[float]:
        return sorted({t.lr for t in self.trials})

    @property
    def at_edge(self) -> bool:
        grid = self.grid
        return self.chosen_lr is not None and len(grid) > 1 and self.chosen_lr in (grid[0], grid[-1])

    def seeds_at(self, lr: float) -> list[int]:
        return sorted(t.seed for t in self.trials if t.lr == lr)


# ---------------------------------------------------------------------------------------------
# Running


def sweep(task: str, optimizers: Sequence[str], *, preset: str, runs_dir: str | Path,
          protocol: Protocol = Protocol(), lrs: Sequence[float] | None = None, device: str | None = None,
          task_options: Mapping[str, Any] | None = None, progress: bool = True, rerun: bool = False,
          log: Callable[[str], None] = print, executor: Executor | None = None) -> dict[str, SweepResult]:
    """Tune every optimizer's lr on ``task`` by the protocol; ``lrs`` replaces the generated grid.

    All optimizers advance together: each round hands every run any search still needs to one
    call of the runner's grid (so ``executor``, default local, can spread them), then feeds the
    records back. ``rerun``: run every cell again rather than reuse a stored record (a candidate
    whose code may have changed under the same name); a record is replaced only by a finished run.
    """
    from optbench import registry
    from optbench.runner import make_cells, run_grid

    registry.check_preset(preset)
    registry.get_task(task).budget(preset)
    starts = {name: starting_lr(task, name) for name in optimizers}
    searches = {name: LrSearch(list(lrs) if lrs else log_grid(starts[name], protocol.points, protocol.ratio),
                               protocol) for name in optimizers}
    options = {task: dict(task_options or {})}
    while True:
        wanted = [(name, lr, seed) for name, search in searches.items() for lr, seed in search.wanted()]
        if not wanted:
            break
        cells = [cell for name, lr, seed in wanted for cell in make_cells([task], [name], [seed], {"lr": lr}, options)]
        outcome = run_grid(cells, preset=preset, runs_dir=runs_dir, device=device, progress=progress,
                           measure_memory_pass=False, log=log, executor=executor, fresh=cells if rerun else ())
        unfinished = sum(record is None for record in outcome.by_cell)
        if unfinished or len(outcome.by_cell) != len(cells):
            raise RuntimeError(f"sweep of {task}: {unfinished or len(cells)} run(s) left no record")
        for (name, lr, seed), record in zip(wanted, outcome.by_cell, strict=True):
            # Keyed by the lr asked for, whatever float the record's hparams round-trip to.
            searches[name].add(replace(Trial.from_record(record), lr=lr, seed=seed))
    return {name: SweepResult(name, starts[name], protocol.seeds,
                              sorted(s.trials.values(), key=lambda t: (t.lr, t.seed)), s.chosen_lr)
            for name, s in searches.items()}


def tune_lr(task: str, optimizer: str, preset: str, *, runs_dir: str | Path, protocol: Protocol = Protocol(),
            device: str | None = None, task_options: Mapping[str, Any] | None = None, progress: bool = True,
            rerun: bool = False, executor: Executor | None = None, log: Callable[[str], None] = print) -> SweepResult:
    """One optimizer's lr on one task by the published protocol (what ``optbench check --tune`` calls)."""
    return sweep(task, [optimizer], preset=preset, runs_dir=runs_dir, protocol=protocol, device=device,
                 task_options=task_options, progress=progress, rerun=rerun, executor=executor, log=log)[optimizer]


def describe_tuning(task: str, result: SweepResult) -> str:
    """One line: what tuning found for an optimizer on a task."""
    grid = result.grid
    at = [t.value for t in result.trials if t.lr == result.chosen_lr]
    found = ("no lr finished" if result.chosen_lr is None else
             f"lr {result.chosen_lr:g}, held-out loss {statistics.fmean(at):.4f} over seeds "
             f"{','.join(map(str, result.seeds_at(result.chosen_lr)))}"
             + (" (at the grid's edge: the optimum may lie beyond)" if result.at_edge else ""))
    start = "" if result.start_lr is None else f" around {result.start_lr:g}"
    return (f"{task}: tuned {result.optimizer}: {found}; {len(grid)} lrs {grid[0]:.3g}..{grid[-1]:.3g}{start}, "
            f"{len(result.trials)} runs")


def update_table(results: Mapping[str, SweepResult], task: str, preset: str, path: Path | None = None) -> None:
    """Write each chosen lr into the tuned-lr table (default ``tasks/tuned_lrs.json``); an optimizer with no
    finished lr loses its entry."""
    from optbench.atomic import update_json
    from optbench.lrs import TUNED_LRS_PATH, forget_cached_table

    def updated(table: dict) -> dict:
        row = table.setdefault(preset, {}).setdefault(task, {})
        for name, result in results.items():
            if result.chosen_lr is not None:
                row[name] = result.chosen_lr
            else:
                row.pop(name, None)
        return table

    # Under a lock and atomically: every run reads this table, and two sweeps may write it at once.
    path = TUNED_LRS_PATH if path is None else path
    update_json(path, updated, {}, "the tuned-lr table {preset: {task: {optimizer: lr}}}")
    forget_cached_table()
