"""Adam-mini (Zhang et al., "Adam-mini: Use Fewer Learning Rates To Gain More", ICLR 2025,
arXiv 2406.16793), through the ``adam-mini`` package (``from adam_mini import Adam_mini``).

Adam-mini keeps Adam's full first moment but one second-moment scalar per block: per head for
query/key, per output row for embeddings, output heads, values, attention outputs and MLPs,
one per tensor for everything else; biases get plain Adam. The package picks the block by
substrings of the parameter name, so it is handed names built from the roles the task
declares (``optbench.model_info``), never the model's own module names. After construction
the package's own routing of those names is checked against the roles, so a package change
that silently degrades the partition raises instead of running a different algorithm: the
check compares, parameter by parameter, the block the package routes each one to (in the order
of its ``step``) with the block its role asks for.

Weight decay follows ``optbench.param_groups``' policy. The package decides decay by name
(no decay when the lower-cased name contains "norm", "ln" or "bias"); since each of its param
groups holds one parameter, the build sets every group's ``weight_decay`` from the policy instead,
so what it decays is exactly ``optbench.param_groups.decayed_names(model)``.

Role -> block: query/key -> per head; qkv (fused) -> per head over all 3 projections (values
then get per-head, not per-row, scalars); value, attn_out, mlp_in, mlp_out, linear,
embedding, head, classifier -> per row (2-D only); biases and norm shifts (a ``norm`` parameter
whose PyTorch attribute is ``bias``) -> Adam; everything else (norm scales, position
embeddings, convs, recurrent weights) -> one scalar, as the package does for GPT-2's ``wpe``
and for unknown names.
"""

from __future__ import annotations

import torch
from optbench.optimizers._common import check_betas, check_lr, check_nonnegative
from torch import nn

from optbench.model_info import ModelInfo, get_model_info
from optbench.param_groups import decayed_names
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec, Requirements

# A name stem the package routes to the wanted block (see adam_mini/adam_mini.py: Adam_mini.__init__).
HEAD_STEMS = {"query": "q_proj", "key": "k_proj", "qkv": "q_proj"}
ROW_STEMS = {"value": "v_proj", "attn_out": "o_proj", "mlp_in": "mlp", "mlp_out": "mlp", "linear": "mlp",
             "embedding": "embd", "head": "lm_head", "classifier": "output"}


def block_kind(role: str, ndim: int, attribute: str = "") -> str:
    """Which Adam-mini block a parameter of ``role``, ``ndim`` dims and module attribute name belongs to.

    A norm's shift (PyTorch's ``LayerNorm.bias``) is a bias to the package, whichever role a task
    gives it, so a ``norm`` parameter whose attribute is ``bias`` gets plain Adam, as it would under
    the package's own name matching.
    """
    if role == "bias" or (role == "norm" and attribute == "bias"):
        return "adam"
    if ndim == 2 and role in HEAD_STEMS:
        return "head"
    if ndim == 2 and role in ROW_STEMS:
        return "row"
    return "tensor"


def block_name(kind: str, role: str, index: int) -> str:
    """A name the package routes to block ``kind``; `norm` also exempts norm scales from decay."""
    stem = {"adam": "bias", "head": HEAD_STEMS.get(role), "row": ROW_STEMS.get(role)}.get(kind)
    if stem is None:
        stem = "norm" if role == "norm" else "block"
    return f"{stem}.{index}"


def package_block(optimizer, name: str) -> str:
    """The block the installed package routes ``name`` to, in the order of its ``step``."""
    if any(s in name for s in optimizer.adam_block_names):
        return "adam"
    if any(s in name for s in optimizer.wqk_names):
        return "head"
    row_sets = (optimizer.embd_names, optimizer.output_names, optimizer.wv_names, optimizer.mlp_names,
                optimizer.attn_proj_names)
    if any(s in name for names in row_sets for s in names):
        return "row"
    return "tensor"


def _named(model: nn.Module) -> list[tuple[str, str, str, str, nn.Parameter]]:
    """(model name, name for the package, block kind, role, parameter) for every trainable parameter."""
    info = get_model_info(model)
    out = []
    for index, (name, p) in enumerate(model.named_parameters()):
        if p.requires_grad:
            role = info.role(name)
            kind = block_kind(role, p.ndim, name.rsplit(".", 1)[-1])
            out.append((name, block_name(kind, role, index), kind, role, p))
    return out


