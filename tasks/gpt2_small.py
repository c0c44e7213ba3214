"""gpt2-small (GPU tier): a GPT-2 small shaped language model trained on bytes.

Model (tasks/_transformer.py GPT): 12 layers, d_model 768, 12 heads, MLP 3072, context 1024,
vocabulary 50,304 (GPT-2's 50,257 padded to a multiple of 64, as nanoGPT does) so the
embedding and head have GPT-2's memory footprint. The head is untied from the embedding (one
role and one optimizer state per parameter), so the model has 163.1M parameters where GPT-2's
124M counts the tied matrix once. Tokens are bytes (no tokenizer download), so only the first
256 embedding rows are ever used. Data: the ``text_file`` option, else CPython's pydoc topics
text (tasks/_text.py; about 420 KB of training bytes, which GPT-2 small will overfit within a
few epochs: pass a larger text for a meaningful comparison). Metric: held-out bits per byte.
bf16 autocast on CUDA; gradient clipping at 1.0 (the GPT-2 reference setting).

``smoke`` only: 2 layers of width 64, 2 heads, context 64, vocabulary 256 (same architecture,
smaller), said in ``TaskInstance.notes``. ``gpu_check`` (20 steps at batch 16, for
``optbench.gpu_check``) trains the full model. Held-out: every preset but ``smoke`` (4 windows,
for speed) evaluates on the whole held-out part (the text's last 10%) in consecutive windows of
1024 bytes, all but its last partial window; the notes say how many. A new preset needs no entry
here. With a large ``text_file`` each evaluation costs accordingly (``eval_every`` sets how often).
Figures of GPU runs are published under results/ with the command that made them.

Verdict margin (``margin=0.01``, fixed before any result of this task): 1% of AdamW's held-out
loss, half the widest the protocol allows. In language modelling, held-out loss differences of a
few percent are what substantially more training compute buys, which no practitioner would call
negligible; differences of a percent or less are what the memory-efficient optimizer papers this
suite compares (GaLore, Adam-mini) present as matching AdamW. The loss is averaged over every
byte of the held-out part, so the margin is not an allowance for a small test set.
"""

from __future__ import annotations

import torch
from optbench.tasks._text import bits_per_byte_evaluator, eval_windows, load_corpus, next_byte_loss, random_windows
from optbench.tasks._transformer import GPT, with_info

from optbench.registry import register_task
from optbench.spec import Budget, Metric, TaskInstance, TaskSpec

FULL = {"vocab": 50304, "context": 1024, "n_layers": 12, "d_model": 768, "n_heads": 12, "d_mlp": 3072}
SMOKE = {"vocab": 256, "context": 64, "n_layers": 2, "d_model": 64, "n_heads": 2, "d_mlp": 256}
EVAL_WINDOWS = {"smoke": 4}  # held-out windows of the context's length; other presets: the whole held-out part


def build_model(small: bool = False) -> GPT:
    shape = SMOKE if small else FULL
    model = GPT(**shape)
    return with_info(model, d_model=shape["d_model"], n_heads=shape["n_heads"], task="gpt2-small")


def setup(preset: str, seed: int, device: torch.device, text_file: str | None = None) -> TaskInstance:
    budget = SPEC.budget(preset)
    smoke = preset == "smoke"
    context = (SMOKE if smoke else FULL)["context"]
    train, held_out = load_corpus(text_file, context)
    torch.manual_seed(seed)
    model = build_model(small=smoke).to(device)
    wanted = EVAL_WINDOWS.get(preset)
    x_eval, y_eval = eval_windows(held_out, context, wanted)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    notes = [f"text: {text_file}"] if text_file else []
    part = "the whole held-out part" if wanted is None or len(x_eval) < wanted else f"the first {wanted}"
    notes.append(f"held-out: {len(x_eval)} windows of {context} bytes, {part}")
    if smoke:
        notes.append(f"smoke: GPT with {SMOKE}")
    return TaskInstance(
        model=model,
        batches=random_windows(train, budget.batch_size, context, seed, device),
        loss_fn=next_byte_loss,
        evaluate=bits_per_byte_evaluator(x_eval, y_eval, 8, device, autocast_dtype=autocast),
        samples_per_step=budget.batch_size,
        tokens_per_step=budget.batch_size * context,
        autocast_dtype=autocast,
        notes=notes,
    )


SPEC = register_task(
    TaskSpec(
        name="gpt2-small",
        tier="gpu",
        description="GPT-2 small shape (12x768, ctx 1024, untied head) on bytes of a text file, held-out bits/byte",
        metric=Metric("bits_per_byte", higher_is_better=False),
        budgets={
            "smoke": Budget(steps=4, batch_size=4, eval_every=2, target=7.5, log_every=1, grad_clip=1.0),
            "gpu": Budget(steps=600, batch_size=16, eval_every=100, target=2.5, log_every=10, grad_clip=1.0),
            # A systems check of a lent GPU (optbench.gpu_check): no target.
            "gpu_check": Budget(steps=20, batch_size=16, eval_every=20, log_every=5, warmup_steps=5, grad_clip=1.0),
        },
        setup=setup,
        margin=0.01,
        default_lrs={"adamw": 6e-4, "sgd": 0.1},
        options=("text_file",),
    )
)
