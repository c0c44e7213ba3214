"""Pieces shared by optimizer modules: validation, analytic state sizes, the update pieces of
Adam-like rules, and the compiled and native steps of optbench's own optimizers.

The update pieces are small named functions of the papers' notation (optax's style:
``scale_by_adam`` is an EMA, a bias correction and a decoupled decay), so that the step of
SlimAdam, SMMF and MicroAdam reads like its paper's equations.

The compiled step: our own optimizers write their whole step, for every tensor, as one
function and run it through ``torch.compile`` (:func:`run_step`). Compiling happens at the
first call (inside the first steps, which the runner's warm-up excludes from timings); the
compiled code is cached per (function, layout) for the whole process, so the runs of a grid
that train the same model share it, and inductor's on-disk cache shares kernels between
processes. Any failure to compile falls back to the same function run eagerly, with a
warning. Setting ``OPTBENCH_COMPILE=0`` runs every compiled step eagerly (the test suite
does, so that it does not compile every toy model).

The native step: on CPU float32 tensors, unless ``compile=True`` asks for the compiled one,
each of the three runs a C kernel (``optimizers/kernels``, built by ``optimizers._native``)
through :func:`run_step` as well. ``optimizer.optbench_impl`` says which step ran ("native",
"compiled" or "eager"), and the runner records it.
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from optbench.optimizers._native import load as load_native
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

STEP_BYTES = 4  # torch keeps `step` as a 0-d float32 tensor per parameter (non-capturable)


def check_lr(lr: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")


def check_betas(betas: Sequence[float], names: Sequence[str] = ("beta1", "beta2")) -> None:
    for name, beta in zip(names, betas, strict=True):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {beta}")


def check_nonnegative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def check_positive_int(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value}")


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adam_like_state_bytes(params: Iterable[torch.Tensor], moments: int) -> int:
    """``moments`` full-size tensors in the parameter dtype plus a float32 step per tensor."""
    return sum(moments * p.numel() * p.element_size() + STEP_BYTES for p in params)


def params_with_grads(optimizer: torch.optim.Optimizer) -> list[tuple[torch.Tensor, dict]]:
    """(parameter, its param group) for every parameter with a gradient, in order.

    Parameters whose grad is None are skipped (torch's convention); sparse gradients are refused.
    """
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError(f"{type(optimizer).__name__} does not support sparse gradients")
            out.append((p, group))
    return out


# ----------------------------------------------------------------------------- update pieces


def ema_(average: torch.Tensor, value: torch.Tensor, beta: float) -> torch.Tensor:
    """``average <- beta * average + (1 - beta) * value``, in place: Adam's moment update.

    Written with plain products, as every piece a compiled step uses: a number passed to an op
    as ``alpha=``/``value=``/a lerp weight would be compiled in as a constant, and the graph
    recompiled when it changes (every step, for a bias correction or a scheduled lr).
    """
    return average.mul_(beta).add_(value * (1 - beta))


def bias_correction(beta: float, step: int) -> float:
    """``1 - beta**step``: an EMA started at zero, divided by this, is unbiased (Kingma & Ba 2015, Alg. 1)."""
    return 1 - beta**step


def decay_factor(lr: float, weight_decay: float) -> float:
    """``1 - lr * weight_decay``: decoupled weight decay multiplies the parameter by this before
    the update (Loshchilov & Hutter 2019, AdamW's line 12)."""
    return 1 - lr * weight_decay


def column_sums(matrix: torch.Tensor) -> torch.Tensor:
    """``matrix.sum(0)``, in blocks of 16 rows when they divide evenly: compiled, a plain column
    sum becomes one strided pass per column strip, several times slower than this."""
    rows, cols = matrix.shape
    if rows % 16:
        return matrix.sum(dim=0)
    return matrix.view(rows // 16, 16, cols).sum(dim=1).sum(dim=0)


# ----------------------------------------------------------------------------- the compiled step

IMPLS = ("native", "compiled", "eager")
COMPILE_ENV = "OPTBENCH_COMPILE"
_COMPILED: dict[tuple[Callable, Hashable], Callable] = {}
COMPILE_DYNAMIC = bool(int(os.environ.get("OPTBENCH_COMPILE_DYNAMIC", "1")))
COMPILE_OPTIONS = {"cpp.max_horizontal_fusion_size": int(os.environ.get("OPTBENCH_HFS", "16"))}
COMPILE_CHUNK = int(os.environ.get("OPTBENCH_COMPILE_CHUNK", "16"))
COMPILE_CHUNK_NUMEL = int(os.environ.get("OPTBENCH_COMPILE_CHUNK_NUMEL", str(2**20)))
COMPILE_CHUNK_MAX = 128


def chunk_bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    """The ``(start, end)`` of each compiled region over tensors of ``sizes`` elements, in order.

    A region closes once it holds ``COMPILE_CHUNK`` tensors and ``COMPILE_CHUNK_NUMEL``
    elements, or ``COMPILE_CHUNK_MAX`` tensors. On a large model every 16 tensors already hold
    over a million elements, so its regions are those of a plain 16-tensor split (one graph
    per repeated run of layers; one 101-tensor region made SMMF 2.5x slower on the 27M GPT).
    On a small model each region's fixed cost (guards, the call, a pass per kernel) outweighs
    its work, so its tensors are gathered into few regions: on topics-gpt (69 tensors, 0.9M
    parameters) one region instead of five.
    """
    bounds: list[tuple[int, int]] = []
    start = numel = 0
    for i, n in enumerate(sizes):
        numel += n
        count = i + 1 - start
        if count >= COMPILE_CHUNK_MAX or (count >= COMPILE_CHUNK and numel >= COMPILE_CHUNK_NUMEL):
            bounds.append((start, i + 1))
            start, numel = i + 1, 0
    if start < len(sizes):
        bounds.append((start, len(sizes)))
    return bounds


def compile_enabled() -> bool:
    """False when ``OPTBENCH_COMPILE=0``: every own optimizer then steps eagerly."""
    return os.environ.get(COMPILE_ENV, "1") != "0"


def initial_impl(compile: bool, native: bool = False) -> str:
    """What ``optbench_impl`` starts as for an optimizer built with ``compile``; ``native``: its C
    kernel can take every one of its parameters (the optimizer checks; see ``run_step``). An
    explicit ``compile=True`` wins (the ratio benchmark's compiled rows ask for it); otherwise the
    kernel, where there is one, runs instead of the eager torch step."""
    if compile and compile_enabled():
        return "compiled"
    return "native" if native else "eager"


def without_data(tensors: Sequence[torch.Tensor]) -> bool:
    """True for fake or meta tensors (a projection): a C kernel has no memory to read there."""
    from torch._subclasses.fake_tensor import is_fake

    return any(t.device.type == "meta" or is_fake(t) for t in tensors[:1])


def compiled(fn: Callable, layout: Hashable) -> Callable:
    """``fn`` under ``torch.compile`` (one graph), one per ``(fn, layout)`` in the process.

    Each layout (the shapes, dtypes and options of the tensors a step sees) gets a copy of
    ``fn``'s code object: dynamo keeps its graphs per code object and stops compiling after
    ``recompile_limit`` of them, so one shared object would make a grid over many models run
    eagerly without saying so. Per-step numbers (lr, betas at step t) are Python floats, which
    dynamo passes as inputs rather than constants (shapes are symbolic too: ``dynamic=True``,
    so kernels are shared between tensors of different sizes and compile once); they never
    cause a recompile as long as the step uses them in products and sums only (see ``ema_``).
    """
    key = (fn, layout)
    if key not in _COMPILED:
        code = fn.__code__.replace()  # a distinct code object with the same body
        clone = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        _COMPILED[key] = torch.compile(clone, dynamic=COMPILE_DYNAMIC, fullgraph=True, options=COMPILE_OPTIONS)
    return _COMPILED[key]


def run_step(optimizer: torch.optim.Optimizer, compiled_fn: Callable, eager_fn: Callable,
             per_tensor: Sequence[Sequence], shared: Sequence, key: Sequence[Hashable],
             bounds: Sequence[tuple[int, int]] | None = None, native_fn: Callable | None = None) -> None:
    """Run one step: ``native_fn`` when ``optimizer.optbench_impl == "native"``, ``compiled_fn``
    compiled when it is ``"compiled"``, else ``eager_fn``.

    All three are called as ``fn(*per_tensor, shared)`` and compute the same update: ``per_tensor``
    holds lists aligned with the tensors (parameters, gradients, state, layout entries),
    ``shared`` the per-step numbers they index. ``key[i]`` is everything static about tensor i
    (shape, dtype, layout). The compiled step runs on chunks of tensors (``bounds``, by default
    ``chunk_bounds`` of their sizes; a step plan keeps its own), one
    compiled graph per distinct chunk: a model's repeated blocks share one, and no graph grows
    with the model (inductor's compile time grows faster than its size). ``eager_fn`` may
    process big tensors in pieces to bound its scratch memory.

    ``native_fn`` (a C kernel, ``optimizers._native``) returns False, before changing anything,
    when it cannot take these tensors (a dtype, device or layout it does not handle): the
    optimizer then warns once and switches for good to its fallback (``optbench_fallback_impl``).
    On fake or meta tensors (a projection) ``native_fn.dry_run`` makes the torch allocations the
    kernel's call would make (its scratch) and no arithmetic, so that a projection of the native
    step's memory matches a measurement of it.

    Under a torch dispatch mode (the memory tracker, fake tensors), which ``torch.compile`` does
    not trace, the compiled step runs eagerly without changing ``optbench_impl``. A compile failure
    (raised while tracing, before that chunk's update) warns once, steps the rest of the tensors
    eagerly and switches the optimizer to eager.
    """
    if optimizer.optbench_impl == "native":  # type: ignore[attr-defined]
        if native_fn is not None and without_data(per_tensor[0]):
            native_fn.dry_run(*per_tensor, shared)
            return
        if native_fn is not None and native_fn(*per_tensor, shared):
            return
        fallback = getattr(optimizer, "optbench_fallback_impl", "eager")
        warnings.warn(f"{type(optimizer).__name__}: its C kernel cannot take these tensors; stepping {fallback}",
                      stacklevel=3)
        optimizer.optbench_impl = fallback  # type: ignore[attr-defined]
    start = 0
    if optimizer.optbench_impl == "compiled" and _get_current_dispatch_mode() is None:  # type: ignore[attr-defined]
        try:
            if bounds is None:
                bounds = chunk_bounds([t.numel() for t in per_tensor[0]])
            for start, end in bounds:
                compiled(compiled_fn, tuple(key[start:end]))(*_slice(per_tensor, start, end), shared)
            return
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"{type(optimizer).__name__}: torch.compile of the step failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); stepping eagerly", stacklevel=3)
            optimizer.optbench_impl = "eager"  # type: ignore[attr-defined]
    eager_fn(*_slice(per_tensor, start, len(key)), shared)


def _slice(per_tensor: Sequence[Sequence], start: int, end: int) -> list:
    return [list(items[start:end]) if isinstance(items, list) else tuple(items[start:end]) for items in per_tensor]


# ----------------------------------------------------------------------------- the step's plan


@dataclass
class Prepared:
    """What ``describe`` says about one parameter for the step function: fixed from step to step."""

    work: torch.Tensor  # the view of the parameter the step function updates (matricized, flat, ...)
    state: tuple[torch.Tensor, ...]  # the state tensors the step function takes, in its order
    entry: tuple  # the static part of the tensor's layout entry (the scalar slot is appended)
    grad_shape: tuple[int, ...] | None = None  # the shape the gradient is viewed as (None: its own)
    write_back: bool = False  # ``work`` is a contiguous copy of a strided parameter: copy it back


@dataclass
class StepPlan:
    """A step's fixed parts for one set of parameters with gradients, kept between steps.

    Built on a step whose parameters, param groups or state dicts differ from the last one's
    (the first steps, a parameter gaining or losing its gradient, ``load_state_dict``); each other
    step only counts, computes its per-step numbers once per (param group, step count), views the
    gradients and calls ``run_step``. On a small model the step's Python work otherwise costs as
    much as its kernels.
    """

    fingerprint: tuple
    params: list[torch.Tensor]
    prepared: list[Prepared]
    groups: list[dict]
    state_dicts: list[dict]
    slots: tuple = ()
    layout: tuple = ()
    key: list = field(default_factory=list)
    bounds: list = field(default_factory=list)  # the compiled regions (``chunk_bounds``) of these tensors


class PlannedStep:
    """Mixin of our own optimizers (before ``torch.optim.Optimizer`` in the bases): ``step()`` runs the
    closure, then :func:`planned_step` with the pieces ``_step_pieces()`` names (describe, per-step
    numbers, compiled and eager step functions, and optionally a C kernel's step)."""

    def _step_pieces(self) -> tuple[Callable, ...]:
        raise NotImplementedError

    def _choose_step(self, compile: bool, native: bool, kernel: str, step_class: Callable,
                     fits: Callable[[], bool]) -> None:
        """Set ``optbench_impl`` and the kernel's step (``_native``, or None): the C kernel
        ``kernel`` when ``native``, ``compile=True`` does not ask for the compiled step instead,
        ``fits()`` (the kernel takes every parameter and option) and it builds; else the compiled
        or eager step, which ``optbench_fallback_impl`` names for when a later step cannot take the
        kernel."""
        self.optbench_fallback_impl = initial_impl(compile)
        self._native = None
        if native and not (compile and compile_enabled()) and fits():
            library = load_native(kernel)
            self._native = step_class(library) if library is not None else None
        self.optbench_impl = initial_impl(compile, native=self._native is not None)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = closure_loss(closure)
        planned_step(self, *self._step_pieces())  # type: ignore[arg-type]
        return loss


def closure_loss(closure: Callable[[], torch.Tensor] | None) -> torch.Tensor | None:
    """The loss of ``step(closure)``'s closure, evaluated with gradients on (a step runs under no_grad)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def planned_step(optimizer: torch.optim.Optimizer, describe: Callable[[torch.Tensor, dict, dict], Prepared],
                 scalars_of: Callable[[int, dict], tuple], compiled_fn: Callable, eager_fn: Callable,
                 native_fn: Callable | None = None) -> None:
    """One step of an own optimizer: count, plan (see ``StepPlan``), then ``run_step``.

    ``describe(param, group, state)`` initializes an empty state and says how the step function
    takes the parameter; ``scalars_of(step, group)`` the per-step numbers of a tensor at that
    step count. The step functions are called as ``fn(params, grads, states, layout, scalars)``
    with ``layout[i] = entry + (slot,)`` and ``scalars[slot]`` the numbers of tensor i.
    """
    pairs = params_with_grads(optimizer)
    state = optimizer.state  # type: ignore[attr-defined]
    fingerprint = tuple((id(p), id(group), id(state.get(p))) for p, group in pairs)
    plan: StepPlan | None = getattr(optimizer, "_optbench_plan", None)
    if plan is None or plan.fingerprint != fingerprint:
        prepared = [describe(p, group, state[p]) for p, group in pairs]
        fingerprint = tuple((id(p), id(group), id(state.get(p))) for p, group in pairs)
        plan = StepPlan(fingerprint, [p for p, _ in pairs], prepared, [g for _, g in pairs],
                        [state[p] for p, _ in pairs])
        optimizer._optbench_plan = plan  # type: ignore[attr-defined]
    shared: list[tuple] = []
    slot_of: dict[tuple[int, int], int] = {}
    slots = []
    for group, tensor_state in zip(plan.groups, plan.state_dicts, strict=True):
        tensor_state["step"] += 1
        key = (id(group), tensor_state["step"])
        if key not in slot_of:
            slot_of[key] = len(shared)
            shared.append(scalars_of(tensor_state["step"], group))
        slots.append(slot_of[key])
    if tuple(slots) != plan.slots:
        plan.slots = tuple(slots)
        plan.layout = tuple(prep.entry + (slot,) for prep, slot in zip(plan.prepared, slots, strict=True))
        plan.key = [(entry, prep.work.shape, prep.work.dtype, p.grad.dtype, p.device, len(prep.state))
                    for entry, prep, p in zip(plan.layout, plan.prepared, plan.params, strict=True)]
        plan.bounds = chunk_bounds([prep.work.numel() for prep in plan.prepared])
    if not plan.params:
        return
    grads = [p.grad if prep.grad_shape is None else p.grad.reshape(prep.grad_shape)
             for p, prep in zip(plan.params, plan.prepared, strict=True)]
    for p, prep in zip(plan.params, plan.prepared, strict=True):
        if prep.write_back:  # the parameter may have changed since the last step (a loaded checkpoint)
            prep.work.view(p.shape).copy_(p)
    run_step(optimizer, compiled_fn, eager_fn, ([prep.work for prep in plan.prepared], grads,
                                                [prep.state for prep in plan.prepared], plan.layout), shared, plan.key,
             plan.bounds, native_fn)
    for p, prep in zip(plan.params, plan.prepared, strict=True):
        if prep.write_back:
            p.copy_(prep.work.view(p.shape))


def work_view(param: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, bool]:
    """``param`` viewed as ``shape``, and whether that is a copy to write back (a strided parameter)."""
    if param.is_contiguous():
        return param.view(tuple(shape)), False
    return param.contiguous().view(tuple(shape)), True

