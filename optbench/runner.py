"""One run = (task, optimizer, hparams, seed, preset): train to a fixed budget and measure it.

A run has two passes. The timed pass trains the whole budget with nothing but clocks around
the step (forward+backward and ``optimizer.step()`` timed apart, warm-up excluded, CUDA
synchronised). The memory pass rebuilds the same model and optimizer and tracks a couple of
steps tensor by tensor (``optbench.memory``). The runner never asks which optimizer or task
it holds: everything that differs is declared in their specs.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from optbench import registry
from optbench.env import REPO_ROOT, check_device, default_device, environment
from optbench.hparams import check_hparams
from optbench.loop import StepWatch, TrainingStep
from optbench.lrs import resolve_lr
from optbench.records import (
    SCHEMA,
    BudgetInfo,
    Curve,
    Env,
    Memory,
    Metrics,
    RunKey,
    RunRecord,
    Timing,
    canonical,
    file_digest,
)
from optbench.spec import Budget, OptimizerSpec, TaskInstance, TaskSpec
from optbench.state import optimizer_state_bytes
from optbench.state_check import StateBytesCheck, check_state_formula
from optbench.store import Decision, ReusePolicy, RunStore

if TYPE_CHECKING:
    from optbench.executors import Executor

MEMORY_PASS_STEPS = 2
UNAVAILABLE = "unavailable: "  # how the error of a cell that cannot run here begins


class Diverged(Exception):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"non-finite loss {loss} at step {step}")
        self.step = step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


@dataclass
class TrainResult:
    train_curve: list[list[float]] = field(default_factory=list)
    eval_curve: list[list[float]] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    opt_step_s: list[float] = field(default_factory=list)
    final_train_loss: float | None = None
    final_eval: Any = None
    diverged_at_step: int | None = None
    wall_s: float = 0.0


class _Clock(StepWatch):
    """The timed pass's clocks inside a step: when the gradients are ready and when step() returned."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.grads_ready_at = self.stepped_at = 0.0

    def grads_ready(self) -> None:
        _sync(self.device)
        self.grads_ready_at = time.perf_counter()

    def stepped(self) -> None:
        _sync(self.device)
        self.stepped_at = time.perf_counter()


def train(instance: TaskInstance, optimizer: torch.optim.Optimizer, budget: Budget,
          device: torch.device) -> TrainResult:
    """The timed pass: ``budget.steps`` steps, evaluations on the schedule, clocks around each step."""
    model, result = instance.model, TrainResult()
    train_step, clock = TrainingStep.for_task(instance, budget), _Clock(device)
    model.train()
    start = time.perf_counter()
    for step in range(1, budget.steps + 1):
        # A step is the whole training iteration (batch, forward, backward, step, zero_grad), so
        # samples/s is end-to-end throughput; the optimizer's step() is also timed on its own.
        _sync(device)
        t0 = time.perf_counter()
        loss = train_step(model, optimizer, next(instance.batches), step, clock)
        t3 = time.perf_counter()
        if step > budget.warmup_steps:
            result.step_s.append(t3 - t0)
            result.opt_step_s.append(clock.stepped_at - clock.grads_ready_at)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            result.diverged_at_step = step
            break
        result.final_train_loss = loss_value
        if step == 1 or step % budget.log_every == 0 or step == budget.steps:
            result.train_curve.append([step, loss_value])
        if step % budget.eval_every == 0 or step == budget.steps:
            evaluation = instance.evaluate(model)
            model.train()
            result.eval_curve.append([step, evaluation.metric])
            result.final_eval = evaluation
            if not math.isfinite(evaluation.metric):
                result.diverged_at_step = step
                break
    result.wall_s = time.perf_counter() - start
    return result


def steps_to_target(eval_curve: Sequence[Sequence[float]], target: float | None, higher_is_better: bool) -> int | None:
    if target is None:
        return None
    for step, value in eval_curve:
        if (value >= target) if higher_is_better else (value <= target):
            return int(step)
    return None


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def measure_memory(task: TaskSpec, spec: OptimizerSpec, preset: str, seed: int, device: torch.device,
                   lr: float, hparams: Mapping[str, Any], task_options: Mapping[str, Any]) -> dict:
    """The memory pass: same model and optimizer, rebuilt, a few steps under tensor-level tracking."""
    from optbench.memory import measure_training_memory, to_record

    seed_everything(seed)
    instance = task.instantiate(preset, seed, device, **task_options)
    optimizer = spec.build(instance.model, lr, **hparams)
    report = measure_training_memory(instance.model, optimizer, instance.batches,
                                     TrainingStep.for_task(instance, task.budget(preset)), steps=MEMORY_PASS_STEPS)
    return to_record(report)


