"""Peak training memory, measured tensor by tensor, with a breakdown by what each tensor is.

The runner calls :func:`measure_training_memory` in its own pass (timings are taken
without instrumentation). It runs ``steps`` full training steps under torch's
``MemTracker`` (``torch.distributed._tools.mem_tracker``), a dispatch mode that sees every
tensor storage an op creates and files it under one of: parameter, buffer, gradient,
activation, temporary (backward), optimizer state, other. It works the same on CPU, CUDA,
and under ``FakeTensorMode`` (which :mod:`optbench.project` uses to measure without memory).

How the figures are read (all on the model's device):

- ``peak_bytes``: the largest total of live tracked storages over the steps.
- ``peak_by_category``: the live storages at that moment, each filed by what it *turned
  out to be*. MemTracker files a gradient as a temporary when backward creates it and
  re-files it as a gradient when the parameter's hook runs; the peak often falls between
  the two, so this module remembers which storages were live at the peak and reads their
  final category afterwards. Likewise, everything allocated inside ``optimizer.step()`` is
  filed as optimizer state by MemTracker; here only storages that were reachable from the
  optimizer's state after a step (``optbench.state.state_tensors``, which includes an
  optimizer's ``optbench_extra_state()``) count as ``optimizer``; the rest of what a step
  allocates counts as ``temporaries``.
- ``params`` includes module buffers (model state; reported apart in ``raw_by_category``).
- ``activations`` includes the input batch (tracked as "inputs" in ``raw_by_category``) and
  the loss; ``temporaries`` are gradients of activations and other backward scratch,
  plus scratch of the optimizer step.
- The data pipeline is not counted: each batch is fetched before tracking starts and
  tracked from the step that uses it.

On CUDA, MemTracker rounds each storage up to the caching allocator's 512-byte block, so
its figures exceed exact element counts by that rounding (a 0-d ``step`` tensor counts
512 bytes). ``cuda_max_allocated``/``cuda_max_reserved`` are the caching allocator's peaks
over the same steps, taken after ``gc.collect()``, ``torch.cuda.empty_cache()`` and
``torch.cuda.reset_peak_memory_stats`` (so a grid's earlier runs do not leak into them); they
also hold what the tracker leaves out on purpose (the data set on the device, library
workspaces, allocator rounding), and the ``method`` string says so. The CUDA path has run on
an H200 in the GPU check (``results/gpu/``).

``_PeakTracker`` overrides two private MemTracker methods (``_update_snap``,
``_update_peak_stats``) and reads its private snapshot dicts: torch has no public hook for
"which storages were live at the peak". ``tracker_incompatibility()`` checks that those
internals have the shape this module expects (torch 2.11 on the GPU image, 2.14 here); where
they do not, or where the tracker sees no allocation at all, the counted fallback below runs
and its ``method`` says why.

If MemTracker fails on an optimizer (packages with custom kernels or tensor subclasses),
the steps run again without it and the figures come from counting tensors directly; the
``method`` string then says so and names the error.
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.distributed._tools import mod_tracker as _mod_tracker
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _MemRefType, _UpdateType

from optbench.loop import LossFn, StepWatch, TrainingStep
from optbench.state import iter_tensors, optimizer_state_bytes, state_tensors

CATEGORIES = ("params", "grads", "optimizer", "activations", "temporaries")

# MemTracker's reference types -> the raw names kept in MemoryReport.raw_by_category.
_RAW_NAMES = {
    _MemRefType.PARAM: "params",
    _MemRefType.BUFFER: "buffers",
    _MemRefType.GRAD: "grads",
    _MemRefType.ACT: "activations",
    _MemRefType.TEMP: "temporaries",
    _MemRefType.OPT: "optimizer",
    _MemRefType.OTH: "inputs",  # the only tensors tracked as "other" here are the batches
}
# raw name -> reported category
_FOLD = {
    "params": "params",
    "buffers": "params",
    "grads": "grads",
    "optimizer": "optimizer",
    "optimizer_scratch": "temporaries",
    "activations": "activations",
    "inputs": "activations",
    "temporaries": "temporaries",
}


@dataclass
class MemoryReport:
    """Peak memory of a few training steps and what it was made of at the peak."""

    peak_bytes: int
    peak_by_category: dict[str, int]
    method: str
    cuda_max_allocated: int | None = None
    cuda_max_reserved: int | None = None
    raw_by_category: dict[str, int] = field(default_factory=dict)  # before folding into CATEGORIES
    optimizer_state_bytes: int = 0  # counted from the optimizer's tensors after the last step
    device: str = "cpu"


def to_record(report: MemoryReport) -> dict[str, Any]:
    """The run record's ``memory`` entry, minus ``optimizer_state_bytes`` (the runner adds it)."""
    return {
        "peak_bytes": int(report.peak_bytes),
        "peak_by_category": {key: int(report.peak_by_category.get(key, 0)) for key in CATEGORIES},
        "method": report.method,
        "cuda_max_allocated": report.cuda_max_allocated,
        "cuda_max_reserved": report.cuda_max_reserved,
    }


