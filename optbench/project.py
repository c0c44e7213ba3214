"""Memory at scale without allocating it: optimizer state and peak training memory per optimizer.

A workload's model (:mod:`optbench.workloads`) is built under ``FakeTensorMode``
(:mod:`optbench.fake`: tensors carry shape, dtype and device but no data), each optimizer is
built through its spec, and training steps run under the tensor-level tracking of
:mod:`optbench.memory`, through the one training step (:mod:`optbench.loop`). Every figure then
comes from the same code path as a measurement on real tensors, without the memory.

Where an optimizer cannot run on fake tensors (custom kernels without a fake
implementation, ``.item()`` on a tensor, an unmet requirement), its state is the spec's
exact ``state_bytes(model, **hparams)`` formula and its peak is estimated as the tracked
peak of the same steps with a stateless optimizer (SGD without momentum) plus that state;
scratch memory of the optimizer step is then missing. The ``method`` of every row says
which way each figure was obtained, and ``note`` says why.

By default the forward/backward of a model is tracked once (with stateless SGD) and each
optimizer's own steps are tracked apart, with every gradient present; the peak is the larger
of the two pictures (``compose_peak``). ``--full-steps`` tracks whole training steps per
optimizer instead (slower; the two agree wherever an optimizer does not hook into the
backward pass). Optimizers whose spec ``needs_model_info`` are reported as "needs model
metadata" on models whose roles were only derived from module types, rather than run on
guessed roles. :mod:`optbench.projection_tables` turns a projection into text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException

from optbench import registry
from optbench.fake import fake_world
from optbench.memory import MemoryReport, measure_optimizer_steps, measure_training_memory
from optbench.model_info import get_model_info
from optbench.state import optimizer_state_bytes
from optbench.workloads import Workload, derive_roles
from optbench.zoo import DEFAULT_STEPS

BASELINE = "adamw"


@dataclass
class ProjectionRow:
    optimizer: str
    status: str  # "ok", "needs model metadata", "error"
    state_bytes: int | None = None
    peak_bytes: int | None = None
    peak_by_category: dict[str, int] = field(default_factory=dict)
    method: str = ""  # "state: measured|formula; peak: tracked|estimate"
    state_ratio: float | None = None  # to AdamW
    peak_ratio: float | None = None
    formula_state_bytes: int | None = None
    note: str = ""


@dataclass
class Projection:
    model: str
    description: str
    batch: str
    dtype: str
    n_params: int
    param_bytes: int
    metadata: str
    steps: int
    rows: list[ProjectionRow]
    notes: list[str] = field(default_factory=list)
    roles: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# torch.compile's reason for a frame it skips while a dispatch mode (the tracker, fake tensors) is active
COMPILE_UNDER_DISPATCH_MODE = "torch dispatch mode present"


def _short(exc: BaseException) -> str:
    """Why an optimizer could not be projected, in one line for the row's note."""
    if isinstance(exc, DataDependentOutputException):
        return f"it reads a tensor's value ({exc.func}, e.g. .item()), which fake tensors do not have"
    if COMPILE_UNDER_DISPATCH_MODE in str(exc):  # the first line only says that no frame was compiled
        return ("its step runs through torch.compile, which does not trace under the memory tracker's dispatch "
                "mode")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}"


def stateless_run(workload: Workload) -> MemoryReport:
    """Tracked peak of one training step under SGD without momentum: no state, no step scratch.

    This is the forward/backward of the workload on its own; a stateful optimizer adds its
    state to every moment of it (from the second step on, the state exists throughout).
    """
    with fake_world(workload.dtype):
        model = workload.build_model()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.0,
                              foreach=False)
        return measure_training_memory(model, opt, workload.batches(), workload.loss_fn, steps=1)


def compose_peak(stateless: MemoryReport, init_state: int, state: int,
                 step: MemoryReport) -> tuple[int, dict[str, int]]:
    """Peak of training with an optimizer, from the stateless forward/backward and the optimizer's steps.

    Candidates: the forward/backward with the state that exists before the first step
    (``init_state``, made when the optimizer was built), the same with the full ``state``
    (every later step), and the optimizer steps themselves (params, all gradients, state
    and the step's scratch, tracked). The largest wins, with its breakdown.
    """
    fwd_bwd = dict(stateless.peak_by_category)
    batch = stateless.raw_by_category.get("inputs", 0)
    with_full = {**fwd_bwd, "optimizer": fwd_bwd["optimizer"] + state}
    candidates = [
        (stateless.peak_bytes + state, with_full),
        (stateless.peak_bytes + init_state, {**fwd_bwd, "optimizer": fwd_bwd["optimizer"] + init_state}),
        # the batch stays alive through the optimizer step, as in a real training step
        (step.peak_bytes + batch, {**step.peak_by_category,
                                   "activations": step.peak_by_category["activations"] + batch}),
    ]
    return max(candidates, key=lambda c: c[0])


