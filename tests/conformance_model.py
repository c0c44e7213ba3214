"""The small model every optimizer is checked on: one of each kind of tensor optimizers treat apart.

Token and position embeddings, pre-norm attention with separate query/key/value/output
projections, a GELU MLP, LayerNorms, biases, a causal depthwise-free Conv1d over the sequence
and an untied LM head, with a full ModelInfo (a role for every parameter, d_model, n_heads,
task "conformance"). The embedding and head have exactly 4096 elements, so bitsandbytes'
8-bit path (min_8bit_size 4096) is exercised next to its float32 path for smaller tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from optbench.model_info import ModelInfo, attach_info

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