class _NoHandle:
    def remove(self) -> None:
        pass


def _no_multi_grad_hook(tensors: Any, fn: Any, mode: str = "all") -> _NoHandle:
    """Stands in for ``register_multi_grad_hook`` inside ModTracker while a ``_PeakTracker`` runs.

    ModTracker hangs an "all"-mode multi-grad hook on every module's inputs to follow the
    module stack through backward. The hook's closure holds the inputs' autograd nodes, and
    the hook is stored on those nodes, a cycle through C++ that the garbage collector cannot
    see: on our ViT, ResNet and GPT every parameter of the model outlived the measurement,
    one model per memory pass (on CUDA, ``cuda_max_allocated`` rose cell after cell in one
    worker). optbench reads no per-module backward statistics: the categories it reports
    come from whether autograd is running (``is_bw``, the graph task id), which this leaves
    alone. The smoke memory passes of five tasks (adamw and smmf on each) gave the same peaks
    and breakdowns with and without it, and ``tests/test_memory.py`` checks that the model
    is freed and that the exact-count breakdowns hold.
    """
    return _NoHandle()


class _PeakTracker(MemTracker):
    """MemTracker that knows which storages were live at the device's peak.

    Every storage gets a birth and a death time on a clock that ticks at each change of the
    snapshot; the storages live at the peak are those born at or before the peak's tick and
    not dead by then. MemTracker's own per-module peak snapshots are skipped: they cost a
    pass over every module at every op, which dominated the run time of large models.
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self._device_of_interest = device
        self._clock = 0
        self._peak_clock = 0
        self._born: list[Any] = []  # every _WeakRefInfo ever counted, in birth order
        self._real_multi_grad_hook: Any = None

    def _update_snap(self, u_type, winfo, old_mem_consumed=None, old_reftype=None) -> None:  # noqa: ANN001
        super()._update_snap(u_type, winfo, old_mem_consumed=old_mem_consumed, old_reftype=old_reftype)
        self._clock += 1
        if u_type == _UpdateType.ADD:
            winfo.optbench_born, winfo.optbench_died = self._clock, None
            self._born.append(winfo)
        elif u_type == _UpdateType.DEL:
            winfo.optbench_died = self._clock

    def _update_peak_stats(self, peak_state) -> None:  # noqa: ANN001 - MemTracker's signature
        dev = self._device_of_interest
        snap = self._curr_mem_snap.get(dev)
        total = snap[_TOTAL_KEY] if snap else 0
        if total > self._peak_mem.get(dev, 0):
            self._peak_mem[dev] = total
            self._peak_mem_snap[dev] = dict(snap)
            self._peak_clock = self._clock

    def __enter__(self) -> _PeakTracker:
        self._real_multi_grad_hook = getattr(_mod_tracker, "register_multi_grad_hook", None)
        if self._real_multi_grad_hook is not None:
            _mod_tracker.register_multi_grad_hook = _no_multi_grad_hook
        try:
            super().__enter__()
        except BaseException:
            self._restore_multi_grad_hook()
            raise
        self._peak_clock = self._clock
        return self

    def __exit__(self, *args: Any) -> None:
        try:
            super().__exit__(*args)
        finally:
            self._restore_multi_grad_hook()

    def _restore_multi_grad_hook(self) -> None:
        if self._real_multi_grad_hook is not None:
            _mod_tracker.register_multi_grad_hook = self._real_multi_grad_hook

    @property
    def peak_live(self) -> list[Any]:
        """The storage records live at the peak, on the device of interest."""
        t = self._peak_clock
        return [w for w in self._born if w.device == self._device_of_interest and w.optbench_born <= t
                and (w.optbench_died is None or w.optbench_died > t)]

    def track_as(self, reftype: _MemRefType, tensors: Iterable[torch.Tensor]) -> set[int]:
        """File ``tensors`` under ``reftype`` (tracking them if new); return their records' ids."""
        ids: set[int] = set()
        for t in tensors:
            ids.update(id(w) for w in self._update_and_maybe_create_winfos(t, reftype))
        return ids

    def peak_device_bytes(self) -> int:
        return int(self._peak_mem.get(self._device_of_interest, 0))


def model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    raise ValueError(f"{type(model).__name__} has no parameters or buffers; cannot tell its device")


def _prefetch(it: Iterator[Any], steps: int) -> list[Any]:
    out = []
    for i in range(steps):
        try:
            out.append(next(it))
        except StopIteration:
            raise ValueError(f"batches ran out after {i} batch(es); {steps} steps need {steps}") from None
    return out


