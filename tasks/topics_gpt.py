"""topics-gpt: a small byte-level GPT on CPython's ``pydoc_data.topics`` reference text.

Model: 4 layers, d_model 128, 4 heads, MLP 512, vocabulary 256 (bytes), context 128,
untied LM head (see tasks/_transformer.py). Data: tasks/_text.py (last 10% held out), or a
user's own text with the ``text_file`` option. Metric: held-out bits per byte (lower is
better); EvalResult.loss carries the same in nats per byte. What optimizers reach on it:
results/LEADERBOARD.md (``nox -s bench``); a single run to check the budget by hand:
``python -m optbench.tasks.quick_train topics-gpt``.
Verdict margin (``margin=0.02``, fixed before any board result): 2% of AdamW's held-out loss,
the widest the protocol allows: the budget stops while the loss still falls steeply, so the
seed-to-seed spread of a single optimizer is several percent; a narrower margin would make
"equivalent" unreachable with 5 seeds.
Gradient clipping (``grad_clip=1.0``, every preset): global-norm clipping at 1, as language
models are trained in practice (nanoGPT, gpt2-small here) and applied to every optimizer alike by
the training step. Without it AdamW's loss spiked at every lr above its best, so its tuned run was
a weak baseline that clipping-free methods with smaller effective steps beat for that reason alone.
"""

from __future__ import annotations

import torch
from optbench.tasks._text import VOCAB, language_model_instance
from optbench.tasks._transformer import GPT, with_info

from optbench.registry import register_task
from optbench.spec import Budget, Metric, TaskInstance, TaskSpec

N_LAYERS, D_MODEL, N_HEADS, D_MLP, CONTEXT = 4, 128, 4, 512, 128
EVAL_WINDOWS = {"smoke": 8}  # held-out windows of CONTEXT bytes; other presets: the whole held-out part


def build_model() -> GPT:
    model = GPT(VOCAB, CONTEXT, N_LAYERS, D_MODEL, N_HEADS, D_MLP)
    return with_info(model, d_model=D_MODEL, n_heads=N_HEADS, task="topics-gpt")


def setup(preset: str, seed: int, device: torch.device, text_file: str | None = None) -> TaskInstance:
    budget = SPEC.budget(preset)
    torch.manual_seed(seed)
    model = build_model().to(device)
    return language_model_instance(model, budget, seed, device, context=CONTEXT,
                                   eval_windows_count=EVAL_WINDOWS.get(preset), text_file=text_file)


SPEC = register_task(
    TaskSpec(
        name="topics-gpt",
        tier="cpu",
        description="byte-level GPT (4x128, 4 heads, ctx 128) on CPython's pydoc topics text, held-out bits/byte",
        metric=Metric("bits_per_byte", higher_is_better=False),
        budgets={
            "smoke": Budget(steps=6, batch_size=4, eval_every=3, target=7.5, log_every=1, grad_clip=1.0),
            "cpu": Budget(steps=200, batch_size=8, eval_every=50, target=4.0, log_every=5, grad_clip=1.0),
            "gpu": Budget(steps=200, batch_size=8, eval_every=50, target=4.0, log_every=5, grad_clip=1.0),
        },
        setup=setup,
        margin=0.02,
        default_lrs={"adamw": 1e-3, "sgd": 0.3},
        options=("text_file",),
    )
)
