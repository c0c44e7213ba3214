"""torchao's low-bit AdamW: ``ao-adamw8bit``, ``ao-adamw4bit`` and ``ao-adamw-fp8`` (``torchao.optim``).

AdamW whose two moments are stored block-wise quantized in tensor subclasses
(``OptimState8bit``, ``OptimState4bit``, ``OptimStateFp8``):

- 8-bit (Dettmers et al., ICLR 2022, arXiv 2110.02861): uint8 codes into a 256-entry dynamic
  map, one float32 scale per 256 elements;
- 4-bit (Li, Chen & Zhu, "Memory Efficient Optimizers with 4-bit States", NeurIPS 2023,
  arXiv 2309.01507): two codes per byte into a 16-entry map, one float32 scale per 128 elements;
- FP8: float8 e4m3 codes, one float32 scale per 256 elements (torchao's own variant, no paper).

The update is AdamW computed in float32 from the dequantized moments (torchao's
``single_param_adam``), requantized after each step. torchao compiles it per parameter with
``torch.compile`` on the first steps (the runner's warm-up steps keep that out of the timings);
on CPU the compiled code needs a C++ compiler, which the availability check looks for.

torchao keeps each group's lr as a 0-d tensor (a changed Python float would recompile) and
refuses a float afterwards; ``optbench.schedule.apply_lr`` fills tensor lrs in place.

Which tensors are quantized: as bitsandbytes, only those with at least 4096 elements, and
only when the block size divides the element count. Every other tensor keeps plain moments in
the parameter dtype, so on a small model most tensors may stay at AdamW's size.
``state_bytes`` follows exactly that rule.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from importlib.metadata import version

from optbench.optimizers._common import STEP_BYTES, check_betas, check_lr, check_nonnegative, check_positive_int
from torch import nn

from optbench.param_groups import decay_groups
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec, Requirements

MIN_QUANTIZED_NUMEL = 4096  # torchao's threshold (adam.py, `_new_buffer`), taken from bitsandbytes
SCALE_BYTES = 4  # one float32 scale per block
PARAM_IO_BYTES = 3 * 4  # a float32 step reads the param and its grad and writes the param


@dataclass(frozen=True)
class LowBitFormat:
    """One of torchao's moment formats: the optimizer class, the code width and its defaults."""

    name: str
    cls: str  # class name in torchao.optim
    bits: int
    block_size: int  # torchao's default
    has_qmap: bool  # codes index a per-tensor float32 map of 2**bits values (the fp8 codes are the values)
    paper: str

    def moment_bytes(self, numel: int, block_size: int) -> int:
        """Bytes of one quantized moment of ``numel`` elements: codes, scales and the code map."""
        codes = numel * self.bits // 8
        qmap = 4 * 2**self.bits if self.has_qmap else 0
        return codes + SCALE_BYTES * (numel // block_size) + qmap

    def bound_bytes_per_param(self) -> float:
        """float32 param and grad traffic plus reading and writing both moments' codes and scales."""
        return PARAM_IO_BYTES + 2 * 2 * (self.bits / 8 + SCALE_BYTES / self.block_size)


FORMATS = {
    "ao-adamw8bit": LowBitFormat("ao-adamw8bit", "AdamW8bit", 8, 256, True,
                                 "Dettmers et al., ICLR 2022 (arXiv 2110.02861); torchao.optim"),
    "ao-adamw4bit": LowBitFormat("ao-adamw4bit", "AdamW4bit", 4, 128, True,
                                 "Li, Chen & Zhu, NeurIPS 2023 (arXiv 2309.01507); torchao.optim"),
    "ao-adamw-fp8": LowBitFormat("ao-adamw-fp8", "AdamWFp8", 8, 256, False,
                                 "torchao.optim AdamWFp8 (float8 e4m3 moments; no paper)"),
}


def quantized(numel: int, block_size: int) -> bool:
    """Whether torchao stores a tensor of ``numel`` elements in low bits (else plain moments)."""
    return numel >= MIN_QUANTIZED_NUMEL and numel % block_size == 0


def compiler_reason() -> str | None:
    """A reason when torch.compile's CPU backend has no C++ compiler (torchao compiles every step)."""
    compiler = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(compiler) is None:
        return (f"torchao compiles its step with torch.compile, whose CPU backend needs a C++ compiler; "
                f"{compiler!r} is not on PATH (install it or set CXX)")
    return None


def _requirements_reason() -> str | None:
    major, minor = (int(x) for x in version("torchao").split(".")[:2])
    if (major, minor) < (0, 18):
        return f"torchao {major}.{minor} < 0.18 (the version these formulas were checked against)"
    return compiler_reason()


def _builder(fmt: LowBitFormat):
    def build(model: nn.Module, lr: float, *, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
              block_size=fmt.block_size):
        check_lr(lr)
        check_betas(betas)
        check_nonnegative(eps=eps, weight_decay=weight_decay)
        check_positive_int(block_size=block_size)
        if fmt.bits == 4 and block_size % 2:
            raise ValueError(f"block_size must be even for 4-bit codes (two per byte), got {block_size}")
        import torchao.optim

        cls = getattr(torchao.optim, fmt.cls)
        return cls(decay_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                   block_size=int(block_size))

    build.__name__ = f"build_{fmt.cls.lower()}"
    return build


def _state_bytes(fmt: LowBitFormat):
    def state_bytes(model: nn.Module, *, block_size=fmt.block_size, **_: object) -> int:
        # Per tensor: a float32 `step`; exp_avg and exp_avg_sq either quantized (codes, scales and, for
        # the 8-/4-bit maps, a float32 map of 2**bits entries per moment: each state holds its own) or
        # plain tensors in the parameter dtype.
        total = 0
        for p in model.parameters():
            if not p.requires_grad:
                continue
            n = p.numel()
            moment = fmt.moment_bytes(n, block_size) if quantized(n, block_size) else n * p.element_size()
            total += STEP_BYTES + 2 * moment
        return total

    state_bytes.__name__ = f"{fmt.cls.lower()}_state_bytes"
    return state_bytes


for _fmt in FORMATS.values():
    register_optimizer(
        OptimizerSpec(
            name=_fmt.name,
            family="quantized",
            paper=_fmt.paper,
            build=_builder(_fmt),
            state_bytes=_state_bytes(_fmt),
            default_lr=1e-3,
            lr_vs_adamw=1.0,  # the same AdamW update, moments stored in fewer bits
            bound_bytes_per_param=_fmt.bound_bytes_per_param(),
            requires=Requirements(packages=("torchao",), check=_requirements_reason),
            description=f"torchao {_fmt.cls}: {_fmt.bits}-bit moments, block {_fmt.block_size}, step via torch.compile",
        )
    )
