"""SlimAdamW: Adam with its second moment averaged along high-SNR axes.

Kalra, Kirchenbauer, Barkeshli, Goldstein, "When Can You Get Away with Low Memory Adam?"
(2025; reference code github.com/dayal-kalra/low-memory-adam). For a tensor with
compression axes K (a tuple of dims, or ``None``)::

    m = b1*m + (1-b1)*g                              (full size)
    v = b2*v + (1-b2)*mean(g*g, dim=K, keepdim=True) (keepdim, broadcasts against m)
    p = p*(1 - lr*wd)                                (decoupled; the tensors optbench's policy decays)
    p = p - lr * m_hat / (sqrt(v_hat) + eps)         (both moments bias-corrected)

With ``K = None`` everywhere this is AdamW. Weight decay follows ``optbench.param_groups``
(matrices and embeddings, not norms or biases: the reference's ">= 2 dims" rule, by role).

Three implementations of the same step; ``optimizer.optbench_impl`` says which ran:

- **native** (the default on CPU float32 parameters whose axes are one run of consecutive
  dims): ``kernels/slimadam.c``, every tensor in one call, built on first use
  (``optbench.optimizers._native``). A tensor is seen as (outer, mid, inner) with v averaged
  over mid; per slab of whole rows it sums g*g over mid, updates v, then m and p in one pass,
  so that the second read of the gradient comes from cache. Its sums add in another order than
  torch's: v agrees to float rounding.
- **compiled** (``compile=True``): ``slimadam_step`` through ``torch.compile``
  (``optbench.optimizers._common.run_step``); the path for CUDA.
- **eager**: the same math with multi-tensor (``torch._foreach_*``) ops.

Step counts are Python ints in the state (no tensor): reading them costs no host-device sync.

Axes come from one of:
- static rules by layer role (the paper's Table 1; see ``ROLE_AXES``), built by
  ``static_rules(info, shapes)`` from the roles a task declares;
- a rules JSON ``{full parameter name: [axes] | null}`` (``rules=`` path or dict; keys
  starting with ``_`` are metadata); ``slimadam-snr`` reads ``optimizers/rules/<task>.json``
  written by ``optbench snr --task <task>``.

Defaults follow optbench's adamw (betas (0.9, 0.999), eps 1e-8, wd 0.01), not the paper's
GPT-2 recipe (betas (0.9, 0.95), eps 1e-8, wd 0.1, clip 1.0), so that ratios against the
baseline compare optimizers, not recipes.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from optbench.optimizers._common import (
    PlannedStep,
    Prepared,
    bias_correction,
    check_betas,
    check_lr,
    check_nonnegative,
    column_sums,
    decay_factor,
    ema_,
)
from optbench.optimizers._keep_dtypes import KeepStateDtypes
from optbench.optimizers._native import KernelStep
from torch import nn

from optbench.model_info import ModelInfo, get_model_info
from optbench.param_groups import split_decay
from optbench.registry import register_optimizer
from optbench.rules import COMPILE_PREFIX, canonical_name, compressed_shape  # noqa: F401 (re-exported)
from optbench.rules import read_rules as load_rules  # the one rules reader, shared with optbench.snr
from optbench.spec import OptimizerSpec, Requirements

Axes = tuple[int, ...] | None
RULES_DIR = Path(__file__).parent / "rules"

# Which axes the paper's Table 1 averages for each optbench role. "fan_in" = every dim but 0
# (dim 1 of an (out, in) weight), "fan_out" = dim 0, "in_channels" = dim 1 only (a conv's input
# channels; its kernel positions keep their own values), "feature" = the last dim (one value per
# token / position of an embedding), None = keep full.
ROLE_AXES: dict[str, str | None] = {
    "query": "fan_in",  # Table 1: query, key -> fan-in
    "key": "fan_in",
    "qkv": "fan_in",  # fused q/k/v: two of three row blocks are q/k, so the q/k rule (a choice)
    "value": "fan_out",  # Table 1: value, attention output -> fan-out
    "attn_out": "fan_out",
    "mlp_in": "fan_out",  # Table 1: MLP up/gate/down -> fan-out
    "mlp_out": "fan_out",
    "embedding": "feature",  # Table 1: token embedding (vocab, d) -> one value per token
    "pos_embedding": "feature",  # Table 1: position embedding -> one value per position
    "head": "fan_in",  # Table 1: LM head -> fan-in
    "classifier": "fan_in",  # Table 1: classification layer -> fan-in
    # Table 1: vision first layer -> fan-in. The reference code's rule for it is dims (1,) (utils/slimadam.py,
    # DEFAULT_COMPRESSION_RULES["vision_first"]): input channels only, not the kernel dims.
    "conv_in": "in_channels",
    "conv": "in_channels",  # not in Table 1: treated like the vision first layer (a choice)
    "linear": "fan_out",  # not in Table 1: a generic hidden linear, treated like an MLP layer (a choice)
    "recurrent": None,  # not in Table 1: kept full rather than guessed
    "norm": None,  # Table 1: norms are never compressed
    "bias": None,
    "other": None,
}


def _kind_to_axes(kind: str | None, ndim: int) -> Axes:
    if kind is None or ndim < 2:
        return None
    if kind == "fan_out":
        return (0,)
    if kind == "fan_in":
        return tuple(range(1, ndim))
    if kind == "in_channels":
        return (1,)
    if kind == "feature":
        return (ndim - 1,)
    raise ValueError(f"unknown axis kind {kind!r}; known: fan_in, fan_out, in_channels, feature")


def static_rules(info: ModelInfo, shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Axes]:
    """Compression axes per parameter from its declared role (the paper's Table 1, ``ROLE_AXES``).

    ``shapes`` gives each parameter's shape; without it every weight is taken as 2-D
    (out, in). Tensors with fewer than 2 dims are never compressed.
    """
    rules: dict[str, Axes] = {}
    for name, role in info.roles.items():
        ndim = len(shapes[name]) if shapes is not None and name in shapes else 2
        rules[name] = _kind_to_axes(ROLE_AXES[role], ndim)
    return rules


def compression_axes(model: nn.Module, rules: str | Path | Mapping[str, Any]) -> dict[str, Axes]:
    """Axes per trainable parameter (canonical names) from ``rules``; unnamed parameters stay full.

    Rules naming parameters the model does not have are an error that lists them: a
    wrapped or renamed model must not silently compress nothing.
    """
    table = load_rules(rules)
    named = {canonical_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    unknown = sorted(set(table) - set(named))
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise ValueError(
            f"compression rules name parameters the model does not have: {shown}; "
            f"model parameters look like: {', '.join(list(named)[:5])}"
        )
    result: dict[str, Axes] = {}
    for name, param in named.items():
        axes = table.get(name)
        if axes is not None:
            norm = tuple(sorted({a % param.ndim if -param.ndim <= a < param.ndim else a for a in axes}))
            if param.ndim == 0 or any(not 0 <= a < param.ndim for a in norm):
                raise ValueError(f"rule {list(axes)} for {name!r} is out of range for shape {tuple(param.shape)}")
            axes = norm
        result[name] = axes
    return result


def mean_square(grad: torch.Tensor, axes: Axes) -> torch.Tensor:
    """``g*g`` averaged over ``axes`` (keepdim); the full square when ``axes`` is None."""
    sq = grad * grad
    if axes is None:
        return sq
    if axes == (0,) and sq.ndim == 2:  # the mean over rows, by blocks of rows (see column_sums)
        return column_sums(sq).div_(sq.shape[0]).unsqueeze(0)
    return sq.mean(dim=axes, keepdim=True)


class SlimAdamW(PlannedStep, KeepStateDtypes, torch.optim.Optimizer):
    """SlimAdamW; every param group carries ``compress_axes``, one entry per parameter (None = full).

    ``params`` is a list of tensors with ``axes`` aligned to it (one group), or param groups
    that each hold their own ``compress_axes``. The axes travel with ``state_dict``.
    ``native=True`` (default) runs the C kernel where it applies, ``compile=True`` the step
    through ``torch.compile`` instead; ``optbench_impl`` says which step ran ("native",
    "compiled" or "eager").
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor] | Sequence[dict],
        axes: Sequence[Axes] | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        compile: bool = False,
        native: bool = True,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_nonnegative(eps=eps, weight_decay=weight_decay)
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params, "compress_axes": axes}]
        for group in groups:
            group["params"] = list(group["params"])
            group_axes = group.get("compress_axes")
            if group_axes is None or len(group_axes) != len(group["params"]):
                raise ValueError(f"axes has {len(group_axes or [])} entries for {len(group['params'])} parameters")
            group["compress_axes"] = [None if a is None else tuple(a) for a in group_axes]
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(groups, defaults)
        self._choose_step(compile, native, "slimadam", NativeStep, self._native_fits)

    def _native_fits(self) -> bool:
        """Whether the C kernel takes every parameter: CPU float32, axes one run of consecutive dims."""
        return all(p.device.type == "cpu" and p.dtype == torch.float32 and kernel_view(p.shape, axes) is not None
                   for g in self.param_groups for p, axes in zip(g["params"], g["compress_axes"], strict=True))

    def _step_pieces(self):
        return _describe, _step_scalars, slimadam_step, slimadam_step_foreach, self._native


