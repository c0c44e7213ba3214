"""The small model every optimizer is checked on: one of each kind of tensor optimizers treat apart.

Token and position embeddings, pre-norm attention with separate query/key/value/output
projections, a GELU MLP, LayerNorms, biases, a causal depthwise-free Conv1d over the sequence
and an untied LM head, with a full ModelInfo (a role for every parameter, d_model, n_heads,
task "conformance"). The embedding and head have exactly 4096 elements, so bitsandbytes'
8-bit path (min_8bit_size 4096) is exercised next to its float32 path for smaller tensors.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from optbench.model_info import ModelInfo, attach_info, get_model_info

VOCAB, D_MODEL, N_HEADS, CONTEXT, MLP = 128, 32, 4, 8, 64
TASK = "conformance"

ROLES = {
    "tok.weight": "embedding",
    "pos.weight": "pos_embedding",
    "conv.weight": "conv",
    "conv.bias": "bias",
    "ln1.weight": "norm",
    "ln1.bias": "bias",
    "q.weight": "query",
    "q.bias": "bias",
    "k.weight": "key",
    "k.bias": "bias",
    "v.weight": "value",
    "v.bias": "bias",
    "out.weight": "attn_out",
    "out.bias": "bias",
    "ln2.weight": "norm",
    "ln2.bias": "bias",
    "fc_in.weight": "mlp_in",
    "fc_in.bias": "bias",
    "fc_out.weight": "mlp_out",
    "fc_out.bias": "bias",
    "ln_f.weight": "norm",
    "ln_f.bias": "bias",
    "head.weight": "head",
}


class ConformanceModel(nn.Module):
    """A one-block causal transformer on token ids (batch, CONTEXT) -> logits (batch, CONTEXT, VOCAB)."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Embedding(CONTEXT, D_MODEL)
        self.conv = nn.Conv1d(D_MODEL, D_MODEL, kernel_size=3)  # causal: left-padded by 2
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.q, self.k, self.v, self.out = (nn.Linear(D_MODEL, D_MODEL) for _ in range(4))
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.fc_in = nn.Linear(D_MODEL, MLP)
        self.fc_out = nn.Linear(MLP, D_MODEL)
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        b, t = idx.shape
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        x = x + self.conv(F.pad(x.transpose(1, 2), (2, 0))).transpose(1, 2)
        h = self.ln1(x)
        q, k, v = (lin(h).view(b, t, N_HEADS, -1).transpose(1, 2) for lin in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, D_MODEL)
        x = x + self.out(a)
        x = x + self.fc_out(F.gelu(self.fc_in(self.ln2(x))))
        return self.head(self.ln_f(x))


def write_rules(model: nn.Module, folder: Path) -> Path:
    """A SlimAdam rules file for the conformance model: the paper's static rules by role."""
    by_role = {"query": [1], "key": [1], "value": [0], "attn_out": [0], "mlp_in": [0], "mlp_out": [0],
               "embedding": [1], "pos_embedding": [1], "head": [1]}
    rules = {name: by_role.get(role) for name, role in get_model_info(model).roles.items()}
    path = folder / f"{TASK}.json"
    path.write_text(json.dumps(rules))
    return path


def conformance_hparams(spec, folder: Path, monkeypatch) -> dict:
    """The spec's defaults. An optimizer that cannot build on this model for want of a rules file
    gets one written into ``folder``: through its `rules` hyperparameter when it takes one, else by
    pointing its module's RULES_DIR there (slimadam-snr reads per-task rules files from a folder).
    Returns None when the optimizer cannot build here at all (the caller skips)."""
    try:
        spec.build(build_model(), spec.default_lr, **spec.resolve_hparams())
    except ValueError as exc:
        if "rules" not in str(exc):
            raise
        if "rules" not in spec.defaults:
            module = sys.modules[spec.build.__module__]
            if not hasattr(module, "RULES_DIR"):
                return None
            monkeypatch.setattr(module, "RULES_DIR", folder)
            write_rules(build_model(), folder)
            return spec.resolve_hparams()
        return spec.resolve_hparams({"rules": str(write_rules(build_model(), folder))})
    return spec.resolve_hparams()


def build_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = ConformanceModel()
    return attach_info(model, ModelInfo(roles=dict(ROLES), d_model=D_MODEL, n_heads=N_HEADS, task=TASK))


def fixed_batch(seed: int = 0, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences whose next token is (token + 1) mod VOCAB: a fixed, learnable problem."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, VOCAB, (batch, 1), generator=g)
    seq = (start + torch.arange(CONTEXT + 1)) % VOCAB
    return seq[:, :-1], seq[:, 1:]


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