@dataclass(frozen=True)
class ResolvedRun:
    """A cell with everything resolved that defines it: the run key is a function of this alone."""

    task: TaskSpec
    optimizer: OptimizerSpec
    preset: str
    seed: int
    device: str  # "cpu", "cuda" or "cuda:N"
    lr: float
    lr_source: str  # explicit, sweep, task or optimizer (optbench.lrs)
    hparams: dict[str, Any]  # every declared hyperparameter, lr apart
    task_options: dict[str, Any]
    inputs: dict[str, str]  # each file the run reads -> digest of its contents

    @property
    def key(self) -> RunKey:
        return RunKey(self.task.name, self.optimizer.name, {"lr": self.lr, **self.hparams}, self.seed, self.preset,
                      torch.device(self.device).type, self.task_options, self.inputs)


def resolve_run(task: str, optimizer: str, *, hparams: Mapping[str, Any] | None = None, seed: int = 0,
                preset: str = "cpu", device: str | None = None,
                task_options: Mapping[str, Any] | None = None) -> ResolvedRun:
    """Resolve a cell; a bad name or value (task, optimizer, preset, device, hyperparameter) raises a
    ValueError (``UsageError``) naming it, before anything runs."""
    registry.check_preset(preset)
    task_spec, opt_spec = registry.get_task(task), registry.get_optimizer(optimizer)
    task_spec.budget(preset)
    hparams = dict(hparams or {})
    check_hparams(optimizer, opt_spec.defaults, hparams)
    lr, lr_source = resolve_lr(task_spec, opt_spec, preset, hparams.pop("lr", None))
    resolved = opt_spec.resolve_hparams(hparams)
    device = check_device(device or default_device(preset), here=False)
    options = {k: v for k, v in (task_options or {}).items() if v is not None}
    return ResolvedRun(task_spec, opt_spec, preset, seed, device, lr, lr_source, resolved, options,
                       input_digests(task_spec, opt_spec, preset, resolved, options))


def input_digests(task: TaskSpec, optimizer: OptimizerSpec, preset: str, hparams: Mapping[str, Any],
                  task_options: Mapping[str, Any]) -> dict[str, str]:
    """The files a run reads, as its specs declare them (``input_files``), each with its contents' digest."""
    paths = [*(optimizer.input_files(task.name, hparams) if optimizer.input_files else ()),
             *(task.input_files(preset, task_options) if task.input_files else ())]
    return {_shown_path(Path(p)): file_digest(p) for p in paths}