def _describe(p: torch.Tensor, group: dict, state: dict) -> Prepared:
    """SlimAdam's state for ``p`` (made on its first step) and its static layout entry: its axes."""
    axes = next(a for q, a in zip(group["params"], group["compress_axes"], strict=True) if q is p)
    if not state:
        state["step"] = 0  # a Python int: no tensor op per step, nothing to read back
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros(compressed_shape(p.shape, axes), dtype=p.dtype, device=p.device)
    return Prepared(p, (state["exp_avg"], state["exp_avg_sq"]), (axes,))


def _step_scalars(step: int, group: dict) -> tuple[float, ...]:
    """(b1, b2, eps, lr / (1 - b1^t), sqrt(1 - b2^t), 1 - lr*wd) for a tensor at step ``step``."""
    (beta1, beta2), lr = group["betas"], float(group["lr"])
    return (beta1, beta2, group["eps"], lr / bias_correction(beta1, step), math.sqrt(bias_correction(beta2, step)),
            decay_factor(lr, group["weight_decay"]))


def slimadam_step(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[tuple[torch.Tensor, ...]],
                  layout: tuple, slimadam_scalars: list[tuple[float, ...]]) -> None:
    """Every tensor's step, one at a time (what ``torch.compile`` fuses).

    ``states[i]`` = (exp_avg, exp_avg_sq); ``layout[i]`` = (compression axes, scalar slot) of
    tensor i; ``slimadam_scalars[j]`` = (b1, b2, eps, lr / (1 - b1^t), sqrt(1 - b2^t), 1 - lr*wd).
    """
    for p, g, (m, v), (axes, slot) in zip(params, grads, states, layout, strict=True):
        b1, b2, eps, step_size, bc2_sqrt, decay = slimadam_scalars[slot]
        ema_(m, g, b1)
        ema_(v, mean_square(g, axes), b2)
        p.mul_(decay).sub_(m / v.sqrt().div_(bc2_sqrt).add_(eps) * step_size)