def project_optimizer(workload: Workload, name: str, *, steps: int = DEFAULT_STEPS, full_steps: bool = False,
                      stateless: Callable[[], MemoryReport] | None = None) -> ProjectionRow:
    """One optimizer's row: tracked on fake tensors where it runs, else formula plus estimate.

    By default the forward/backward is tracked once per model (``stateless``) and each
    optimizer's ``steps`` optimizer steps are tracked apart (``compose_peak``);
    ``full_steps=True`` tracks ``steps`` whole training steps per optimizer instead (slower;
    the two agree wherever an optimizer does not hook into the backward pass).
    """
    spec = registry.get_optimizer(name)
    hparams = spec.resolve_hparams({})
    get_stateless = stateless or (lambda: stateless_run(workload))
    failure = formula_error = None
    with fake_world(workload.dtype):
        model = workload.build_model()
        if spec.needs_model_info and workload.metadata != "declared":
            return ProjectionRow(name, "needs model metadata",
                                 note="the spec needs model metadata (roles, d_model, n_heads); this model has "
                                      "only roles derived from module types")
        try:
            formula = int(spec.state_bytes(model, **hparams))
        except Exception as exc:  # noqa: BLE001 - reported in the row
            formula, formula_error = None, _short(exc)
        reason = spec.unavailable_reason("cpu")
        if reason is not None:
            failure = f"cannot run here ({reason})"
        else:
            try:
                opt = spec.build(model, spec.default_lr, **hparams)
            except ValueError as exc:  # the spec refuses this model (e.g. missing widths): no figures to give
                return ProjectionRow(name, "error", formula_state_bytes=formula,
                                     note=f"cannot build for this model: {_short(exc)}")
            except Exception as exc:  # noqa: BLE001 - e.g. a package reading tensor values while building
                failure = _short(exc)
        if failure is None:
            try:
                init_state = optimizer_state_bytes(opt)
                if full_steps:
                    report = measure_training_memory(model, opt, workload.batches(), workload.loss_fn, steps=steps)
                else:
                    report = measure_optimizer_steps(model, opt, steps=steps)
                if not report.method.startswith("torch MemTracker"):
                    raise RuntimeError(report.method)
            except Exception as exc:  # noqa: BLE001 - falls back to the formula; the note says why
                failure = _short(exc)
    if failure is None:
        state = report.optimizer_state_bytes
        if full_steps:
            peak, by_cat, how = report.peak_bytes, dict(report.peak_by_category), "tracked"
        else:
            (peak, by_cat), how = compose_peak(get_stateless(), init_state, state, report), "composed"
        note = ""
        if formula is None:
            note = f"spec formula failed: {formula_error}"
        elif formula != state:
            note = f"spec formula gives {formula} B"
        return ProjectionRow(name, "ok", state, peak, by_cat, f"state: measured; peak: {how}",
                             formula_state_bytes=formula, note=note)
    if formula is None:
        same = formula_error is not None and formula_error in failure
        return ProjectionRow(name, "error", note=f"did not run on fake tensors ({failure})"
                                                  + ("" if same else f"; spec formula failed too ({formula_error})"))
    base = get_stateless()
    by_cat = {**base.peak_by_category, "optimizer": base.peak_by_category["optimizer"] + formula}
    return ProjectionRow(name, "ok", formula, base.peak_bytes + formula, by_cat, "state: formula; peak: estimate",
                         formula_state_bytes=formula, note=f"did not run on fake tensors: {failure}")


def project(workload: Workload, optimizer_names: list[str] | None = None, *, steps: int = DEFAULT_STEPS,
            full_steps: bool = False, progress: Callable[[str], None] | None = None) -> Projection:
    """Project every named optimizer (default: all registered) on ``workload``; AdamW is the ratio baseline."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    names = list(optimizer_names or sorted(registry.optimizers()))
    for n in names:
        registry.get_optimizer(n)  # unknown names fail before any work
    if BASELINE not in names:
        names.insert(0, BASELINE)
    cache: dict[str, MemoryReport] = {}

    def stateless() -> MemoryReport:
        if "run" not in cache:
            cache["run"] = stateless_run(workload)
        return cache["run"]

    rows = []
    for n in names:
        if progress:
            progress(n)
        try:
            rows.append(project_optimizer(workload, n, steps=steps, full_steps=full_steps, stateless=stateless))
        except Exception as exc:  # noqa: BLE001 - one optimizer's failure must not stop the table
            rows.append(ProjectionRow(n, "error", note=_short(exc)))
    base = next((r for r in rows if r.optimizer == BASELINE and r.status == "ok"), None)
    for r in rows:
        if base is not None and r.status == "ok":
            r.state_ratio = r.state_bytes / base.state_bytes if base.state_bytes else None
            r.peak_ratio = r.peak_bytes / base.peak_bytes if base.peak_bytes else None
    with fake_world(workload.dtype):
        model = workload.build_model()
        params = [p for p in model.parameters() if p.requires_grad]
        n_params = sum(p.numel() for p in params)
        p_bytes = sum(p.numel() * p.element_size() for p in params)
        info = get_model_info(model, required=False)
        if info is not None and workload.metadata == "declared":
            roles = {"source": "declared", "counts": dict(Counter(map(str, info.roles.values())))}
        else:
            derived, missing = derive_roles(model)
            roles = {"source": "derived from module types", "counts": dict(Counter(map(str, derived.values()))),
                     "unresolved": missing}
    return Projection(workload.name, workload.description, workload.batch, str(workload.dtype).replace("torch.", ""),
                      n_params, p_bytes, workload.metadata, steps, rows, list(workload.notes), roles)
