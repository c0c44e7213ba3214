"""Memory at scale without allocating it: optimizer state and peak training memory per optimizer.

A model is built under ``FakeTensorMode`` (tensors carry shape, dtype and device but no
data), each optimizer is built through its spec, and ``steps`` training steps run under
the tensor-level tracking of :mod:`optbench.memory`. Every figure then comes from the
same code path as a measurement on real tensors, without the memory.

Where an optimizer cannot run on fake tensors (custom kernels without a fake
implementation, ``.item()`` on a tensor, an unmet requirement), its state is the spec's
exact ``state_bytes(model, **hparams)`` formula and its peak is estimated as the tracked
peak of the same steps with a stateless optimizer (SGD without momentum) plus that state;
scratch memory of the optimizer step is then missing. The ``method`` of every row says
which way each figure was obtained, and ``note`` says why.

AdamW's default fused kernel has a fake-tensor implementation in torch (``_fused_adamw_``),
so ``adamw`` is projected with the implementation its spec names; no fallback to the
foreach or for-loop path (same state size) is needed.

By default the forward/backward of a model is tracked once (with stateless SGD) and each
optimizer's own steps are tracked apart, with every gradient present; the peak is the larger
of the two pictures (``compose_peak``). ``--full-steps`` tracks whole training steps per
optimizer instead; on gpt2-small and llama2-7b both give the same figures for adamw, lion,
galore, smmf, microadam and adam-mini, and the composed way is several times faster.

Models: built-in shapes (:data:`SHAPES`) with declared parameter roles; ``task:NAME`` (a
registered task's model and batches, built for real on the CPU and then copied to fake
tensors: meant for the small CPU-tier tasks); any torchvision model name; or an importable
``module:factory`` returning a model, or ``(model, example_input)``. Models without
declared metadata get roles derived from module types (``derive_roles``) for information
only; optimizers whose spec ``needs_model_info`` are then reported as "needs model
metadata" rather than run on guessed roles.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.nn import functional as F

from optbench import registry
from optbench.memory import CATEGORIES, LossFn, MemoryReport, measure_optimizer_steps, measure_training_memory
from optbench.model_info import ModelInfo, attach_info, get_model_info, roles_by_suffix
from optbench.state import optimizer_state_bytes

BASELINE = "adamw"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_STEPS = 2


# ----------------------------------------------------------------------------- built-in models


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/o projections; optional rotary positions."""

    def __init__(self, d_model: int, n_heads: int, *, bias: bool, rotary: bool, causal: bool) -> None:
        super().__init__()
        self.n_heads, self.causal, self.rotary = n_heads, causal, rotary
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        if rotary:
            head_dim = d_model // n_heads
            inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
            self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        heads = lambda z: z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if self.rotary:
            q, k = rotate(q, self.inv_freq), rotate(k, self.inv_freq)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


def rotate(x: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al., RoFormer, arXiv 2104.09864) over the last dim of (b, h, t, hd)."""
    angles = torch.outer(torch.arange(x.shape[-2], device=x.device, dtype=torch.float32), inv_freq)
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(x.dtype), torch.cat([angles.sin()] * 2, -1).to(x.dtype)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class GeluMLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, bias: bool) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_mlp, bias=bias)
        self.fc_out = nn.Linear(d_mlp, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class SwiGLU(nn.Module):
    """Shazeer, "GLU Variants Improve Transformer" (2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, d_mlp: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_mlp, bias=bias)
        self.up_proj = nn.Linear(d_model, d_mlp, bias=bias)
        self.down_proj = nn.Linear(d_mlp, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass(frozen=True)
class TransformerConfig:
    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    vocab: int = 0  # language models
    context: int = 0
    llama: bool = False  # RMSNorm, SwiGLU, rotary, no biases, untied head; else GPT-2 style (tied head)
    image_size: int = 0  # vision transformers
    patch: int = 0
    classes: int = 0


def _norm(cfg: TransformerConfig) -> nn.Module:
    return nn.RMSNorm(cfg.d_model, eps=1e-5) if cfg.llama else nn.LayerNorm(cfg.d_model)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig, causal: bool) -> None:
        super().__init__()
        bias = not cfg.llama
        self.norm_1 = _norm(cfg)
        self.attn = Attention(cfg.d_model, cfg.n_heads, bias=bias, rotary=cfg.llama, causal=causal)
        self.norm_2 = _norm(cfg)
        self.mlp = (SwiGLU if cfg.llama else GeluMLP)(cfg.d_model, cfg.d_mlp, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x))
        return x + self.mlp(self.norm_2(x))