def slimadam_step_foreach(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[tuple[torch.Tensor, ...]],
                          layout: tuple, slimadam_scalars: list[tuple[float, ...]]) -> None:
    """The same step eagerly: multi-tensor ops over the tensors that share a slot."""
    exp_avgs, exp_avg_sqs = [s[0] for s in states], [s[1] for s in states]
    for slot, (b1, b2, eps, step_size, bc2_sqrt, decay) in enumerate(slimadam_scalars):
        idx = [i for i, (_, s) in enumerate(layout) if s == slot]
        full = [i for i in idx if layout[i][0] is None]
        slim = [i for i in idx if layout[i][0] is not None]
        torch._foreach_lerp_([exp_avgs[i] for i in idx], [grads[i] for i in idx], 1 - b1)
        v_full, g_full = [exp_avg_sqs[i] for i in full], [grads[i] for i in full]
        if full:
            torch._foreach_mul_(v_full, b2)
            torch._foreach_addcmul_(v_full, g_full, g_full, 1 - b2)
        if slim:
            v_slim = [exp_avg_sqs[i] for i in slim]
            torch._foreach_mul_(v_slim, b2)
            torch._foreach_add_(v_slim, [mean_square(grads[i], layout[i][0]) for i in slim], alpha=1 - b2)
        if decay != 1:
            torch._foreach_mul_([params[i] for i in idx], decay)
        denom = torch._foreach_sqrt([exp_avg_sqs[i] for i in idx])
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, eps)
        dense = [k for k, i in enumerate(idx) if i in full]
        if dense:
            torch._foreach_addcdiv_([params[idx[k]] for k in dense], [exp_avgs[idx[k]] for k in dense],
                                    [denom[k] for k in dense], -step_size)
        for k, i in enumerate(idx):  # a compressed denominator broadcasts: one op per tensor
            if layout[i][0] is not None:
                params[i].addcdiv_(exp_avgs[i], denom[k], value=-step_size)


# ----------------------------------------------------------------------------- the C kernel's step


