"""MicroAdam in pure PyTorch: sparse gradient window + 4-bit error feedback.

Modoranu et al., "MicroAdam: Accurate Adaptive Optimization with Low Space Overhead and
Provable Convergence", NeurIPS 2024 (official CUDA code: IST-DASLab/ISTA-DASLab-Optimizers).
Per tensor and step t (1-based)::

    a = g + dequant(e)                              (error feedback)
    (I, V) = top-k of |a| in each top-k block       (k = ceil(k_init * block))
    window[(t-1) mod m] = (I, V)                    (ring buffer of the last m sparse gradients)
    e = quant4(a with the chosen entries zeroed)     (4 bits, 2 per byte, bf16 min/max per block)
    m_t = (1-b1) Σ_age b1^age · g_{t-age},  v_t = (1-b2) Σ_age b2^age · g_{t-age}²   (window only)
    u = (m_t / (1-b1^t)) / (sqrt(v_t / (1-b2^t)) + eps)
    p = p*(1 - lr*wd);  p = p - lr*u                 (entries outside the window's support get u = 0)

Layout choices here (the paper fixes the idea, not these):
- Top-k blocks: a tensor is split into ``ceil(N / topk_block_size)`` blocks of equal size
  ``B`` (the last one zero-padded); indices are stored within the block as int16 when
  ``B <= 32768`` (the default block size 32768 guarantees this), else int32. Values are bf16.
- Quantization blocks of ``quant_block_size`` elements, ``ceil(N/qbs)`` of them, each with a
  bf16 min and max (the official code keeps floor(N/qbs)+1 blocks). Codes round to nearest.
- ``quantize_error=False`` keeps the error feedback exactly, in a float32 tensor (4N bytes):
  for tests, e.g. "k = 100% equals windowed Adam", and to measure what quantization costs.
- The step count is a Python int in the state (no tensor bytes).

State bytes per tensor: m·nb·k·(2 or 4) indices + m·nb·k·2 values + ceil(N/2) codes
+ 4·ceil(N/qbs) min/max  (4N instead of the last two without quantization).
The step builds dense float32 temporaries (a, |a|, and the m/v accumulators): this is a
reference implementation for CPU, not a memory-optimal kernel.

``impl="official"`` hands the parameters to ``ista_daslab_optimizers.MicroAdam`` (CUDA and
that package required). NEVER RUN HERE: this machine has neither; for it ``microadam_state_bytes``
returns an unverified estimate from the published layout (``official_state_bytes_estimate``).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable

import torch
from torch import nn

from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec
from optbench.optimizers._common import PerParameterStep, check_betas, check_lr, check_nonnegative, check_positive_int, trainable
from optbench.optimizers._keep_dtypes import KeepStateDtypes

INT16_BLOCK_LIMIT = 32768  # indices 0..32767 fit int16
IMPLS = ("torch", "official")
OFFICIAL_PACKAGE = "ista_daslab_optimizers"


# ----------------------------------------------------------------------------- layout


def topk_layout(numel: int, topk_block_size: int, k_init: float) -> tuple[int, int, int]:
    """(number of blocks, block size, k per block) for a tensor of ``numel`` elements."""
    blocks = math.ceil(numel / topk_block_size)
    size = math.ceil(numel / blocks)
    k = min(size, max(1, math.ceil(k_init * size)))
    return blocks, size, k


def index_dtype(block_size: int) -> torch.dtype:
    return torch.int16 if block_size <= INT16_BLOCK_LIMIT else torch.int32


# ----------------------------------------------------------------------------- 4-bit quantization


def quantize4(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit block quantization of a flat float tensor.

    Returns (codes packed two per byte, ceil(N/2) uint8, see ``pack_nibbles``;
    bf16 block minima; bf16 block maxima), ceil(N/block_size) blocks.
    """
    n = x.numel()
    blocks = math.ceil(n / block_size)
    padded = torch.zeros(blocks * block_size, dtype=torch.float32, device=x.device)
    padded[:n] = x
    view = padded.view(blocks, block_size)
    if n % block_size:  # padding must not widen the last block's range
        last = x[(blocks - 1) * block_size:].float()
        view[-1, last.numel():] = last[0]
    lo = view.amin(dim=1).to(torch.bfloat16)
    hi = view.amax(dim=1).to(torch.bfloat16)
    lo32, hi32 = lo.float().unsqueeze(1), hi.float().unsqueeze(1)
    scale = (hi32 - lo32) / 15
    codes = ((view - lo32) / scale.clamp_min(torch.finfo(torch.float32).tiny)).round_().clamp_(0, 15)
    codes = codes.view(-1)[:n].to(torch.uint8)
    return pack_nibbles(codes), lo, hi


