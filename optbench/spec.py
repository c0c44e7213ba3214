"""The two public specs: what an optimizer is and needs, and what a task trains and measures.

A spec declares everything the runner must know, so the runner never asks for a name.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from optbench.schedule import Schedule

DEVICES = ("cpu", "cuda")
TIERS = ("cpu", "gpu")


@dataclass(frozen=True)
class Requirements:
    """What must be present for a spec to run: importable packages and a device kind."""

    packages: tuple[str, ...] = ()
    devices: tuple[str, ...] = DEVICES
    check: Callable[[], str | None] | None = None  # extra condition; returns a reason or None

    def unmet(self, device: str | None = None) -> str | None:
        """The reason this cannot run (on ``device``, when given), or ``None``."""
        missing = [p for p in self.packages if importlib.util.find_spec(p) is None]
        if missing:
            return f"missing package(s): {', '.join(missing)}"
        if device is not None and torch.device(device).type not in self.devices:
            return f"runs on {', '.join(self.devices)} only, not {device}"
        if self.check is not None:
            return self.check()
        return None


BuildFn = Callable[..., torch.optim.Optimizer]  # (model, lr, **hparams)
StateBytesFn = Callable[..., int]  # (model, **hparams) -> exact optimizer-state bytes
TaskCheckFn = Callable[[str], "str | None"]  # (task name) -> a reason it cannot run on that task, or None
InputFilesFn = Callable[[str, Mapping[str, Any]], Sequence[str | Path]]  # files a run reads (see the specs)


def signature_defaults(build: Callable[..., Any]) -> dict[str, Any]:
    """The hyperparameters ``build(model, lr, ...)`` declares with a default, and those defaults."""
    return {name: p.default for name, p in inspect.signature(build).parameters.items()
            if name not in ("model", "lr") and p.default is not p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer.

    ``build(model, lr, **hparams)`` returns a ready optimizer; it receives ``defaults``
    merged with the user's hyperparameters. ``defaults`` left out are read from ``build``'s
    signature (its keyword parameters with a default), so they are written once.
    ``state_bytes(model, **hparams)`` is the exact
    analytic size of every tensor the optimizer keeps after its first step.
    """

    name: str
    build: BuildFn
    defaults: Mapping[str, Any] | None = None  # None: the keyword defaults of build's signature
    family: str = "other"
    paper: str = ""
    # Exact analytic optimizer-state bytes; a plugin may leave it out, and then the measured
    # state is used and the record says so.
    state_bytes: StateBytesFn | None = None
    default_lr: float = 1e-3
    # How this optimizer's starting lr relates to AdamW's on a task: starting lr = the task's
    # AdamW lr x lr_vs_adamw. None: no relation (its own default_lr, or the task's entry).
    lr_vs_adamw: float | None = 1.0
    # Bytes one step must move per parameter (reads and writes of params, grads and state) at
    # the memory-bandwidth bound, for step time / its bound. None: not declared.
    bound_bytes_per_param: float | None = None
    # A sentence the leaderboard shows with this optimizer's row, e.g. the regime its defaults
    # belong to when that differs from the board's budgets.
    board_note: str = ""
    requires: Requirements = field(default_factory=Requirements)
    needs_model_info: bool = False
    # Files a run reads besides code, e.g. slimadam-snr's rules for the task:
    # ``input_files(task_name, hparams) -> paths``. Their contents' digests enter the run key and
    # the record, so a regenerated file makes a new run instead of reusing a stale one.
    input_files: InputFilesFn | None = None
    # Whether it can run on a given task, e.g. slimadam-snr only where rules exist for the task:
    # ``task_check(task_name) -> reason | None``; the reason should name the command that fixes it.
    task_check: TaskCheckFn | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.defaults is None:
            object.__setattr__(self, "defaults", signature_defaults(self.build))

    def unavailable_reason(self, device: str | None = None) -> str | None:
        return self.requires.unmet(device)

    def unavailable_for(self, task: str, device: str | None = None) -> str | None:
        """The reason this cannot run on ``task`` (on ``device``, when given), or ``None``."""
        return self.unavailable_reason(device) or (self.task_check(task) if self.task_check else None)

    def resolve_hparams(self, hparams: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``defaults`` overlaid with ``hparams``; unknown keys are an error naming the known ones."""
        merged = dict(self.defaults)
        for key, value in (hparams or {}).items():
            if key == "lr":
                continue
            if key not in self.defaults:
                known = ", ".join(sorted(self.defaults)) or "(none)"
                raise ValueError(f"unknown hyperparameter {key!r} for optimizer {self.name!r}; known: {known}")
            merged[key] = value
        return merged


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool


@dataclass(frozen=True)
class Budget:
    """A fixed training budget for one preset."""

    steps: int
    batch_size: int
    eval_every: int  # evaluate every this many steps (and always at the end)
    target: float | None = None  # metric value for steps-to-target
    log_every: int = 10  # train loss recorded every this many steps
    warmup_steps: int = 3  # excluded from timing medians (not the lr warm-up: that is the schedule's)
    grad_clip: float | None = None
    schedule: Schedule = field(default_factory=Schedule)  # lr warm-up and decay, applied by the runner

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "eval_every", "log_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"budget {key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class EvalResult:
    metric: float
    loss: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class TaskInstance:
    """A task set up for one (preset, seed, device): model, data stream and evaluation."""

    model: nn.Module  # carries its ModelInfo (optbench.model_info.get_model_info)
    batches: Iterator[Any]  # deterministic given the seed; already on the device
    loss_fn: Callable[[nn.Module, Any], torch.Tensor]
    evaluate: Callable[[nn.Module], EvalResult]
    samples_per_step: int
    tokens_per_step: int | None = None
    autocast_dtype: torch.dtype | None = None
    notes: list[str] = field(default_factory=list)  # e.g. "generated stand-in data (smoke)"


SetupFn = Callable[..., TaskInstance]  # (preset, seed, device, **options)


@dataclass(frozen=True)
class TaskSpec:
    """One registered task: a model, its data, a metric and a budget per preset."""

    name: str
    tier: str
    description: str
    metric: Metric
    budgets: Mapping[str, Budget]
    setup: SetupFn
    # Starting lrs before any sweep: "adamw" (every other optimizer with an ``lr_vs_adamw`` starts at
    # it x that) and those of optimizers without a relation (e.g. "sgd"). Resolved in optbench.lrs.
    default_lrs: Mapping[str, float] = field(default_factory=dict)
    requires: Requirements = field(default_factory=Requirements)
    options: tuple[str, ...] = ()  # accepted setup options, e.g. ("text_file",)
    # Files a run of this task reads besides code and shipped data: ``input_files(preset, options)
    # -> paths`` (like OptimizerSpec.input_files: their digests enter the run key and the record).
    input_files: InputFilesFn | None = None
    # The equivalence margin of the board's verdicts, as a share of AdamW's mean final held-out
    # loss: |candidate - AdamW| within it counts as equivalent. Fixed per task before any results
    # (at most 0.02); each task's docstring says why its value.
    margin: float = 0.01
    # How many seeds the published board runs (seeds 0..n-1; the protocol asks for at least 5).
    # Part of the budget, sized for signal before any board result: a task whose runs cost
    # seconds and whose held-out loss is noisy relative to its margin runs more, so that its
    # paired CIs are narrow enough to decide. Each task's docstring says why its value.
    board_seeds: int = 5

    def __post_init__(self) -> None:
        if not 0.0 < self.margin <= 0.02:
            raise ValueError(f"task {self.name!r}: margin {self.margin} must be in (0, 0.02]")
        if self.board_seeds < 5:
            raise ValueError(f"task {self.name!r}: board_seeds {self.board_seeds} must be >= 5")
        if self.tier not in TIERS:
            raise ValueError(f"task {self.name!r}: tier {self.tier!r} not in {TIERS}")

    def budget(self, preset: str) -> Budget:
        try:
            return self.budgets[preset]
        except KeyError:
            raise ValueError(
                f"task {self.name!r} has no budget for preset {preset!r}; presets: {', '.join(self.budgets)}"
            ) from None

    def instantiate(self, preset: str, seed: int, device: str | torch.device = "cpu", **options: Any) -> TaskInstance:
        self.budget(preset)
        unknown = sorted(k for k, v in options.items() if v is not None and k not in self.options)
        if unknown:
            raise ValueError(
                f"task {self.name!r} does not accept option(s) {unknown}; accepted: {list(self.options) or 'none'}"
            )
        given = {k: v for k, v in options.items() if v is not None}
        return self.setup(preset=preset, seed=seed, device=torch.device(device), **given)
