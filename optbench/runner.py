"""One run = (task, optimizer, hparams, seed, preset): train to a fixed budget and measure it.

A run has two passes. The timed pass trains the whole budget with nothing but clocks around
the step (forward+backward and ``optimizer.step()`` timed apart, warm-up excluded, CUDA
synchronised). The memory pass rebuilds the same model and optimizer and tracks a couple of
steps tensor by tensor (``optbench.memory``). The runner never asks which optimizer or task
it holds: everything that differs is declared in their specs.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from optbench import registry
from optbench.env import default_device, environment
from optbench.loop import StepWatch, TrainingStep
from optbench.lrs import resolve_lr
from optbench.records import (
    SCHEMA,
    CorruptRecordError,
    RunKey,
    canonical,
    read_record,
    write_record,
)
from optbench.spec import Budget, OptimizerSpec, TaskInstance, TaskSpec
from optbench.state import optimizer_state_bytes

MEMORY_PASS_STEPS = 2


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


def _empty_memory(method: str) -> dict:
    return {"optimizer_state_bytes": None, "peak_bytes": None, "peak_by_category": None, "method": method,
            "cuda_max_allocated": None, "cuda_max_reserved": None}


def run_one(task: str, optimizer: str, *, hparams: Mapping[str, Any] | None = None, seed: int = 0,
            preset: str = "cpu", device: str | None = None, task_options: Mapping[str, Any] | None = None,
            measure_memory_pass: bool = True) -> dict:
    """Train one cell and return its run record (status ok, diverged or error; never raises on a failed run).

    ``hparams`` may hold ``lr``; other keys must be the optimizer's declared hyperparameters.
    Bad names (task, optimizer, preset, hyperparameter) raise ValueError before anything runs.
    """
    registry.check_preset(preset)
    task_spec, opt_spec = registry.get_task(task), registry.get_optimizer(optimizer)
    budget = task_spec.budget(preset)
    hparams = dict(hparams or {})
    explicit_lr = hparams.pop("lr", None)
    lr, lr_source = resolve_lr(task_spec, opt_spec, preset, explicit_lr)
    resolved = opt_spec.resolve_hparams(hparams)
    device_t = torch.device(device or default_device(preset))
    task_options = {k: v for k, v in (task_options or {}).items() if v is not None}
    record: dict[str, Any] = {
        "schema": SCHEMA, "task": task, "optimizer": optimizer,
        "hparams": canonical({"lr": lr, **resolved}), "seed": seed, "preset": preset,
        "status": "ok", "error": None, "diverged_at_step": None,
        "env": environment(device_t),
        "budget": {"steps": budget.steps, "batch_size": budget.batch_size, "tokens_per_step": None,
                   "schedule": budget.schedule.describe(budget.steps)},
        "metrics": {"metric_name": task_spec.metric.name, "final_metric": None,
                    "higher_is_better": task_spec.metric.higher_is_better, "final_train_loss": None,
                    "eval_loss": None, "steps_to_target": None, "target": budget.target},
        "memory": _empty_memory("not measured"),
        "timing": {"step_s_median": None, "optimizer_step_s_median": None, "samples_per_s": None,
                   "tokens_per_s": None, "wall_s": None},
        "curve": {"train": [], "eval": []},
        "lr_source": lr_source, "task_options": canonical(task_options), "notes": [],
        "run_key": RunKey(task, optimizer, {"lr": lr, **resolved}, seed, preset, device_t.type, task_options).digest(),
    }
    wall_start = time.perf_counter()
    reason = opt_spec.unavailable_reason(device_t.type) or task_spec.requires.unmet(device_t.type)
    if reason:
        return _fail(record, f"unavailable: {reason}", wall_start)
    try:
        seed_everything(seed)
        instance = task_spec.instantiate(preset, seed, device_t, **task_options)
        record["notes"] = list(instance.notes)
        record["budget"]["tokens_per_step"] = instance.tokens_per_step
        optimizer_obj = opt_spec.build(instance.model, lr, **resolved)
        record["optimizer_class"] = f"{type(optimizer_obj).__module__}.{type(optimizer_obj).__qualname__}"
        result = train(instance, optimizer_obj, budget, device_t)
        _fill_training(record, result, instance, budget)
        record["memory"]["optimizer_state_bytes"] = optimizer_state_bytes(optimizer_obj)
        del optimizer_obj, instance
    except Exception as exc:  # noqa: BLE001 - a failing optimizer or task is a result, not a crash
        return _fail(record, f"{type(exc).__name__}: {exc}", wall_start, traceback.format_exc())
    if measure_memory_pass and record["status"] == "ok":
        try:
            state_bytes = record["memory"]["optimizer_state_bytes"]
            record["memory"] = measure_memory(task_spec, opt_spec, preset, seed, device_t, lr, resolved, task_options)
            record["memory"]["optimizer_state_bytes"] = state_bytes
        except ImportError:
            record["memory"]["method"] = "peak not measured: optbench.memory unavailable"
        except Exception as exc:  # noqa: BLE001
            record["notes"].append(f"memory pass failed: {type(exc).__name__}: {exc}")
            record["memory"]["method"] = "peak not measured (memory pass failed; see notes)"
    record["timing"]["wall_s"] = time.perf_counter() - wall_start
    return record


def _fill_training(record: dict, result: TrainResult, instance: TaskInstance, budget: Budget) -> None:
    metrics, timing = record["metrics"], record["timing"]
    record["curve"] = {"train": result.train_curve, "eval": result.eval_curve}
    metrics["final_train_loss"] = result.final_train_loss
    if result.final_eval is not None:
        metrics["final_metric"] = result.final_eval.metric
        metrics["eval_loss"] = result.final_eval.loss
        metrics.update({k: v for k, v in result.final_eval.extra.items() if k not in metrics})
    metrics["steps_to_target"] = steps_to_target(result.eval_curve, budget.target, metrics["higher_is_better"])
    step_s = _median(result.step_s)
    timing["step_s_median"] = step_s
    timing["optimizer_step_s_median"] = _median(result.opt_step_s)
    timing["train_s"] = result.wall_s
    if step_s:
        timing["samples_per_s"] = instance.samples_per_step / step_s
        if instance.tokens_per_step:
            timing["tokens_per_s"] = instance.tokens_per_step / step_s
    if result.diverged_at_step is not None:
        record["status"] = "diverged"
        record["diverged_at_step"] = result.diverged_at_step
        metrics["final_metric"] = None


def _fail(record: dict, message: str, wall_start: float, trace: str | None = None) -> dict:
    record["status"] = "error"
    record["error"] = message
    if trace:
        record["traceback"] = trace
    record["timing"]["wall_s"] = time.perf_counter() - wall_start
    return record


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
    """The key a cell's record is stored under: the fully resolved hparams, so a changed lr is a new run."""
    task_spec, opt_spec = registry.get_task(cell.task), registry.get_optimizer(cell.optimizer)
    hparams = dict(cell.hparams)
    lr, _ = resolve_lr(task_spec, opt_spec, preset, hparams.pop("lr", None))
    resolved = opt_spec.resolve_hparams(hparams)
    return RunKey(cell.task, cell.optimizer, {"lr": lr, **resolved}, cell.seed, preset, device,
                  {k: v for k, v in cell.task_options.items() if v is not None})


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
    records: list[dict] = field(default_factory=list)  # in the order of the cells given
    ran: int = 0
    reused: int = 0
    failed: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)


