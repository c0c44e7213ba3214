"""The one pre-norm transformer of optbench: the GPT and ViT tasks, the projection's model zoo and
the benchmarks build it (one readable file, nanoGPT style).

Attention keeps separate query, key, value and output ``nn.Linear`` projections (never one
fused qkv matrix), so every projection is its own parameter with its own role. Module names
follow the common conventions (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``mlp``,
``wte``, ``lm_head``; ``gate_proj``/``up_proj``/``down_proj`` for SwiGLU), which is also what
name-based partitions such as Adam-mini's expect.

The defaults are the task models: GELU MLP, LayerNorm, biases, learned positions, and an LM head
*not* tied to the token embedding (each parameter then has exactly one role and its own
optimizer state). The options give the projection's reference shapes without a second model:

- ``TransformerOptions(tie_head=True)``: GPT-2 as published (head tied to the embedding);
- ``LLAMA``: RMSNorm, SwiGLU MLP, rotary positions instead of a position table, no biases
  (Llama-2, Touvron et al. 2023);
- ``ViT(pool="cls")``: a class token read by the classifier (Dosovitskiy et al., ICLR 2021)
  instead of mean pooling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from optbench.model_info import ModelInfo, Role, attach_info, roles_by_suffix


@dataclass(frozen=True)
class TransformerOptions:
    """Architecture choices beyond the widths; the defaults are the task models'."""

    mlp: str = "gelu"  # "gelu": fc_out(gelu(fc_in(x))); "swiglu": down(silu(gate(x)) * up(x))
    norm: str = "layernorm"  # or "rmsnorm"
    bias: bool = True  # biases on the attention and MLP projections
    rotary: bool = False  # rotary positions in attention (RoFormer, arXiv 2104.09864)
    learned_positions: bool = True  # a learned position table (GPT's wpe)
    tie_head: bool = False  # GPT-2 ties its LM head to the token embedding

    def __post_init__(self) -> None:
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"unknown mlp {self.mlp!r}; known: gelu, swiglu")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"unknown norm {self.norm!r}; known: layernorm, rmsnorm")


DEFAULT = TransformerOptions()
LLAMA = TransformerOptions(mlp="swiglu", norm="rmsnorm", bias=False, rotary=True, learned_positions=False)


