"""topics-lstm: a byte-level LSTM language model on CPython's ``pydoc_data.topics`` text.

Model: byte embedding (256 x 64) -> one LSTM layer (64 -> 256) -> linear head (256 -> 256),
context 64 bytes; about 0.41M parameters (sized so the ``cpu`` budget trains in seconds: an
LSTM's 64 sequential small matmuls run slowly on a CPU). Data, split and metric
as topics-gpt (tasks/_text.py): held-out bits per byte, lower is better; the ``text_file``
option swaps in a user's text.
Roles: the LSTM input-to-hidden matrices ``weight_ih_l*`` (4 gates stacked, shape
(4*hidden, in)) are ``linear``, the hidden-to-hidden ``weight_hh_l*`` are ``recurrent``.

One layer: a two-layer LSTM stayed near the unigram plateau within the ``cpu`` budget. What
optimizers reach on it: results/LEADERBOARD.md (``nox -s bench``); a single run to check the
budget by hand: ``python -m optbench.tasks.quick_train topics-lstm``.
Verdict margin (``margin=0.02``, fixed before any board result): 2% of AdamW's held-out loss,
the widest the protocol allows: the budget stops while the loss still falls steeply, so the
seed-to-seed spread of a single optimizer is several percent; a narrower margin would make
"equivalent" unreachable with 5 seeds.
Gradient clipping (``grad_clip=1.0``, every preset): global-norm clipping at 1, as recurrent
language models are trained in practice (an LSTM's gradients can explode through time), applied
to every optimizer alike by the training step; the same rule as topics-gpt, where without it
AdamW's loss spiked at every lr above its best.
"""

from __future__ import annotations

import torch
from optbench.tasks._text import VOCAB, language_model_instance
from torch import nn

from optbench.model_info import ModelInfo, attach_info, roles_by_suffix
from optbench.registry import register_task
from optbench.spec import Budget, Metric, TaskInstance, TaskSpec

D_EMBED, HIDDEN, N_LAYERS, CONTEXT = 64, 256, 1, 64
EVAL_WINDOWS = {"smoke": 8}  # held-out windows of CONTEXT bytes; other presets: the whole held-out part


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int, d_embed: int, hidden: int, n_layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_embed)
        self.lstm = nn.LSTM(d_embed, hidden, num_layers=n_layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(idx))
        return self.head(out)


def build_model() -> nn.Module:
    model = LSTMLanguageModel(VOCAB, D_EMBED, HIDDEN, N_LAYERS)
    rules = [
        ("embedding.weight", "embedding"),
        ("head.weight", "head"),
        *[(f"weight_ih_l{i}", "linear") for i in range(N_LAYERS)],
        *[(f"weight_hh_l{i}", "recurrent") for i in range(N_LAYERS)],
        ("bias", "bias"),
        *[(f"bias_{kind}_l{i}", "bias") for kind in ("ih", "hh") for i in range(N_LAYERS)],
    ]
    info = ModelInfo(roles=roles_by_suffix(model, rules), d_model=HIDDEN, n_heads=1, task="topics-lstm")
    return attach_info(model, info)


def setup(preset: str, seed: int, device: torch.device, text_file: str | None = None) -> TaskInstance:
    budget = SPEC.budget(preset)
    torch.manual_seed(seed)
    model = build_model().to(device)
    return language_model_instance(model, budget, seed, device, context=CONTEXT,
                                   eval_windows_count=EVAL_WINDOWS.get(preset), text_file=text_file)


SPEC = register_task(
    TaskSpec(
        name="topics-lstm",
        tier="cpu",
        description="byte-level 1-layer LSTM (256 hidden, ctx 64) on CPython's pydoc topics text, held-out bits/byte",
        metric=Metric("bits_per_byte", higher_is_better=False),
        budgets={
            "smoke": Budget(steps=6, batch_size=4, eval_every=3, target=7.5, log_every=1, grad_clip=1.0),
            "cpu": Budget(steps=150, batch_size=16, eval_every=50, target=3.0, log_every=5, grad_clip=1.0),
            "gpu": Budget(steps=150, batch_size=16, eval_every=50, target=3.0, log_every=5, grad_clip=1.0),
        },
        setup=setup,
        margin=0.02,
        default_lrs={"adamw": 1e-2, "sgd": 1.0},
        options=("text_file",),
    )
)
