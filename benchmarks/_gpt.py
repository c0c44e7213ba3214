"""The fixed model the optimizer benchmarks time: the ``topics-gpt`` task's GPT.

Taken from ``tasks.topics_gpt.build_model`` when that task is present; otherwise a GPT of the
same shape defined here (4 layers, d_model 128, 4 heads, MLP 512, vocab 256, context 128,
separate q/k/v/o projections, untied head), with a role for every parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from optbench.model_info import ModelInfo, attach_info

N_LAYERS, D_MODEL, N_HEADS, D_MLP, VOCAB, CONTEXT = 4, 128, 4, 512, 256, 128


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(D_MODEL, D_MODEL) for _ in range(4))
        self.fc_in, self.fc_out = nn.Linear(D_MODEL, D_MLP), nn.Linear(D_MLP, D_MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln_1(x)
        q, k, v = (p(h).view(b, t, N_HEADS, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.o_proj(y)
        return x + self.fc_out(F.gelu(self.fc_in(self.ln_2(x))))


class _GPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, D_MODEL), nn.Embedding(CONTEXT, D_MODEL)
        self.blocks = nn.ModuleList(_Block() for _ in range(N_LAYERS))
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.lm_head = nn.Linear(D_MODEL, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


_ROLES = {"q_proj.weight": "query", "k_proj.weight": "key", "v_proj.weight": "value", "o_proj.weight": "attn_out",
          "fc_in.weight": "mlp_in", "fc_out.weight": "mlp_out", "wte.weight": "embedding",
          "wpe.weight": "pos_embedding", "lm_head.weight": "head"}


def _local_gpt() -> nn.Module:
    model = _GPT()
    roles = {}
    for name, _ in model.named_parameters():
        suffix = ".".join(name.split(".")[-2:])
        roles[name] = _ROLES.get(suffix) or ("norm" if "ln_" in name else "bias")
    return attach_info(model, ModelInfo(roles=roles, d_model=D_MODEL, n_heads=N_HEADS, task="topics-gpt"))


def gpt_model(seed: int = 0, device: str | torch.device = "cpu") -> tuple[nn.Module, str]:
    """(model, where it came from): the task's builder when it exists, else the local copy."""
    torch.manual_seed(seed)
    try:
        from optbench.tasks.topics_gpt import build_model
    except ImportError:
        return _local_gpt().to(device), "benchmarks/_gpt.py (topics-gpt shape)"
    return build_model().to(device), "optbench.tasks.topics_gpt.build_model"


def fill_gradients(model: nn.Module, batch_size: int = 8, seed: int = 0) -> None:
    """One forward/backward on a fixed random byte batch, leaving .grad in place for step timing."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, VOCAB, (batch_size, CONTEXT + 1), generator=g).to(device)
    model.zero_grad(set_to_none=True)
    logits = model(idx[:, :-1])
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1)).backward()
