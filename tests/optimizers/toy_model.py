"""A toy model with every tensor rank an optimizer must handle, shared by the own-optimizer tests.

Checks every optimizer needs (zero and missing gradients, state_dict round trip, loss falls)
live once, in tests/test_conformance.py; these files test each optimizer's own math.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class ToyNet(nn.Module):
    """A conv (4-D), linears (2-D), a prime-sized vector and biases (1-D)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.lin = nn.Linear(12, 6)
        self.prime = nn.Parameter(torch.randn(13))
        self.out = nn.Linear(6, 3)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.conv(image).flatten(1)[:, :12]
        return self.out(torch.tanh(self.lin(h)) + self.prime[:6])


def toy(seed: int = 0) -> ToyNet:
    torch.manual_seed(seed)
    return ToyNet()


def toy_loss(model: ToyNet, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    image, target = torch.randn(8, 2, 4, 4, generator=g), torch.randn(8, 3, generator=g)
    return ((model(image) - target) ** 2).mean()


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0,
          loss_fn: Callable[[nn.Module, int], torch.Tensor] = toy_loss) -> list[float]:
    """``steps`` steps on the batches numbered ``start``..; the per-step losses."""
    losses = []
    for step in range(start, start + steps):
        opt.zero_grad()
        loss = loss_fn(model, step)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def compiled_graphs() -> int:
    """How many graphs torch.compile has made in this process (to catch a step that recompiles)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def step_alike(first: tuple[list[nn.Parameter], torch.optim.Optimizer],
               second: tuple[list[nn.Parameter], torch.optim.Optimizer], steps: int, seed: int = 1) -> None:
    """Step two optimizers over two copies of the same parameters with the same random gradients
    (a C kernel's step against the torch step it replaces)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p, q in zip(first[0], second[0], strict=True):
            g = torch.randn(p.shape, generator=generator)
            p.grad, q.grad = g.clone(), g.clone()
        first[1].step()
        second[1].step()