class _Tensor(ctypes.Structure):
    """``stensor`` of ``kernels/slimadam.c``: a tensor as (outer, mid, inner), v averaged over mid."""

    _fields_ = [("outer", ctypes.c_int64), ("mid", ctypes.c_int64), ("inner", ctypes.c_int64),
                ("p", ctypes.c_void_p), ("g", ctypes.c_void_p), ("m", ctypes.c_void_p), ("v", ctypes.c_void_p),
                ("full", ctypes.c_int64), ("group", ctypes.c_int64)]


class _Group(ctypes.Structure):
    """``sgroup``: a scalar slot's numbers, as float32 (what the torch step computes with)."""

    _fields_ = [(name, ctypes.c_float) for name in ("b1", "one_minus_b1", "b2", "one_minus_b2", "eps", "step_size",
                                                     "bc2_sqrt", "decay")]


def kernel_view(shape: Sequence[int], axes: Axes) -> tuple[int, int, int] | None:
    """(outer, mid, inner) of a tensor whose second moment is averaged over ``axes``: the dims
    before, inside and after them; None when the axes are not one run of consecutive dims (the
    kernel does not take those)."""
    if axes is None:
        return math.prod(shape), 1, 1
    first, last = min(axes), max(axes)
    if tuple(range(first, last + 1)) != tuple(axes):
        return None
    return math.prod(shape[:first]), math.prod(shape[first:last + 1]), math.prod(shape[last + 1:])


class NativeStep(KernelStep):
    """SlimAdam's step through ``kernels/slimadam.c``: every tensor in one call. It makes no torch
    allocation: its per-item buffers, two rows of at most ``COLS`` floats, live on the C stack."""

    def __init__(self, library: ctypes.CDLL) -> None:
        super().__init__()
        self.fn, self.items = library.optbench_slimadam_step, library.optbench_slimadam_items
        self.fn.restype, self.items.restype = ctypes.c_int, ctypes.c_int64
        self.fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        self.items.argtypes = [ctypes.c_int64, ctypes.c_void_p]
        self.work = None

    def _run(self, params, layout, scalars) -> None:
        groups = (_Group * len(scalars))()
        for i, (b1, b2, eps, step_size, bc2_sqrt, decay) in enumerate(scalars):
            groups[i] = _Group(b1, 1 - b1, b2, 1 - b2, eps, step_size, bc2_sqrt, decay)
        self.fn(len(params), ctypes.addressof(self.tensors), ctypes.addressof(groups), ctypes.addressof(self.work),
                torch.get_num_threads())

    def _describe(self, params, states, layout) -> bool:
        tensors = (_Tensor * len(params))()
        for i, (p, (m, v), (axes, slot)) in enumerate(zip(params, states, layout, strict=True)):
            view = kernel_view(p.shape, axes)
            if view is None or any(t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous()
                                   for t in (p, m, v)):
                return False
            tensors[i] = _Tensor(*view, p.data_ptr(), 0, m.data_ptr(), v.data_ptr(), int(axes is None), slot)
        items = self.items(len(params), ctypes.addressof(tensors))
        self.tensors, self.work = tensors, (ctypes.c_int64 * (5 * items))()
        return True


# ----------------------------------------------------------------------------- registration


def _trainable_named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(canonical_name(n), p) for n, p in model.named_parameters() if p.requires_grad]


def _static_axes(model: nn.Module) -> dict[str, Axes]:
    info = get_model_info(model)
    named = _trainable_named(model)
    shapes = {n: tuple(p.shape) for n, p in named}
    roles = {canonical_name(n): r for n, r in info.roles.items()}
    info_c = ModelInfo(roles=roles, d_model=info.d_model, n_heads=info.n_heads, task=info.task)
    return compression_axes(model, static_rules(info_c, shapes))


def _resolve_axes(model: nn.Module, rules: str | Path | Mapping | None) -> dict[str, Axes]:
    return _static_axes(model) if rules is None else compression_axes(model, rules)


def _build(model: nn.Module, lr: float, axes: dict[str, Axes], betas, eps, weight_decay, compile) -> SlimAdamW:
    """Param groups from optbench's weight-decay policy (``split_decay``), each with its axes."""
    decayed, kept = split_decay(model)
    groups = [{"params": [p for _, p in named], "compress_axes": [axes[canonical_name(n)] for n, _ in named],
               "weight_decay": wd} for named, wd in ((decayed, weight_decay), (kept, 0.0)) if named]
    return SlimAdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, compile=compile)


def _check_hparams(lr: float, betas, eps: float, weight_decay: float) -> None:
    check_lr(lr)
    if len(tuple(betas)) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    check_betas(betas)
    check_nonnegative(eps=eps, weight_decay=weight_decay)