def dequantize4(packed: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, numel: int, block_size: int) -> torch.Tensor:
    """The float32 tensor (flat, ``numel``) that ``quantize4`` encoded."""
    codes = unpack_nibbles(packed, numel).float()
    blocks = lo.numel()
    padded = torch.zeros(blocks * block_size, dtype=torch.float32, device=packed.device)
    padded[:numel] = codes
    view = padded.view(blocks, block_size)
    lo32, hi32 = lo.float().unsqueeze(1), hi.float().unsqueeze(1)
    view.mul_((hi32 - lo32) / 15).add_(lo32)
    return padded[:numel]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15] -> B = ceil(N/2) bytes: byte j holds code j (low nibble) and code B+j (high)."""
    n = codes.numel()
    half = math.ceil(n / 2)
    padded = torch.zeros(2 * half, dtype=torch.uint8, device=codes.device)
    padded[:n] = codes.reshape(-1)
    return padded[:half] | (padded[half:] << 4)


def unpack_nibbles(packed: torch.Tensor, numel: int) -> torch.Tensor:
    return torch.cat((packed & 15, packed >> 4))[:numel]


# ----------------------------------------------------------------------------- windowed Adam


def window_weights(step: int, window: int, beta: float) -> list[tuple[int, float]]:
    """(ring slot, (1-beta)·beta^age) for every slot filled by step ``step`` (1-based)."""
    out = []
    for age in range(min(step, window)):
        slot = (step - 1 - age) % window
        out.append((slot, (1 - beta) * beta**age))
    return out


class MicroAdam(KeepStateDtypes, PerParameterStep, torch.optim.Optimizer):
    """MicroAdam (Modoranu et al., NeurIPS 2024), pure PyTorch; see the module docstring."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        m: int = 10,
        k_init: float = 0.01,
        quant_block_size: int = 100_000,
        topk_block_size: int = INT16_BLOCK_LIMIT,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        quantize_error: bool = True,
    ) -> None:
        check_microadam_hparams(lr, m, k_init, quant_block_size, topk_block_size, betas, eps, weight_decay)
        defaults = dict(lr=lr, m=int(m), k_init=k_init, quant_block_size=int(quant_block_size),
                        topk_block_size=int(topk_block_size), betas=tuple(betas), eps=eps,
                        weight_decay=weight_decay, quantize_error=bool(quantize_error))
        super().__init__(params, defaults)

    def _init_state(self, p: torch.Tensor, group: dict) -> dict:
        n = p.numel()
        blocks, size, k = topk_layout(n, group["topk_block_size"], group["k_init"])
        state = self.state[p]
        state["step"] = 0
        state["indices"] = torch.zeros(group["m"], blocks, k, dtype=index_dtype(size), device=p.device)
        state["values"] = torch.zeros(group["m"], blocks, k, dtype=torch.bfloat16, device=p.device)
        if group["quantize_error"]:
            qblocks = math.ceil(n / group["quant_block_size"])
            state["error_codes"] = torch.zeros(math.ceil(n / 2), dtype=torch.uint8, device=p.device)
            # min = max = 0 decodes to an all-zero error before the first step.
            state["error_min"] = torch.zeros(qblocks, dtype=torch.bfloat16, device=p.device)
            state["error_max"] = torch.zeros(qblocks, dtype=torch.bfloat16, device=p.device)
        else:
            state["error"] = torch.zeros(n, dtype=torch.float32, device=p.device)
        return state

    def _error(self, state: dict, n: int, group: dict) -> torch.Tensor:
        if group["quantize_error"]:
            return dequantize4(state["error_codes"], state["error_min"], state["error_max"], n,
                               group["quant_block_size"])
        return state["error"]

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p] or self._init_state(p, group)
        n = p.numel()
        window = group["m"]
        blocks, size, k = topk_layout(n, group["topk_block_size"], group["k_init"])
        state["step"] += 1
        t = state["step"]
        slot = (t - 1) % window

        # a = g + e, zero-padded to whole top-k blocks.
        acc = torch.zeros(blocks * size, dtype=torch.float32, device=p.device)
        acc[:n] = p.grad.reshape(-1)
        acc[:n] += self._error(state, n, group)
        view = acc.view(blocks, size)
        chosen = view.abs().topk(k, dim=1, sorted=False).indices
        state["indices"][slot] = chosen.to(state["indices"].dtype)
        state["values"][slot] = view.gather(1, chosen).to(torch.bfloat16)

        # The residual (a without the chosen entries) becomes the next error.
        view.scatter_(1, chosen, 0.0)
        if group["quantize_error"]:
            state["error_codes"], state["error_min"], state["error_max"] = quantize4(acc[:n], group["quant_block_size"])
        else:
            state["error"].copy_(acc[:n])

        # Adam moments from the window, into dense buffers (acc is reused for the first moment).
        beta1, beta2 = group["betas"]
        first = acc.zero_().view(blocks, size)
        second = torch.zeros_like(first)
        slots, w1 = zip(*window_weights(t, window, beta1), strict=True)
        w2 = [w for _, w in window_weights(t, window, beta2)]
        # All filled slots in one scatter per moment: (slots, blocks, k) -> (blocks, slots*k).
        idx = state["indices"][list(slots)].long()
        vals = state["values"][list(slots)].float()
        weights1 = torch.tensor(w1, dtype=torch.float32, device=p.device).view(-1, 1, 1)
        weights2 = torch.tensor(w2, dtype=torch.float32, device=p.device).view(-1, 1, 1)
        idx = idx.permute(1, 0, 2).reshape(blocks, -1)
        first.scatter_add_(1, idx, (vals * weights1).permute(1, 0, 2).reshape(blocks, -1))
        second.scatter_add_(1, idx, vals.square_().mul_(weights2).permute(1, 0, 2).reshape(blocks, -1))
        second.div_(1 - beta2**t).sqrt_().add_(group["eps"])
        update = first.div_(1 - beta1**t).div_(second).view(-1)[:n]

        lr, wd = group["lr"], group["weight_decay"]
        if wd != 0:
            p.mul_(1 - lr * wd)
        p.add_(update.view(p.shape).to(p.dtype), alpha=-lr)