class DecoderLM(nn.Module):
    """GPT-2 (learned positions, LayerNorm, GELU, tied head) or Llama-2 (rotary, RMSNorm, SwiGLU)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab, cfg.d_model)
        self.wpe = None if cfg.llama else nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, causal=True) for _ in range(cfg.n_layers))
        self.norm_f = _norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab, bias=False)
        if not cfg.llama:
            self.lm_head.weight = self.wte.weight  # GPT-2 ties the head to the token embedding

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.norm_f(x))


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al., ICLR 2021): conv patches, class token, learned positions, classifier."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        n_tokens = (cfg.image_size // cfg.patch) ** 2 + 1
        self.patch_embed = nn.Conv2d(3, cfg.d_model, kernel_size=cfg.patch, stride=cfg.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg, causal=False) for _ in range(cfg.n_layers))
        self.norm_f = _norm(cfg)
        self.classifier = nn.Linear(cfg.d_model, cfg.classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.norm_f(x[:, 0]))


_TRANSFORMER_ROLES = [
    ("q_proj.weight", "query"),
    ("k_proj.weight", "key"),
    ("v_proj.weight", "value"),
    ("o_proj.weight", "attn_out"),
    ("fc_in.weight", "mlp_in"),
    ("gate_proj.weight", "mlp_in"),
    ("up_proj.weight", "mlp_in"),
    ("fc_out.weight", "mlp_out"),
    ("down_proj.weight", "mlp_out"),
    ("wte.weight", "embedding"),
    ("cls_token", "embedding"),
    ("wpe.weight", "pos_embedding"),
    ("pos_embed", "pos_embedding"),
    ("patch_embed.weight", "conv_in"),
    ("lm_head.weight", "head"),
    ("classifier.weight", "classifier"),
    *[(f"{n}.{p}", "norm") for n in ("norm_1", "norm_2", "norm_f") for p in ("weight", "bias")],
    ("bias", "bias"),
]


def _transformer(cfg: TransformerConfig, name: str) -> nn.Module:
    model = VisionTransformer(cfg) if cfg.image_size else DecoderLM(cfg)
    info = ModelInfo(roles=roles_by_suffix(model, _TRANSFORMER_ROLES), d_model=cfg.d_model, n_heads=cfg.n_heads,
                     extra={"shape": name})
    return attach_info(model, info)


def _resnet50() -> nn.Module:
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    roles = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}"
            if isinstance(module, nn.BatchNorm2d):
                roles[full] = "norm"
            elif p_name == "bias":
                roles[full] = "bias"
            elif mod_name == "conv1":
                roles[full] = "conv_in"
            elif mod_name == "fc":
                roles[full] = "classifier"
            else:
                roles[full] = "conv"
    return attach_info(model, ModelInfo(roles=roles, extra={"shape": "resnet50"}))


@dataclass(frozen=True)
class Shape:
    """A built-in model shape and its default workload."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    kind: str  # "lm" or "image"
    batch_size: int
    seq_len: int = 0  # lm: tokens per sequence; image: side of the square image
    vocab: int = 0
    classes: int = 0
    max_seq_len: int | None = None


_GPT2 = dict(vocab=50257, context=1024)
_LLAMA = dict(vocab=32000, context=4096, llama=True)
_CONFIGS = {
    "gpt2-small": TransformerConfig(n_layers=12, d_model=768, n_heads=12, d_mlp=3072, **_GPT2),
    "gpt2-xl": TransformerConfig(n_layers=48, d_model=1600, n_heads=25, d_mlp=6400, **_GPT2),
    "llama2-7b": TransformerConfig(n_layers=32, d_model=4096, n_heads=32, d_mlp=11008, **_LLAMA),
    "llama2-13b": TransformerConfig(n_layers=40, d_model=5120, n_heads=40, d_mlp=13824, **_LLAMA),
    "vit-b16": TransformerConfig(n_layers=12, d_model=768, n_heads=12, d_mlp=3072, image_size=224, patch=16,
                                 classes=1000),
}