def _tracked_run(model, optimizer, batches, train_step: TrainingStep, device) -> MemoryReport:
    tracker = _PeakTracker(device)
    tracker.track_external(model)
    state_ids = tracker.track_as(_MemRefType.OPT, state_tensors(optimizer))
    with tracker:
        for i, batch in enumerate(batches):
            tracker.track_as(_MemRefType.OTH, iter_tensors(batch))
            batches[i] = None  # drop our reference so the batch is freed after its step
            loss = train_step(model, optimizer, batch, i + 1)
            del batch, loss
            state_ids |= tracker.track_as(_MemRefType.OPT, state_tensors(optimizer))
            tracker.reset_mod_stats()  # MemTracker refuses a second forward of a root module otherwise
    method = (
        f"torch MemTracker (tensor-level, {device.type}), peak over steps 1-{len(batches)}; "
        "breakdown at the peak, tensors filed by final role; params include buffers, "
        "activations include the input batch"
    )
    return _report(tracker, state_ids, optimizer, device, method)


def _report(tracker: _PeakTracker, state_ids: set[int], optimizer: torch.optim.Optimizer, device: torch.device,
            method: str) -> MemoryReport:
    """The tracker's peak with its breakdown: storages live at the peak, filed by their final role."""
    raw = dict.fromkeys(list(_RAW_NAMES.values()) + ["optimizer_scratch"], 0)
    for winfo in tracker.peak_live:
        name = _RAW_NAMES[winfo.reftype]
        if name == "optimizer" and id(winfo) not in state_ids:
            name = "optimizer_scratch"
        raw[name] += winfo.mem_consumed
    peak = tracker.peak_device_bytes()
    by_cat = dict.fromkeys(CATEGORIES, 0)
    for name, nbytes in raw.items():
        by_cat[_FOLD[name]] += nbytes
    if sum(by_cat.values()) != peak:  # every live storage is filed once; a mismatch is a tracking bug
        raise RuntimeError(f"MemTracker breakdown {by_cat} does not add up to its peak {peak}")
    if by_cat["params"] <= 0:  # the parameters are always live: seeing none means the hooks never ran
        raise RuntimeError(f"MemTracker saw no parameter bytes at its peak {peak} (torch {torch.__version__})")
    return MemoryReport(peak_bytes=peak, peak_by_category=by_cat, method=method, raw_by_category=raw,
                        optimizer_state_bytes=optimizer_state_bytes(optimizer), device=str(device))


def measure_optimizer_steps(model: nn.Module, optimizer: torch.optim.Optimizer, *, steps: int = 2) -> MemoryReport:
    """Peak of ``steps`` calls of ``optimizer.step()`` alone, as right after a backward pass.

    Every trainable parameter without a gradient gets a zero one first (``zeros_like``, the
    parameter's dtype). No forward or backward runs: this is the optimizer's share of a
    training step (its lazily created state and its step scratch), which
    :mod:`optbench.project` adds to a forward/backward measured once per model.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    device = model_device(model)
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    tracker = _PeakTracker(device)
    tracker.track_external(model)  # params, buffers and their gradients
    state_ids = tracker.track_as(_MemRefType.OPT, state_tensors(optimizer))
    with tracker:
        for _ in range(steps):
            optimizer.step()
            state_ids |= tracker.track_as(_MemRefType.OPT, state_tensors(optimizer))
    method = f"torch MemTracker (tensor-level, {device.type}), {steps} optimizer steps with every gradient present"
    return _report(tracker, state_ids, optimizer, device, method)


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        seen[st.data_ptr() or id(st)] = st.nbytes()
    return sum(seen.values())


class _Counter(StepWatch):
    """The fallback's view inside a step: tensors saved for backward (activations) and the gradients."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.batch, self.saved = model, None, []
        self.activations = self.grads = 0

    def forward(self):  # noqa: ANN201 - a context manager
        return torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.saved.append(t)
        return t

    def grads_ready(self) -> None:
        # saved tensors that are parameters are not activations
        param_ptrs = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        acts = [t for t in self.saved if t.untyped_storage().data_ptr() not in param_ptrs]
        self.activations = max(self.activations, _storage_bytes(acts + list(iter_tensors(self.batch))))
        self.saved.clear()
        self.grads = max(self.grads, _storage_bytes(p.grad for p in self.model.parameters() if p.grad is not None))