def _dims(info: ModelInfo) -> tuple[int, int, int]:
    if info.d_model is None or info.n_heads is None:
        raise ValueError(f"adam-mini needs the model's d_model and n_heads; ModelInfo has d_model={info.d_model}, "
                         f"n_heads={info.n_heads}")
    n_kv = info.n_kv_heads or info.n_heads
    if (info.d_model * info.d_model) % info.n_heads or info.n_heads % n_kv:
        raise ValueError(f"adam-mini needs n_heads to divide d_model**2 and n_kv_heads to divide n_heads; got "
                         f"d_model={info.d_model}, n_heads={info.n_heads}, n_kv_heads={n_kv}")
    return info.d_model, info.n_heads, n_kv


def head_blocks(p: torch.Tensor, info: ModelInfo) -> int:
    """Number of per-head blocks the package cuts a query/key weight into (numel / (d_model**2 / n_heads))."""
    d_model, n_heads, _ = _dims(info)
    head_numel = d_model * d_model // n_heads
    if p.numel() % head_numel:
        raise ValueError(f"adam-mini cannot split a {tuple(p.shape)} query/key weight into heads of "
                         f"{head_numel} elements (d_model={d_model}, n_heads={n_heads})")
    return p.numel() // head_numel


def package_partition(optimizer) -> dict[int, str]:
    """id(parameter) -> the block the installed package routes it to, read from its param groups."""
    return {id(p): package_block(optimizer, g["name"]) for g in optimizer.param_groups for p in g["params"]}


def check_partition(optimizer, model: nn.Module) -> None:
    """Raise if any parameter goes to another block than its role asks for, or heads are not split.

    Compares parameter by parameter (naming each one that moved), so that two swaps that leave
    the counts per block unchanged are caught too.
    """
    info = get_model_info(model)
    _, n_heads, n_kv = _dims(info)
    built = package_partition(optimizer)
    moved = [f"{name} ({role}): expected {kind}, package made {built.get(id(p), 'no block')}"
             for name, _, kind, role, p in _named(model) if built.get(id(p)) != kind]
    if moved:
        raise ValueError(f"adam-mini partition degraded: {'; '.join(moved)}")
    for _, _, kind, role, p in _named(model):
        if kind == "head":
            want = {"query": n_heads, "key": n_kv, "qkv": n_heads + 2 * n_kv}[role]
            got = head_blocks(p, info)
            if got != want:
                raise ValueError(f"adam-mini would split a {role} weight {tuple(p.shape)} into {got} blocks, "
                                 f"expected {want} heads")


def build_adam_mini(model: nn.Module, lr: float, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    check_lr(lr)
    check_betas(betas)
    check_nonnegative(eps=eps, weight_decay=weight_decay)
    d_model, n_heads, n_kv = _dims(get_model_info(model))
    from adam_mini import Adam_mini

    named = _named(model)
    optimizer = Adam_mini([(package_name, p) for _, package_name, _, _, p in named], lr=lr, betas=tuple(betas),
                          eps=eps, weight_decay=weight_decay, dim=d_model, n_heads=n_heads, n_kv_heads=n_kv,
                          verbose=False)
    policy = decayed_names(model)
    decayed = {id(p) for name, _, _, _, p in named if name in policy}
    for group in optimizer.param_groups:  # one parameter per group: the policy, not the package's name rule
        group["weight_decay"] = weight_decay if all(id(p) in decayed for p in group["params"]) else 0.0
    # The package sets world_size to the CUDA device count and then all-gathers in its step;
    # in one process without torch.distributed there is nobody to gather with.
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        optimizer.world_size = 1
    check_partition(optimizer, model)
    return optimizer


def adam_mini_state_bytes(model: nn.Module, **_: object) -> int:
    # Full `m` everywhere; `v` full for biases, one scalar per head / row / tensor otherwise.
    # `step` is a Python int.
    info = get_model_info(model)
    total = 0
    for _, _, kind, _, p in _named(model):
        n, isz = p.numel(), p.element_size()
        scalars = {"adam": n, "tensor": 1}.get(kind) or (head_blocks(p, info) if kind == "head" else p.shape[0])
        total += isz * (n + scalars)
    return total


register_optimizer(
    OptimizerSpec(
        name="adam-mini",
        family="block-adam",
        paper="Zhang et al., ICLR 2025 (arXiv 2406.16793)",
        build=build_adam_mini,
        state_bytes=adam_mini_state_bytes,
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        requires=Requirements(packages=("adam_mini",)),
        needs_model_info=True,
        # Read p, g and exp_avg, write p and exp_avg (20 bytes in float32); one second-moment value
        # per block is a small share.
        bound_bytes_per_param=20,
        description="adam-mini package; blocks from declared roles, d_model/n_heads from the task",
    )
)