def _lm_shape(name: str, description: str, batch_size: int, seq_len: int) -> Shape:
    cfg = _CONFIGS[name]
    return Shape(name, description, lambda: _transformer(cfg, name), "lm", batch_size, seq_len, vocab=cfg.vocab,
                 max_seq_len=cfg.context)


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        _lm_shape("gpt2-small", "GPT-2 small: 12 layers, d 768, 12 heads, tied head (124M)", 8, 1024),
        _lm_shape("gpt2-xl", "GPT-2 XL: 48 layers, d 1600, 25 heads, tied head (1.56B)", 1, 1024),
        _lm_shape("llama2-7b", "Llama-2 7B: 32 layers, d 4096, 32 heads, SwiGLU 11008, RMSNorm (6.74B)", 1, 2048),
        _lm_shape("llama2-13b", "Llama-2 13B: 40 layers, d 5120, 40 heads, SwiGLU 13824, RMSNorm (13.0B)", 1, 2048),
        Shape("vit-b16", "ViT-B/16 at 224x224, 1000 classes (86.6M)", lambda: _transformer(_CONFIGS["vit-b16"],
              "vit-b16"), "image", 32, 224, classes=1000),
        Shape("resnet50", "torchvision ResNet-50 at 224x224, 1000 classes (25.6M)", _resnet50, "image", 32, 224,
              classes=1000),
    )
}


# ----------------------------------------------------------------------------- workloads


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
            yield _to_fake(batch)

    return Workload(f"task:{name}", build, batches, inst.loss_fn, spec.description,
                    f"preset {preset}: batch {spec.budget(preset).batch_size}", "declared",
                    next(real_model.parameters()).dtype,
                    notes=[f"task:{name} is built for real on the CPU ({preset} preset) and copied to fake tensors"])


def _fake_mode() -> FakeTensorMode:
    mode = _active_fake_mode()
    if mode is None:
        raise RuntimeError("expected to run inside the projection's FakeTensorMode")
    return mode


def _active_fake_mode() -> FakeTensorMode | None:
    from torch._guards import active_fake_mode

    return active_fake_mode()