def run_grid(cells: Sequence[Cell], *, preset: str, runs_dir: str | Path, device: str | None = None,
             rerun_failed: bool = False, progress: bool = True,
             measure_memory_pass: bool = True, log=print) -> GridOutcome:
    """Run every cell not already on disk; each record is written the moment its run ends.

    Finished runs are reused (the key includes task, optimizer, resolved hparams, seed, preset,
    device and task options); errored ones are rerun only with ``rerun_failed``; a corrupt file
    is named, set aside as ``*.corrupt`` and rerun. Ctrl-C loses only the run in progress.
    """
    registry.check_preset(preset)
    device = device or default_device(preset)
    outcome = GridOutcome()
    in_order: list[dict | None] = [None] * len(cells)
    todo: list[tuple[int, Cell, Path]] = []
    for index, cell in enumerate(cells):
        path = cell_key(cell, preset, torch.device(device).type).path(runs_dir)
        if path.exists():
            try:
                record = read_record(path)
            except CorruptRecordError as exc:
                log(f"corrupt run file set aside and rerun: {exc}")
                outcome.corrupt.append(str(path))
                path.replace(path.with_suffix(".json.corrupt"))
            else:
                if record["status"] != "error" or not rerun_failed:
                    in_order[index] = record
                    outcome.reused += 1
                    continue
        todo.append((index, cell, path))
    bar = _progress(len(todo), progress)
    try:
        for index, cell, path in todo:
            bar.set_postfix_str(cell.label, refresh=True)
            record = run_one(cell.task, cell.optimizer, hparams=cell.hparams, seed=cell.seed, preset=preset,
                             device=device, task_options=cell.task_options,
                             measure_memory_pass=measure_memory_pass)
            write_record(record, path)
            in_order[index] = record
            outcome.ran += 1
            if record["status"] != "ok":
                detail = record["error"] or f"diverged at step {record['diverged_at_step']}"
                outcome.failed.append(f"{cell.label}: {record['status']} ({detail})")
                bar.write(f"  {cell.label}: {record['status']}: {detail}")
            bar.update(1)
    finally:
        bar.close()
        outcome.records = [r for r in in_order if r is not None]
    return outcome


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="runs", unit="run", disable=not enabled or total == 0, dynamic_ncols=True)