def _counted_run(model, optimizer, batches, train_step: TrainingStep, device, why: str) -> MemoryReport:
    """Fallback: count tensors directly instead of tracking every allocation."""
    params = _storage_bytes(list(model.parameters()) + list(model.buffers()))
    counter = _Counter(model)
    for i, batch in enumerate(batches):
        batches[i] = None
        counter.batch = batch
        train_step(model, optimizer, batch, i + 1, counter)
        counter.batch = None
        del batch
    opt_bytes = optimizer_state_bytes(optimizer)
    by_cat = {"params": params, "grads": counter.grads, "optimizer": opt_bytes, "activations": counter.activations,
              "temporaries": 0}
    method = (
        f"fallback (MemTracker failed: {why}): params, grads and optimizer state counted from tensors, "
        f"activations = bytes saved for backward plus the batch, temporaries not measured; "
        f"peak_bytes = their sum (an estimate, not a tracked peak), steps 1-{len(batches)}"
    )
    return MemoryReport(peak_bytes=sum(by_cat.values()), peak_by_category=by_cat, method=method,
                        raw_by_category=dict(by_cat), optimizer_state_bytes=opt_bytes, device=str(device))


def measure_training_memory(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Any] | Iterator[Any],
    train_step: TrainingStep | LossFn,
    *,
    steps: int = 2,
) -> MemoryReport:
    """Run ``steps`` training steps under tensor-level tracking and report the peak.

    Each step is ``train_step`` (``optbench.loop.TrainingStep``, the step the timed pass runs:
    autocast, forward, backward, clipping, lr schedule, ``optimizer.step()``, ``zero_grad``); a
    bare loss function means ``TrainingStep(loss_fn)``. ``model`` and ``optimizer`` are trained
    by those steps; run this on a copy if that matters. ``batches`` yields what the loss takes;
    ``steps`` of them are used.
    """
    if not isinstance(train_step, TrainingStep):
        train_step = TrainingStep(train_step)
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    device = model_device(model)
    # A list is read again from its start by the fallback; an iterator is read on.
    source = batches if isinstance(batches, Iterator) else None
    todo = _prefetch(source if source is not None else iter(batches), steps)
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    if on_cuda:
        _reset_cuda_peaks(device)
    try:
        incompatible = tracker_incompatibility()
        if incompatible:
            raise RuntimeError(incompatible)
        # the list is handed over: the run drops each batch after its step
        report = _tracked_run(model, optimizer, todo, train_step, device)
    except Exception as exc:  # noqa: BLE001 - any tracker failure falls back, and the method says why
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        todo = _prefetch(source if source is not None else iter(batches), steps)
        if on_cuda:
            _reset_cuda_peaks(device)
        report = _counted_run(model, optimizer, todo, train_step, device, why)
    if on_cuda:
        torch.cuda.synchronize(device)
        report.cuda_max_allocated = int(torch.cuda.max_memory_allocated(device))
        report.cuda_max_reserved = int(torch.cuda.max_memory_reserved(device))
        report.method += f"; {CUDA_FIGURES}"
    return report


CUDA_FIGURES = (
    "cuda_max_allocated/cuda_max_reserved: torch's caching-allocator peaks over the same steps after "
    "gc.collect, empty_cache and reset_peak_memory_stats; unlike peak_bytes they include the data set on "
    "the device, library workspaces and allocator rounding"
)


def _reset_cuda_peaks(device: torch.device) -> None:
    """Free what earlier runs left (unreachable tensors, cached blocks), then restart the peaks from now."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)


# The private MemTracker pieces _PeakTracker relies on: (attribute, parameters it must accept).
_TRACKER_INTERNALS = {
    "_update_snap": ("u_type", "winfo", "old_mem_consumed", "old_reftype"),
    "_update_peak_stats": ("peak_state",),
    "_update_and_maybe_create_winfos": (),
    "track_external": (),
    "reset_mod_stats": (),
}


def tracker_incompatibility() -> str | None:
    """Why this torch's MemTracker does not fit ``_PeakTracker`` (names the missing piece), or None."""
    for name, params in _TRACKER_INTERNALS.items():
        method = getattr(MemTracker, name, None)
        if not callable(method):
            return f"torch {torch.__version__}'s MemTracker has no {name}()"
        missing = set(params) - set(inspect.signature(method).parameters)
        if missing:
            return f"torch {torch.__version__}'s MemTracker.{name}() takes no {', '.join(sorted(missing))}"
    for member in ("PARAM", "BUFFER", "GRAD", "ACT", "TEMP", "OPT", "OTH"):
        if not hasattr(_MemRefType, member):
            return f"torch {torch.__version__}'s MemTracker has no reference type {member}"
    if not (hasattr(_UpdateType, "ADD") and hasattr(_UpdateType, "DEL")):
        return f"torch {torch.__version__}'s MemTracker has no ADD/DEL update types"
    return None


def report_dict(report: MemoryReport) -> dict[str, Any]:
    """Everything in the report as plain data (for JSON output)."""
    return asdict(report)