def _to_fake(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return _fake_mode().from_tensor(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_fake(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_fake(v) for k, v in obj.items()}
    return obj


def fake_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are fake tensors (no data is copied)."""
    mode = _fake_mode()
    memo: dict[int, Any] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        fake = mode.from_tensor(t)
        memo[id(t)] = nn.Parameter(fake, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else fake
    return copy.deepcopy(model, memo)


def derive_roles(model: nn.Module) -> tuple[dict[str, str], list[str]]:
    """Roles that follow from module types alone, and the parameters whose role does not.

    Linear -> linear, convolution -> conv, normalisation -> norm, embedding -> embedding,
    MultiheadAttention's packed projection -> qkv, biases -> bias. A bare ``nn.Parameter``
    (class tokens, position tables, scales) has no role: guessing one is what this avoids.
    """
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
    roles: dict[str, str] = {}
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            role = None
            if isinstance(module, norms):
                role = "norm"
            elif p_name in ("bias", "in_proj_bias", "bias_k", "bias_v"):
                role = "bias"
            elif isinstance(module, nn.Linear) and p_name == "weight":
                role = "linear"
            elif isinstance(module, nn.modules.conv._ConvNd) and p_name == "weight":
                role = "conv"
            elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and p_name == "weight":
                role = "embedding"
            elif isinstance(module, nn.MultiheadAttention):
                role = {"in_proj_weight": "qkv", "q_proj_weight": "query", "k_proj_weight": "key",
                        "v_proj_weight": "value"}.get(p_name)
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
    torch_dtype = DTYPES[dtype]
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


# ----------------------------------------------------------------------------- projection


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


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@contextlib.contextmanager
def fake_world(dtype: torch.dtype):
    """Fake tensors (real ones met inside are converted), a fixed seed, ``dtype`` as the default dtype."""
    with FakeTensorMode(allow_non_fake_inputs=True), _default_dtype(dtype):
        torch.manual_seed(0)
        yield


def _short(exc: BaseException) -> str:
    if isinstance(exc, DataDependentOutputException):
        return f"it reads a tensor's value ({exc.func}, e.g. .item()), which fake tensors do not have"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}"


@contextlib.contextmanager
def skip_init():
    """Make ``torch.nn.init``'s in-place initialisers no-ops while a model is built.

    Values do not matter for memory, and some initialisers read values back
    (``trunc_normal_`` calls ``.any()``), which fake tensors cannot answer.
    """
    saved = {name: fn for name, fn in vars(nn.init).items() if name.endswith("_") and not name.startswith("_")
             and callable(fn)}
    try:
        for name in saved:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def _build_model(workload: Workload) -> nn.Module:
    with skip_init():
        model = workload.build()
    if workload.metadata == "factory":
        workload.metadata = "declared" if get_model_info(model, required=False) is not None else "derived"
    return model


def stateless_run(workload: Workload) -> MemoryReport:
    """Tracked peak of one training step under SGD without momentum: no state, no step scratch.

    This is the forward/backward of the workload on its own; a stateful optimizer adds its
    state to every moment of it (from the second step on, the state exists throughout).
    """
    with fake_world(workload.dtype):
        model = _build_model(workload)
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
        model = _build_model(workload)
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
        model = _build_model(workload)
        params = [p for p in model.parameters() if p.requires_grad]
        n_params = sum(p.numel() for p in params)
        p_bytes = sum(p.numel() * p.element_size() for p in params)
        info = get_model_info(model, required=False)
        if info is not None and workload.metadata == "declared":
            roles = {"source": "declared", "counts": dict(Counter(info.roles.values()))}
        else:
            derived, missing = derive_roles(model)
            roles = {"source": "derived from module types", "counts": dict(Counter(derived.values())),
                     "unresolved": missing}
    return Projection(workload.name, workload.description, workload.batch, str(workload.dtype).replace("torch.", ""),
                      n_params, p_bytes, workload.metadata, steps, rows, list(workload.notes), roles)


# ----------------------------------------------------------------------------- formatting


def human(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.2f} {unit}"
    return f"{nbytes} B"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


TABLE_HEADERS = ["optimizer", "state", "state/AdamW", "peak", "peak/AdamW", "params", "grads", "optimizer",
                 "activations", "temporaries", "method", "note"]


def table_rows(projection: Projection) -> list[list[str]]:
    out = []
    for r in projection.rows:
        if r.status != "ok":
            out.append([r.optimizer, "-", "-", "-", "-", "-", "-", "-", "-", "-", r.status, r.note])
            continue
        cat = r.peak_by_category
        out.append([r.optimizer, human(r.state_bytes), _ratio(r.state_ratio), human(r.peak_bytes), _ratio(r.peak_ratio),
                    *(human(cat.get(k)) for k in CATEGORIES), r.method, r.note])
    return out


def summary_line(projection: Projection) -> str:
    return (f"{projection.model}: {projection.description}; {projection.n_params:,} trainable parameters "
            f"({human(projection.param_bytes)} in {projection.dtype}); {projection.batch}; "
            f"{projection.steps} training steps on fake tensors")


METHOD_LEGEND = (
    "method: `state: measured` = bytes of the optimizer's state tensors after the steps, run on fake tensors; "
    "`state: formula` = the spec's exact `state_bytes(model, **hparams)` (the optimizer could not run on fake "
    "tensors; the note says why). `peak: composed` = the largest of (tracked peak of one forward/backward step "
    "with stateless SGD + the optimizer's state) and (tracked peak of the optimizer's own steps with every "
    "gradient present, its scratch included); `peak: tracked` = torch MemTracker's peak over whole training steps "
    "(`--full-steps`); `peak: estimate` = the stateless forward/backward peak + the formula state, without the "
    "optimizer step's scratch. Breakdown at the peak: params include buffers, activations include the batch, "
    "temporaries are backward scratch and optimizer-step scratch. Fake tensors count exact element bytes; a CUDA "
    "allocator adds block rounding (512 B per tensor) and fragmentation on top."
)