def _shown_path(path: Path) -> str:
    """A path as records show it: relative to the checkout when inside it, so records do not name a machine."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


@dataclass
class _Trained:
    """What the timed pass leaves for the record."""

    result: TrainResult
    notes: list[str]
    samples_per_step: int
    tokens_per_step: int | None
    optimizer_class: str
    state_bytes: int
    state_check: StateBytesCheck  # the spec's state formula against state_bytes
    optimizer_impl: str | None = None  # which step ran, if the optimizer says (optbench_impl: native, compiled, eager)
    n_params: int = 0  # trainable parameters: what the bandwidth bound is per


def run_one(task: str, optimizer: str, *, hparams: Mapping[str, Any] | None = None, seed: int = 0,
            preset: str = "cpu", device: str | None = None, task_options: Mapping[str, Any] | None = None,
            measure_memory_pass: bool = True, not_run: str | None = None) -> dict:
    """Train one cell and return its run record as JSON (status ok, diverged or error; never raises on a failed run).

    ``hparams`` may hold ``lr``; other keys must be the optimizer's declared hyperparameters.
    Bad names and values (task, optimizer, preset, device, hyperparameter) raise ValueError
    before anything runs. ``not_run``: train nothing and return the cell's record as an error
    with this reason (an executor whose worker died builds the cell's record so).
    """
    run = resolve_run(task, optimizer, hparams=hparams, seed=seed, preset=preset, device=device,
                      task_options=task_options)
    started = time.perf_counter()
    if not_run is not None:
        return _record(run, started, error=not_run)
    reason = run.optimizer.unavailable_for(run.task.name, run.device) or run.task.requires.unmet(run.device)
    if reason:
        return _record(run, started, error=f"{UNAVAILABLE}{reason}")
    try:
        trained = _train_cell(run)
    except Exception as exc:  # noqa: BLE001 - a failing optimizer or task is a result, not a crash
        return _record(run, started, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
    memory, notes, bandwidth = Memory.not_measured(), [], None
    if measure_memory_pass and trained.result.diverged_at_step is None:
        memory, notes = _memory_pass(run)
        bandwidth = machine_bandwidth(run.device)
    memory.optimizer_state_bytes = trained.state_bytes
    memory.extra.update(trained.state_check.memory_fields())
    notes = [*notes, *([trained.state_check.note] if trained.state_check.note else [])]
    return _record(run, started, trained=trained, memory=memory, notes=notes, bandwidth=bandwidth)


@functools.cache
def machine_bandwidth(device: str) -> float | None:
    """Bytes/s of ``a.add_(b)`` on this device, measured once per process (optbench.bandwidth).

    Only the runs that take the memory pass (the board's, not the sweeps') measure it: it
    puts each optimizer step against its own bandwidth bound (``timing.step_bound_ratio``)."""
    from optbench.bandwidth import measure_bandwidth

    try:
        return measure_bandwidth(device)
    except Exception:  # noqa: BLE001 - no room for two 256 MiB tensors: no bound, the run stands
        return None


def _train_cell(run: ResolvedRun) -> _Trained:
    device = torch.device(run.device)
    seed_everything(run.seed)
    instance = run.task.instantiate(run.preset, run.seed, device, **run.task_options)
    optimizer = run.optimizer.build(instance.model, run.lr, **run.hparams)
    result = train(instance, optimizer, run.task.budget(run.preset), device)
    state_bytes = optimizer_state_bytes(optimizer)
    return _Trained(result, list(instance.notes), instance.samples_per_step, instance.tokens_per_step,
                    f"{type(optimizer).__module__}.{type(optimizer).__qualname__}", state_bytes,
                    check_state_formula(run.optimizer, instance.model, run.hparams, state_bytes),
                    getattr(optimizer, "optbench_impl", None),
                    sum(p.numel() for p in instance.model.parameters() if p.requires_grad))


def _memory_pass(run: ResolvedRun) -> tuple[Memory, list[str]]:
    """The memory section from the memory pass, and a note when the pass failed (the run stays ok)."""
    try:
        measured = measure_memory(run.task, run.optimizer, run.preset, run.seed, torch.device(run.device), run.lr,
                                  run.hparams, run.task_options)
        return Memory.from_json({"optimizer_state_bytes": None, **measured}, "memory pass"), []
    except ImportError:
        return Memory.not_measured("peak not measured: optbench.memory unavailable"), []
    except Exception as exc:  # noqa: BLE001
        return (Memory.not_measured("peak not measured (memory pass failed; see notes)"),
                [f"memory pass failed: {type(exc).__name__}: {exc}"])


def _record(run: ResolvedRun, started: float, *, trained: _Trained | None = None, memory: Memory | None = None,
            notes: Sequence[str] = (), error: str | None = None, trace: str | None = None,
            bandwidth: float | None = None) -> dict:
    """The run's record, built once from what the run produced."""
    budget = run.task.budget(run.preset)
    metric = run.task.metric
    result = trained.result if trained else TrainResult()
    final = result.final_eval
    diverged = result.diverged_at_step
    status = "error" if error else "diverged" if diverged is not None else "ok"
    step_s = _median(result.step_s)
    tokens_per_step = trained.tokens_per_step if trained else None
    metrics_extra: dict[str, Any] = {"target": budget.target}
    if final is not None:
        metrics_extra |= {k: v for k, v in final.extra.items() if k not in Metrics.__dataclass_fields__}
    timing_extra: dict[str, Any] = {"train_s": result.wall_s, "params": trained.n_params} if trained else {}
    if trained and bandwidth:
        from optbench.bandwidth import over_bound

        timing_extra["bandwidth_bytes_s"] = bandwidth
        timing_extra["step_bound_ratio"] = over_bound(_median(result.opt_step_s), run.optimizer.bound_bytes_per_param,
                                                      trained.n_params, bandwidth)
    extra: dict[str, Any] = {
        "lr_source": run.lr_source, "task_options": canonical(run.task_options),
        "notes": [*(trained.notes if trained else []), *notes], "run_key": run.key.digest(),
    }
    if run.inputs:
        extra["input_files"] = dict(run.inputs)
    if trained:
        extra["optimizer_class"] = trained.optimizer_class
        extra["optimizer_impl"] = trained.optimizer_impl
    if trace:
        extra["traceback"] = trace
    record = RunRecord(
        schema=SCHEMA, task=run.task.name, optimizer=run.optimizer.name,
        hparams=canonical({"lr": run.lr, **run.hparams}), seed=run.seed, preset=run.preset,
        status=status, error=error, diverged_at_step=diverged,
        env=Env.from_json(environment(torch.device(run.device)), "env"),
        budget=BudgetInfo(budget.steps, budget.batch_size, tokens_per_step,
                          extra={"schedule": budget.schedule.describe(budget.steps), "grad_clip": budget.grad_clip}),
        metrics=Metrics(
            metric_name=metric.name,
            final_metric=float(final.metric) if final is not None and diverged is None else None,
            higher_is_better=metric.higher_is_better,
            final_train_loss=result.final_train_loss,
            eval_loss=None if final is None or final.loss is None else float(final.loss),
            steps_to_target=steps_to_target(result.eval_curve, budget.target, metric.higher_is_better),
            extra=metrics_extra),
        memory=memory or Memory.not_measured(),
        timing=Timing(
            step_s_median=step_s, optimizer_step_s_median=_median(result.opt_step_s),
            samples_per_s=trained.samples_per_step / step_s if trained and step_s else None,
            tokens_per_s=tokens_per_step / step_s if tokens_per_step and step_s else None,
            wall_s=time.perf_counter() - started, extra=timing_extra),
        curve=Curve(result.train_curve, result.eval_curve),
        extra=extra,
    )
    return record.to_json()


# ---------------------------------------------------------------------------------------------
# Grids


@dataclass(frozen=True)
class Cell:
    task: str
    optimizer: str
    seed: int
    hparams: Mapping[str, Any] = field(default_factory=dict)
    task_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.task} / {self.optimizer} / seed {self.seed}"


