"""What a projection trains: a model builder, a batch stream and a loss, from a ``--model`` name.

``resolve_workload`` turns a name into a :class:`Workload`: a built-in shape
(:mod:`optbench.zoo`), ``task:NAME`` (a registered task's model and batches, built for real on
the CPU and then copied to fake tensors: meant for the small CPU-tier tasks), any torchvision
model name, or an importable ``module:factory`` returning a model, or ``(model, example_input)``.
Models without declared metadata get roles derived from module types (``derive_roles``) for
information only.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from optbench import registry
from optbench.fake import fake_copy, skip_init, to_fake
from optbench.loop import LossFn
from optbench.model_info import Role, get_model_info
from optbench.zoo import DTYPES, SHAPES


@dataclass
class Workload:
    """What a projection trains: a model builder and a batch stream, both run inside fake mode."""

    name: str
    build: Callable[[], nn.Module]
    batches: Callable[[], Iterator[Any]]
    loss_fn: LossFn
    description: str
    batch: str  # e.g. "batch 1 x 2048 tokens"
    metadata: str  # "declared" (roles, widths given by the model's author) or "derived" (module types only)
    dtype: torch.dtype = torch.float32
    notes: list[str] = field(default_factory=list)

    def build_model(self) -> nn.Module:
        """The model, initialisers skipped (call inside ``optbench.fake.fake_world``). A factory's
        metadata becomes "declared" or "derived" once it is known whether the model carries any."""
        with skip_init():
            model = self.build()
        if self.metadata == "factory":
            self.metadata = "declared" if get_model_info(model, required=False) is not None else "derived"
        return model


def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    idx, targets = batch
    logits = model(idx)
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten())


def classify_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    images, labels = batch
    return F.cross_entropy(_logits(model(images)).float(), labels)


def generic_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on random labels for (B, C) outputs, else the mean square of the output."""
    out = _logits(model(batch)).float()
    if out.ndim == 2:
        return F.cross_entropy(out, torch.zeros(out.shape[0], dtype=torch.long, device=out.device))
    return out.pow(2).mean()


def _logits(out: Any) -> torch.Tensor:
    """The main output of models that return tuples or named tuples (e.g. Inception's aux logits)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ValueError(f"cannot find the output tensor in a model output of type {type(out).__name__}")


def _token_batches(batch_size: int, seq_len: int, vocab: int) -> Callable[[], Iterator[Any]]:
    def stream() -> Iterator[Any]:
        while True:
            yield (torch.randint(0, vocab, (batch_size, seq_len)), torch.randint(0, vocab, (batch_size, seq_len)))

    return stream


def _image_batches(batch_size: int, side: int, classes: int, dtype: torch.dtype) -> Callable[[], Iterator[Any]]:
    def stream() -> Iterator[Any]:
        while True:
            yield torch.randn(batch_size, 3, side, side, dtype=dtype), torch.randint(0, classes, (batch_size,))

    return stream


def builtin_workload(name: str, *, batch_size: int | None = None, seq_len: int | None = None,
                     dtype: torch.dtype = torch.float32) -> Workload:
    shape = SHAPES[name]
    b = batch_size or shape.batch_size
    n = seq_len or shape.seq_len
    if shape.kind == "lm":
        if shape.max_seq_len is not None and n > shape.max_seq_len:
            raise ValueError(f"--seq-len {n} exceeds {name}'s context of {shape.max_seq_len}")
        return Workload(name, shape.build, _token_batches(b, n, shape.vocab), lm_loss, shape.description,
                        f"batch {b} x {n} tokens", "declared", dtype)
    if seq_len is not None:
        raise ValueError(f"--seq-len applies to language models; {name} is an image model (input {n}x{n})")
    return Workload(name, shape.build, _image_batches(b, n, shape.classes, dtype), classify_loss, shape.description,
                    f"batch {b} images 3x{n}x{n}", "declared", dtype)


def task_workload(name: str, preset: str = "smoke", seed: int = 0) -> Workload:
    """A registered task's model and batches: built for real on the CPU, then copied to fake tensors."""
    spec = registry.get_task(name)
    registry.check_preset(preset)
    inst = spec.instantiate(preset, seed, "cpu")
    real_model = inst.model
    real_batches = inst.batches

    def build() -> nn.Module:
        return fake_copy(real_model)

    def batches() -> Iterator[Any]:
        for batch in real_batches:
            yield to_fake(batch)

    return Workload(f"task:{name}", build, batches, inst.loss_fn, spec.description,
                    f"preset {preset}: batch {spec.budget(preset).batch_size}", "declared",
                    next(real_model.parameters()).dtype,
                    notes=[f"task:{name} is built for real on the CPU ({preset} preset) and copied to fake tensors"])