def check_microadam_hparams(lr: float, m: int, k_init: float, quant_block_size: int, topk_block_size: int,
                            betas, eps: float, weight_decay: float) -> None:
    check_lr(lr)
    check_positive_int(m=m, quant_block_size=quant_block_size, topk_block_size=topk_block_size)
    if not 0.0 < k_init <= 1.0:
        raise ValueError(f"k_init must be in (0, 1] (fraction of each block kept), got {k_init}")
    if len(tuple(betas)) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    check_betas(betas)
    check_nonnegative(eps=eps, weight_decay=weight_decay)


def build_microadam(model: nn.Module, lr: float, *, m=10, k_init=0.01, quant_block_size=100_000,
                    topk_block_size=INT16_BLOCK_LIMIT, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                    quantize_error=True, impl="torch") -> torch.optim.Optimizer:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    check_microadam_hparams(lr, m, k_init, quant_block_size, topk_block_size, betas, eps, weight_decay)
    params = trainable(model)
    if impl == "official":
        return _official(params, lr, m, k_init, quant_block_size, betas, eps, weight_decay)
    return MicroAdam(params, lr=lr, m=m, k_init=k_init, quant_block_size=quant_block_size,
                     topk_block_size=topk_block_size, betas=betas, eps=eps, weight_decay=weight_decay,
                     quantize_error=quantize_error)