def cell_key(cell: Cell, preset: str, device: str) -> RunKey:
    """The key a cell's record is stored under: resolved hparams and input files, so a changed lr or rules
    file is a new run. Raises a ValueError (``UsageError``) for a bad name or value."""
    return resolve_run(cell.task, cell.optimizer, hparams=cell.hparams, seed=cell.seed, preset=preset, device=device,
                       task_options=cell.task_options).key


def make_cells(tasks: Iterable[str], optimizers: Iterable[str], seeds: Iterable[int],
               hparams: Mapping[str, Any] | None = None,
               task_options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Cell]:
    """The grid in task-major order; ``task_options`` maps a task name to its setup options."""
    tasks, optimizers, seeds = list(tasks), list(optimizers), list(seeds)
    for name in tasks:
        registry.get_task(name)
    for name in optimizers:
        registry.get_optimizer(name)
    options = task_options or {}
    return [Cell(t, o, s, dict(hparams or {}), dict(options.get(t, {}))) for t in tasks for o in optimizers
            for s in seeds]


@dataclass
class GridOutcome:
    """What a grid did. ``records`` follows the cells given (a repeated cell shares its record);
    after Ctrl-C it holds the records finished so far."""

    records: list[dict] = field(default_factory=list)
    ran: int = 0  # runs done now (a repeated cell runs once)
    reused: int = 0  # stored records reused
    failed: list[str] = field(default_factory=list)  # runs done now that did not finish ok
    reused_failed: list[str] = field(default_factory=list)  # reused records that did not finish ok
    corrupt: list[str] = field(default_factory=list)  # corrupt files set aside (and rerun)
    decisions: list[Decision] = field(default_factory=list)  # the store's plan, one per cell
    by_cell: list[dict | None] = field(default_factory=list)  # one per cell given; None: not finished

    @property
    def errored(self) -> list[dict]:
        """Every run of the grid that failed (an error record, run now or reused), once each.

        A cell whose optimizer or task cannot run here (``unavailable: ...``) is listed as not ok
        but did not fail: it never ran.
        """
        unique = {r.get("run_key") or id(r): r for r in self.records
                  if r["status"] == "error" and not r["error"].startswith(UNAVAILABLE)}
        return list(unique.values())


def _not_ok(record: Mapping[str, Any]) -> str:
    detail = record["error"] or f"diverged at step {record['diverged_at_step']}"
    return f"{record['task']} / {record['optimizer']} / seed {record['seed']}: {record['status']} ({detail})"


@dataclass
class GridPlan:
    """A grid resolved and looked up in the store: one decision per cell (``optbench.store``)."""

    cells: list[Cell]
    preset: str
    device: str
    store: RunStore
    decisions: list[Decision]