def rotate(x: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding over the last dim of (batch, heads, time, head_dim)."""
    angles = torch.outer(torch.arange(x.shape[-2], device=x.device, dtype=torch.float32), inv_freq)
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(x.dtype), torch.cat([angles.sin()] * 2, -1).to(x.dtype)
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, causal: bool, opts: TransformerOptions = DEFAULT) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.causal, self.rotary = n_heads, causal, opts.rotary
        self.q_proj = nn.Linear(d_model, d_model, bias=opts.bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=opts.bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=opts.bias)
        self.o_proj = nn.Linear(d_model, d_model, bias=opts.bias)
        if opts.rotary:
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


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, bias: bool = True) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_mlp, bias=bias)
        self.fc_out = nn.Linear(d_mlp, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class SwiGLU(nn.Module):
    """Shazeer, "GLU Variants Improve Transformer" (2020): down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, d_mlp: int, bias: bool = True) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_mlp, bias=bias)
        self.up_proj = nn.Linear(d_model, d_mlp, bias=bias)
        self.down_proj = nn.Linear(d_mlp, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def norm(d_model: int, opts: TransformerOptions) -> nn.Module:
    return nn.RMSNorm(d_model, eps=1e-5) if opts.norm == "rmsnorm" else nn.LayerNorm(d_model)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int, causal: bool,
                 opts: TransformerOptions = DEFAULT) -> None:
        super().__init__()
        self.ln_1 = norm(d_model, opts)
        self.attn = Attention(d_model, n_heads, causal, opts)
        self.ln_2 = norm(d_model, opts)
        self.mlp = (SwiGLU if opts.mlp == "swiglu" else MLP)(d_model, d_mlp, opts.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


RESIDUAL_OUTPUTS = ("o_proj.weight", "fc_out.weight", "down_proj.weight")


def init_weights(model: nn.Module, n_layers: int) -> None:
    """GPT-2 initialisation: N(0, 0.02), zero biases, residual projections scaled by 1/sqrt(2 n_layers)."""
    for name, p in model.named_parameters():
        if ".ln_" in name or name.startswith("ln_"):
            continue  # norms: weight 1, bias 0 from construction
        if name.endswith("bias"):
            nn.init.zeros_(p)  # nn.Linear/Conv2d biases start uniform, GPT-2's start at 0
            continue
        std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(RESIDUAL_OUTPUTS) else 0.02
        nn.init.normal_(p, mean=0.0, std=std)


class GPT(nn.Module):
    """Decoder-only language model: token (+ position) embeddings, causal blocks, a final norm, LM head."""

    def __init__(self, vocab: int, context: int, n_layers: int, d_model: int, n_heads: int, d_mlp: int,
                 opts: TransformerOptions = DEFAULT) -> None:
        super().__init__()
        self.context = context
        self.wte = nn.Embedding(vocab, d_model)
        if opts.learned_positions:
            self.wpe = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_mlp, causal=True, opts=opts) for _ in range(n_layers))
        self.ln_f = norm(d_model, opts)
        self.lm_head = nn.Linear(d_model, vocab, bias=False)
        if opts.tie_head:
            self.lm_head.weight = self.wte.weight
        init_weights(self, n_layers)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the model context {self.context}")
        x = self.wte(idx)
        if hasattr(self, "wpe"):
            x = x + self.wpe(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class ViT(nn.Module):
    """Vision transformer: conv patch embedding, position embedding, blocks, pooled tokens, classifier.

    ``pool="mean"`` (the tasks) averages the tokens and has no class token: on the 8x8 digits it
    learned faster within the cpu budget, with one parameter fewer. ``pool="cls"`` prepends a
    learned class token and classifies from it, as the original ViT does.
    """

    def __init__(self, image_size: int, patch: int, channels: int, classes: int, n_layers: int, d_model: int,
                 n_heads: int, d_mlp: int, pool: str = "mean") -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not divisible by patch size {patch}")
        if pool not in ("mean", "cls"):
            raise ValueError(f"unknown pool {pool!r}; known: mean, cls")
        n_tokens = (image_size // patch) ** 2 + (pool == "cls")
        self.pool = pool
        self.patch_embed = nn.Conv2d(channels, d_model, kernel_size=patch, stride=patch)
        if pool == "cls":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embed = nn.Parameter(torch.zeros(n_tokens, d_model))
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_mlp, causal=False) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.classifier = nn.Linear(d_model, classes)
        init_weights(self, n_layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, patches, d)
        if self.pool == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.ln_f(x[:, 0] if self.pool == "cls" else x.mean(dim=1)))


_ROLE_RULES = [
    ("q_proj.weight", Role.QUERY),
    ("k_proj.weight", Role.KEY),
    ("v_proj.weight", Role.VALUE),
    ("o_proj.weight", Role.ATTN_OUT),
    ("fc_in.weight", Role.MLP_IN),
    ("gate_proj.weight", Role.MLP_IN),
    ("up_proj.weight", Role.MLP_IN),
    ("fc_out.weight", Role.MLP_OUT),
    ("down_proj.weight", Role.MLP_OUT),
    ("wte.weight", Role.EMBEDDING),
    ("cls_token", Role.EMBEDDING),
    ("wpe.weight", Role.POS_EMBEDDING),
    ("pos_embed", Role.POS_EMBEDDING),
    ("patch_embed.weight", Role.CONV_IN),  # the vision first layer
    ("lm_head.weight", Role.HEAD),
    ("classifier.weight", Role.CLASSIFIER),
    *[(f"{ln}.{p}", Role.NORM) for ln in ("ln_1", "ln_2", "ln_f") for p in ("weight", "bias")],
    ("bias", Role.BIAS),
]


def with_info(model: GPT | ViT, *, d_model: int, n_heads: int, task: str | None = None,
              extra: dict[str, object] | None = None) -> nn.Module:
    """Attach a role for every parameter plus width, heads and the task name."""
    roles = roles_by_suffix(model, _ROLE_RULES)
    return attach_info(model, ModelInfo(roles=roles, d_model=d_model, n_heads=n_heads, task=task, extra=extra or {}))