def _official(params, lr, m, k_init, quant_block_size, betas, eps, weight_decay) -> torch.optim.Optimizer:
    """The authors' CUDA MicroAdam. NEVER RUN HERE (no CUDA, package not installed)."""
    if importlib.util.find_spec(OFFICIAL_PACKAGE) is None:
        raise ValueError(f"impl='official' needs the package {OFFICIAL_PACKAGE} (pip install ista-daslab-optimizers); "
                         "use impl='torch'")
    if not params or any(p.device.type != "cuda" for p in params):
        raise ValueError("impl='official' runs on CUDA parameters only; use impl='torch' on this device")
    from ista_daslab_optimizers import MicroAdam as OfficialMicroAdam

    return OfficialMicroAdam(params, m=m, lr=lr, quant_block_size=quant_block_size, k_init=k_init,
                             betas=tuple(betas), weight_decay=weight_decay, eps=eps)


def microadam_param_state_bytes(param: torch.Tensor, m: int = 10, k_init: float = 0.01,
                                quant_block_size: int = 100_000, topk_block_size: int = INT16_BLOCK_LIMIT,
                                quantize_error: bool = True) -> int:
    n = param.numel()
    blocks, size, k = topk_layout(n, topk_block_size, k_init)
    index_bytes = torch.empty((), dtype=index_dtype(size)).element_size()
    window = m * blocks * k * (index_bytes + 2)
    if quantize_error:
        return window + math.ceil(n / 2) + 2 * 2 * math.ceil(n / quant_block_size)
    return window + 4 * n


def official_state_bytes_estimate(param: torch.Tensor, m: int, k_init: float, quant_block_size: int) -> int:
    """The official package's layout as REFERENCES.md states it, NOT verified here (never run):
    m·k·N int16 indices + bf16 values, ceil(N/2) codes and floor(N/qbs)+1 bf16 min/max pairs."""
    n = param.numel()
    return 4 * m * math.ceil(k_init * n) + math.ceil(n / 2) + 4 * (n // quant_block_size + 1)


def microadam_state_bytes(model: nn.Module, m: int = 10, k_init: float = 0.01, quant_block_size: int = 100_000,
                          topk_block_size: int = INT16_BLOCK_LIMIT, quantize_error: bool = True,
                          impl: str = "torch", **_: object) -> int:
    if impl == "official":
        return sum(official_state_bytes_estimate(p, m, k_init, quant_block_size) for p in trainable(model))
    if impl != "torch":
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    return sum(microadam_param_state_bytes(p, m, k_init, quant_block_size, topk_block_size, quantize_error)
               for p in trainable(model))


register_optimizer(
    OptimizerSpec(
        name="microadam",
        family="sparse-error-feedback",
        paper="Modoranu et al., MicroAdam: Accurate Adaptive Optimization with Low Space Overhead, NeurIPS 2024",
        build=build_microadam,
        state_bytes=microadam_state_bytes,
        defaults={"m": 10, "k_init": 0.01, "quant_block_size": 100_000, "topk_block_size": INT16_BLOCK_LIMIT,
                  "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "quantize_error": True,
                  "impl": "torch"},
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        description="MicroAdam in PyTorch: top-k gradient window (int16+bf16) and 4-bit error feedback",
    )
)
