"""The one training step of optbench, and the autocast helper it uses.

Every pass that trains calls :class:`TrainingStep`: the runner's timed pass wraps it with
clocks, the memory pass with the tensor tracker, the SNR proxy run, ``tasks.quick_train``,
the timing-overhead benchmark and the conformance tests call it as it is. So the step that is
timed, the step whose memory is measured and the step that is trained are one piece of code,
gradient clipping and the lr schedule included.

One step, in order (nanoGPT's loop, written once)::

    set every param group's lr to initial lr x schedule factor   (when a schedule is given)
    loss = loss_fn(model, batch)                                  (under autocast when a dtype is given)
    loss.backward()
    clip_grad_norm_(model.parameters(), grad_clip)               (when grad_clip is given)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

``TrainingStep.gradients`` is the step's first half alone (forward, backward, clipping), for a
benchmark that times ``optimizer.step()`` on real gradients. A caller that must see inside the
step passes a :class:`StepWatch`: it can wrap the forward in a context (the memory pass's
fallback counts saved tensors so) and is told when the gradients are ready and when
``optimizer.step()`` has returned (the timed pass reads its clocks there; a test may edit
gradients there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from optbench.schedule import Schedule, apply_lr

if TYPE_CHECKING:
    from optbench.spec import Budget, TaskInstance

LossFn = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> scalar loss


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


class StepWatch:
    """What a caller may do inside one step. The base class does nothing; subclass what you need."""

    def forward(self) -> AbstractContextManager:
        """A context entered around the forward pass (inside autocast)."""
        return contextlib.nullcontext()

    def grads_ready(self) -> None:
        """Called after backward and clipping, before ``optimizer.step()``."""

    def stepped(self) -> None:
        """Called after ``optimizer.step()``, before ``zero_grad``."""


NO_WATCH = StepWatch()


@dataclass(frozen=True)
class TrainingStep:
    """How one training step runs: the loss, autocast, clipping and the lr schedule.

    ``schedule`` None leaves the lr as the optimizer was built (a proxy run, a test);
    otherwise step ``k`` of ``total_steps`` runs at ``schedule.factor(k, total_steps)`` x
    each group's initial lr (``optbench.schedule.apply_lr``).
    """

    loss_fn: LossFn
    autocast_dtype: torch.dtype | None = None
    grad_clip: float | None = None
    schedule: Schedule | None = None
    total_steps: int = 0

    def __post_init__(self) -> None:
        if self.schedule is not None and self.total_steps < 1:
            raise ValueError(f"a scheduled step needs total_steps >= 1, got {self.total_steps}")

    @classmethod
    def for_task(cls, instance: TaskInstance, budget: Budget, *, schedule: bool = True) -> TrainingStep:
        """The step a task's budget prescribes: its loss, autocast dtype, clipping and (unless off) schedule."""
        return cls(instance.loss_fn, instance.autocast_dtype, budget.grad_clip,
                   budget.schedule if schedule else None, budget.steps)

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any, step: int = 1,
                 watch: StepWatch = NO_WATCH) -> torch.Tensor:
        """Train ``model`` on ``batch`` as step ``step`` (1-based); return the loss, detached."""
        if self.schedule is not None:
            apply_lr(optimizer, self.schedule.factor(step, self.total_steps))
        loss = self.gradients(model, batch, watch)
        watch.grads_ready()
        optimizer.step()
        watch.stepped()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def gradients(self, model: nn.Module, batch: Any, watch: StepWatch = NO_WATCH) -> torch.Tensor:
        """The first half of the step: forward, backward, clipping; leaves ``.grad`` in place.

        For a benchmark that times ``optimizer.step()`` alone on real gradients; training calls
        the whole step. Returns the loss, detached.
        """
        device = _device_of(model) if self.autocast_dtype is not None else "cpu"
        with autocast(device, self.autocast_dtype), watch.forward():
            loss = self.loss_fn(model, batch)
        loss.backward()
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        return loss.detach()


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    return torch.device("cpu")