def build_slimadam(model: nn.Module, lr: float, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                   rules: str | Path | Mapping | None = None, compile: bool = False) -> SlimAdamW:
    """SlimAdamW with static role rules (``rules=None``) or a rules JSON path/dict."""
    _check_hparams(lr, betas, eps, weight_decay)
    return _build(model, lr, _resolve_axes(model, rules), betas, eps, weight_decay, compile)


def _v_bytes(model: nn.Module, axes: dict[str, Axes]) -> int:
    total = 0
    for name, p in _trainable_named(model):
        total += p.numel() * p.element_size()  # exp_avg
        total += math.prod(compressed_shape(p.shape, axes[name])) * p.element_size()  # exp_avg_sq
    return total


def slimadam_state_bytes(model: nn.Module, rules: str | Path | Mapping | None = None, **_: object) -> int:
    return _v_bytes(model, _resolve_axes(model, rules))


def snr_rules_path(task: str) -> Path:
    return RULES_DIR / f"{task}.json"


def snr_rules_command(task: str) -> str:
    """The command that writes ``task``'s rules where slimadam-snr reads them: the proxy run at the
    preset and on the device of the task's tier (a GPU-tier model is too large for a CPU run)."""
    from optbench.registry import tasks

    spec = tasks().get(task)  # a task from a plugin or a test may not be registered: the CPU proxy run
    preset, device = ("gpu", "cuda") if spec is not None and spec.tier == "gpu" else ("cpu", "cpu")
    return f"optbench snr --task {task} --preset {preset} --device {device} --rules-out {snr_rules_path(task)}"


def snr_rules_for_task(task: str) -> str | None:
    """slimadam-snr's task check: a reason, naming the command that makes them, when ``task`` has no rules."""
    if snr_rules_path(task).is_file():
        return None
    return f"no SNR rules for task {task!r}; make them with `{snr_rules_command(task)}`"


def _task_rules(model: nn.Module) -> Path:
    task = get_model_info(model).task
    if task is None:
        raise ValueError("slimadam-snr needs the model's task (ModelInfo.task) to find its rules file; it is None")
    reason = snr_rules_for_task(task)
    if reason:
        raise ValueError(reason)
    return snr_rules_path(task)


def build_slimadam_snr(model: nn.Module, lr: float, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                       compile: bool = False) -> SlimAdamW:
    """SlimAdamW with the SNR-derived rules committed for the model's task."""
    _check_hparams(lr, betas, eps, weight_decay)
    return _build(model, lr, compression_axes(model, _task_rules(model)), betas, eps, weight_decay, compile)


def slimadam_snr_state_bytes(model: nn.Module, **_: object) -> int:
    return _v_bytes(model, compression_axes(model, _task_rules(model)))


def snr_rules_available() -> str | None:
    """Requirements check: a reason when no task has SNR rules committed."""
    if not any(RULES_DIR.glob("*.json")):
        return "no SNR rules committed yet; make them with `optbench snr --task T`"
    return None


PAPER = "Kalra, Kirchenbauer, Barkeshli & Goldstein, When Can You Get Away with Low Memory Adam? (2025), Table 1"

register_optimizer(
    OptimizerSpec(
        name="slimadam",
        family="compressed-second-moment",
        paper=PAPER,
        build=build_slimadam,
        state_bytes=slimadam_state_bytes,
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        needs_model_info=True,
        input_files=lambda task, hparams: [hparams["rules"]] if isinstance(hparams.get("rules"), str) else [],
        # Read p, g and exp_avg, write p and exp_avg: 20 bytes in float32; the compressed exp_avg_sq
        # is one value per row or column.
        bound_bytes_per_param=20,
        description="SlimAdamW, second moment averaged along axes chosen by layer role (Table 1)",
    )
)

register_optimizer(
    OptimizerSpec(
        name="slimadam-snr",
        family="compressed-second-moment",
        paper=PAPER + ", SNR rules",
        build=build_slimadam_snr,
        state_bytes=slimadam_snr_state_bytes,
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        requires=Requirements(check=snr_rules_available),
        needs_model_info=True,
        input_files=lambda task, hparams: [snr_rules_path(task)],
        task_check=snr_rules_for_task,
        # Read p, g and exp_avg, write p and exp_avg: 20 bytes in float32; the compressed exp_avg_sq
        # is one value per row or column.
        bound_bytes_per_param=20,
        description="SlimAdamW with per-task rules from `optbench snr` (optimizers/rules/<task>.json)",
    )
)