def plan_grid(cells: Sequence[Cell], *, preset: str, runs_dir: str | Path, device: str | None = None,
              rerun_failed: bool = False, reuse: ReusePolicy | None = None, fresh: Sequence[Cell] = (),
              device_here: bool = True, log: Callable[[str], None] = print) -> GridPlan:
    """Resolve every cell and look it up in the store; nothing runs.

    A bad name or value, an unwritable runs folder, or a stored record the policy refuses raises a
    ``UsageError`` here, before any training. Finished runs are reused; error records too unless
    ``rerun_failed``; ``reuse`` sets another policy (the gate's); ``fresh`` cells are run again.
    ``device_here=False``: the runs execute elsewhere (a cluster), so CUDA need not be present here.
    """
    registry.check_preset(preset)
    device = check_device(device or default_device(preset), here=device_here)
    device_type = torch.device(device).type
    store = RunStore(runs_dir, log=log)
    keys = [cell_key(cell, preset, device_type) for cell in cells]
    fresh_keys = {cell_key(cell, preset, device_type).digest() for cell in fresh}
    store.check_writable()
    store.clean_temporaries()
    decisions = store.plan(keys, reuse or ReusePolicy(errors=not rerun_failed), fresh=fresh_keys)
    return GridPlan(list(cells), preset, device, store, decisions)


def execute_grid(plan: GridPlan, *, executor: Executor | None = None, progress: bool = True,
                 measure_memory_pass: bool = True) -> GridOutcome:
    """Run what the plan did not reuse and write each record the moment it arrives (a repeated cell runs once).

    ``executor`` (default ``LocalExecutor``: one run after another, in this process) yields each
    record as its run finishes; only this process writes the store. Ctrl-C loses only the runs in
    progress: every record written is kept, and a stored one is replaced only by a finished run.
    """
    from optbench.executors import LocalExecutor, RunSettings

    cells, decisions = plan.cells, plan.decisions
    outcome = GridOutcome(decisions=decisions, corrupt=[str(d.path) for d in decisions if d.set_aside])
    in_order: list[dict | None] = [None] * len(cells)
    indices: dict[str, list[int]] = {}  # key digest -> the cells that share it
    todo: list[tuple[int, Cell]] = []
    for index, (cell, decision) in enumerate(zip(cells, decisions)):
        digest = decision.key.digest()
        first = digest not in indices
        indices.setdefault(digest, []).append(index)
        if decision.action == "reuse":
            in_order[index] = decision.record
            if first:
                outcome.reused += 1
                if decision.record["status"] != "ok":
                    outcome.reused_failed.append(_not_ok(decision.record))
        elif first:
            todo.append((index, cell))
    executor = executor or LocalExecutor()
    bar = _progress(len(todo), progress)
    settings = RunSettings(preset=plan.preset, device=plan.device, measure_memory_pass=measure_memory_pass)
    runs = executor.execute(todo, settings)
    try:
        for index, record in runs:
            decision = decisions[index]
            plan.store.write(record, decision.path, aside=decision.aside_on_write)
            for same in indices[decision.key.digest()]:
                in_order[same] = record
            outcome.ran += 1
            if record["status"] != "ok":
                outcome.failed.append(_not_ok(record))
                bar.write(f"  {outcome.failed[-1]}")
            bar.set_postfix_str(cells[index].label, refresh=False)
            bar.update(1)
    finally:
        runs.close()  # abandons the cells not finished (Ctrl-C): the executor stops them
        bar.close()
        outcome.by_cell = in_order
        outcome.records = [r for r in in_order if r is not None]
    return outcome


def run_grid(cells: Sequence[Cell], *, preset: str, runs_dir: str | Path, device: str | None = None,
             rerun_failed: bool = False, progress: bool = True, measure_memory_pass: bool = True,
             log: Callable[[str], None] = print, executor: Executor | None = None,
             reuse: ReusePolicy | None = None, fresh: Sequence[Cell] = ()) -> GridOutcome:
    """Plan with the store (``plan_grid``), then run what is left and write it (``execute_grid``)."""
    plan = plan_grid(cells, preset=preset, runs_dir=runs_dir, device=device, rerun_failed=rerun_failed, reuse=reuse,
                     fresh=fresh, device_here=executor is None or executor.name == "local", log=log)
    return execute_grid(plan, executor=executor, progress=progress, measure_memory_pass=measure_memory_pass)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="runs", unit="run", disable=not enabled or total == 0, dynamic_ncols=True)
