"""Byte-level text data for the language tasks.

The default corpus is the English reference text that ships with CPython
(``pydoc_data.topics``: the ``topics`` dict's values joined by newlines in sorted key
order, about 466 KB of UTF-8), so nothing is downloaded. A user's own text file can take its
place (task option ``text_file``). Tokens are the file's bytes (vocabulary 256). The last
10% of the bytes is held out; the split never depends on the run's seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from optbench.loop import autocast
from optbench.spec import Budget, EvalResult, TaskInstance

VOCAB = 256
EVAL_FRACTION = 0.1


@lru_cache(maxsize=1)
def cpython_topics_bytes() -> bytes:
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


def load_corpus(text_file: str | Path | None, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and held-out byte tensors (uint8) from ``text_file``, or the CPython corpus when None."""
    if text_file is None:
        data = cpython_topics_bytes()
    else:
        path = Path(text_file)
        if not path.is_file():
            raise ValueError(f"text_file {str(path)!r} does not exist or is not a file")
        data = path.read_bytes()
    # Both parts must hold at least one full (context + 1)-byte window.
    needed = math.ceil((context + 2) / EVAL_FRACTION)
    if len(data) < needed:
        source = repr(str(text_file)) if text_file is not None else "the CPython corpus"
        raise ValueError(f"text from {source} has {len(data)} bytes; context {context} needs at least {needed}")
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    split = len(tokens) - int(len(tokens) * EVAL_FRACTION)
    return tokens[:split], tokens[split:]


def random_windows(tokens: torch.Tensor, batch_size: int, context: int, seed: int,
                   device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of (input, next-byte target) windows at positions drawn from ``seed`` only."""
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(context + 1)
    while True:
        starts = torch.randint(0, len(tokens) - context, (batch_size,), generator=gen)
        window = tokens[starts[:, None] + offsets].long().to(device)
        yield window[:, :-1], window[:, 1:]


def eval_windows(tokens: torch.Tensor, context: int, max_windows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive non-overlapping held-out windows from the start of the held-out part (fixed); all of
    them when ``max_windows`` is None."""
    n = (len(tokens) - 1) // context
    n = n if max_windows is None else min(n, max_windows)
    x = tokens[: n * context].view(n, context).long()
    y = tokens[1 : n * context + 1].view(n, context).long()
    return x, y


def next_byte_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


def bits_per_byte_evaluator(x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device,
                            autocast_dtype: torch.dtype | None = None) -> Callable[[nn.Module], EvalResult]:
    """Mean next-byte cross-entropy on the fixed held-out windows: metric bits/byte, loss in nats/byte."""
    x, y = x.to(device), y.to(device)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> EvalResult:
        was_training = model.training
        model.eval()
        total = 0.0
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            with autocast(device, autocast_dtype):
                logits = model(xb)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), yb.reshape(-1),
                                     reduction="sum").item()
        model.train(was_training)
        loss = total / y.numel()
        return EvalResult(metric=loss / math.log(2), loss=loss)

    return evaluate


def language_model_instance(model: nn.Module, budget: Budget, seed: int, device: torch.device, *, context: int,
                            eval_windows_count: int | None, text_file: str | None) -> TaskInstance:
    """The language tasks' data, loss and held-out bits/byte around an already-built ``model``."""
    train, held_out = load_corpus(text_file, context)
    x_eval, y_eval = eval_windows(held_out, context, eval_windows_count)
    return TaskInstance(
        model=model,
        batches=random_windows(train, budget.batch_size, context, seed, device),
        loss_fn=next_byte_loss,
        evaluate=bits_per_byte_evaluator(x_eval, y_eval, 64, device),
        samples_per_step=budget.batch_size,
        tokens_per_step=budget.batch_size * context,
        notes=[f"text: {text_file}"] if text_file else [],
    )