def derive_roles(model: nn.Module) -> tuple[dict[str, Role], list[str]]:
    """Roles that follow from module types alone, and the parameters whose role does not.

    Linear -> linear, convolution -> conv, normalisation -> norm, embedding -> embedding,
    MultiheadAttention's packed projection -> qkv, biases -> bias. A bare ``nn.Parameter``
    (class tokens, position tables, scales) has no role: guessing one is what this avoids.
    """
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
    roles: dict[str, Role] = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            role = None
            if isinstance(module, norms):
                role = Role.NORM
            elif p_name in ("bias", "in_proj_bias", "bias_k", "bias_v"):
                role = Role.BIAS
            elif isinstance(module, nn.Linear) and p_name == "weight":
                role = Role.LINEAR
            elif isinstance(module, nn.modules.conv._ConvNd) and p_name == "weight":
                role = Role.CONV
            elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and p_name == "weight":
                role = Role.EMBEDDING
            elif isinstance(module, nn.MultiheadAttention):
                role = {"in_proj_weight": Role.QKV, "q_proj_weight": Role.QUERY, "k_proj_weight": Role.KEY,
                        "v_proj_weight": Role.VALUE}.get(p_name)
            if role is not None:
                roles[prefix + p_name] = role
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return roles, [n for n in names if n not in roles]


def torchvision_workload(name: str, *, batch_size: int | None, seq_len: int | None,
                         dtype: torch.dtype) -> Workload:
    import torchvision.models as tvm

    if seq_len is not None:
        raise ValueError(f"--seq-len applies to language models; {name} is a torchvision model")
    side = 224
    with contextlib.suppress(Exception):  # the default weights' preprocessing names the input size (no download)
        side = int(tvm.get_model_weights(name).DEFAULT.transforms().crop_size[0])
    b = batch_size or 32
    return Workload(name, lambda: tvm.get_model(name, weights=None), _image_batches(b, side, 1000, dtype),
                    classify_loss, f"torchvision {name} (weights=None)", f"batch {b} images 3x{side}x{side}",
                    "derived", dtype)


def factory_workload(target: str, *, batch_size: int | None, seq_len: int | None, dtype: torch.dtype) -> Workload:
    """``module:factory``: ``factory()`` returns a model, or ``(model, example_input)`` for one step."""
    module_name, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import model factory {target!r}: {exc}") from None
    if seq_len is not None:
        raise ValueError("--seq-len does not apply to a module:factory model; return (model, example_input)")
    holder: dict[str, Any] = {}

    def build() -> nn.Module:
        out = factory()
        model, example = (out if isinstance(out, tuple) else (out, None))
        if not isinstance(model, nn.Module):
            raise ValueError(f"{target} returned {type(model).__name__}, expected an nn.Module or (module, input)")
        holder["example"] = example
        return model

    def batches() -> Iterator[Any]:
        example = holder.get("example")
        if example is None:
            b = batch_size or 32
            example = torch.randn(b, 3, 224, 224, dtype=dtype)
        while True:
            yield example

    return Workload(target, build, batches, generic_loss, f"user model {target}",
                    "the factory's example input (else batch x 3x224x224)", "factory", dtype,
                    notes=["loss: cross-entropy for (B, C) outputs, else the mean square of the output"])


def resolve_workload(name: str, *, batch_size: int | None = None, seq_len: int | None = None,
                     dtype: str = "fp32", preset: str = "smoke") -> Workload:
    """Turn ``--model`` into a workload: built-in shape, ``task:NAME``, ``module:factory``, or torchvision name."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, DTYPES[dtype])
    for key, value in (("batch size", batch_size), ("sequence length", seq_len)):
        if value is not None and value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
    if name in SHAPES:
        return builtin_workload(name, batch_size=batch_size, seq_len=seq_len, dtype=torch_dtype)
    if name.startswith("task:"):
        if batch_size is not None or seq_len is not None or dtype != "fp32":
            raise ValueError("a task:NAME model uses its preset's batches and dtype; "
                             "drop --batch-size/--seq-len/--dtype")
        return task_workload(name[len("task:"):], preset=preset)
    if ":" in name:
        return factory_workload(name, batch_size=batch_size, seq_len=seq_len, dtype=torch_dtype)
    import torchvision.models as tvm

    if name in tvm.list_models():
        return torchvision_workload(name, batch_size=batch_size, seq_len=seq_len, dtype=torch_dtype)
    raise ValueError(f"unknown model {name!r}; known: {', '.join(SHAPES)}, task:NAME (a registered task), "
                     "a torchvision model name, or module:factory")


