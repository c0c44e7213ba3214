"""topics-gpt: a small byte-level GPT on CPython's ``pydoc_data.topics`` reference text.

Model: 4 layers, d_model 128, 4 heads, MLP 512, vocabulary 256 (bytes), context 128,
untied LM head (see tasks/_transformer.py). Data: tasks/_text.py (last 10% held out), or a
user's own text with the ``text_file`` option. Metric: held-out bits per byte (lower is
better); EvalResult.loss carries the same in nats per byte.

Under the ``cpu`` budget (100 steps of 8 x 128 bytes) AdamW at lr 1e-3, seed 0, reaches 4.13
held-out bits per byte from 8.0 at initialisation (4.39 at step 50; train loss 2.74 nats at
step 100). An earlier variant of this model did worse at lr 3e-3 (4.48) and 1e-2 (4.86).
Measured with ``python -m tasks.quick_train topics-gpt --preset cpu``.
Rough timing: AdamW step 71 ms median (100 steps: 7.1 s) with 2 threads on a shared 2-core
machine (load average ~3, so inflated; 50 ms when the machine was quiet).

In the published leaderboard (`nox -s bench -- --seeds 0,1,2`, results/LEADERBOARD.md) AdamW at its
swept lr 0.001 reaches 4.169 ± 0.063 held-out bits per byte over seeds 0-2, with a median
training step of 58.9 ms on the quiet 2-core CPU machine.
"""

from __future__ import annotations

import torch

from optbench.registry import register_task
from optbench.spec import Budget, Metric, TaskInstance, TaskSpec
from optbench.tasks._text import VOCAB, language_model_instance
from optbench.tasks._transformer import GPT, with_info

N_LAYERS, D_MODEL, N_HEADS, D_MLP, CONTEXT = 4, 128, 4, 512, 128
EVAL_WINDOWS = {"smoke": 8, "cpu": 64, "gpu": 256}  # held-out windows of CONTEXT bytes


def build_model() -> GPT:
    model = GPT(VOCAB, CONTEXT, N_LAYERS, D_MODEL, N_HEADS, D_MLP)
    return with_info(model, d_model=D_MODEL, n_heads=N_HEADS, task="topics-gpt")


def setup(preset: str, seed: int, device: torch.device, text_file: str | None = None) -> TaskInstance:
    budget = SPEC.budget(preset)
    torch.manual_seed(seed)
    model = build_model().to(device)
    return language_model_instance(model, budget, seed, device, context=CONTEXT,
                                   eval_windows_count=EVAL_WINDOWS[preset], text_file=text_file)


SPEC = register_task(
    TaskSpec(
        name="topics-gpt",
        tier="cpu",
        description="byte-level GPT (4x128, 4 heads, ctx 128) on CPython's pydoc topics text, held-out bits/byte",
        metric=Metric("bits_per_byte", higher_is_better=False),
        budgets={
            "smoke": Budget(steps=6, batch_size=4, eval_every=3, target=7.5, log_every=1),
            "cpu": Budget(steps=100, batch_size=8, eval_every=25, target=4.5, log_every=5),
            "gpu": Budget(steps=100, batch_size=8, eval_every=25, target=4.5, log_every=5),
        },
        setup=setup,
        default_lrs={"adamw": 1e-3, "sgd": 0.3},
        options=("text_file",),
    )
)
