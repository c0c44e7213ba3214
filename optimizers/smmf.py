"""SMMF: square-matricized momentum factorization.

Park et al., "SMMF: Square-Matricized Momentum Factorization for Memory-Efficient
Optimization", AAAI 2025 (arXiv 2412.08894; official code github.com/eai-lab/SMMF).

Every tensor of N elements is viewed as the most square matrix (n, m) with n*m = N
(``square_matricize``). The first moment is kept as a 1-bit sign plus a rank-1 factorization
of its magnitude, the second moment as a rank-1 factorization; both factorizations are the
closed-form rank-1 NNMF (``rank1_nnmf``). Per step t (1-based)::

    M_hat = sign * outer(r_M, c_M);  V_hat = outer(r_V, c_V)           (decompress)
    b1_t = beta * growth_rate**(t-1);  b2_t = 1 - t**decay_rate
    M = b1_t*M_hat + (1-b1_t)*G;  V = b2_t*V_hat + (1-b2_t)*G*G
    sign = M > 0;  (r_M, c_M) = nnmf(|M|);  (r_V, c_V) = nnmf(V)       (compress)
    p = p*(1 - lr*wd)  (adamw mode);  p = p - lr * M / (sqrt(V) + eps)  (no bias correction)

State per tensor: four float32 factor vectors and the sign packed 1 bit per element in
uint8 (the paper's 1-bit sign; the official code keeps a bool per element):
8(n+m) + ceil(N/8) bytes (planar bit layout, see ``pack_signs``). The step count is a Python int
in the state (no tensor).
The step works in the matricized view with two dense float32 buffers (M, then V reused for
the update) plus the unpacked ±1 sign (int8): no dense tensor beyond what the math needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

import torch
from torch import nn

from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec
from optbench.optimizers._common import PerParameterStep, check_lr, check_nonnegative, trainable
from optbench.optimizers._keep_dtypes import KeepStateDtypes

WEIGHT_DECAY_MODES = ("adamw", "adam")
_BIT_SHIFTS = tuple(range(8))


@lru_cache(maxsize=4096)
def square_matricize(numel: int) -> tuple[int, int]:
    """The most square (rows, cols) with rows*cols = numel and rows >= cols.

    cols is the largest divisor of ``numel`` not above its square root: 36 -> (6, 6),
    12 -> (4, 3), a prime p -> (p, 1) (no saving).
    """
    if numel < 1:
        raise ValueError(f"numel must be >= 1, got {numel}")
    for cols in range(math.isqrt(numel), 0, -1):
        if numel % cols == 0:
            return numel // cols, cols
    raise AssertionError("unreachable: 1 divides every integer")


def rank1_nnmf(matrix: torch.Tensor, *, absolute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form rank-1 NNMF of a non-negative (n, m) matrix (of ``|matrix|`` when ``absolute``).

    r = row sums, c = column sums, and the shorter of the two is divided by the total, so
    ``outer(r, c) = rowsum ⊗ colsum / total``. An all-zero matrix gives zero factors.
    """
    if absolute:
        rows = torch.linalg.vector_norm(matrix, ord=1, dim=1)  # sum |x| without a dense |M|
        cols = torch.linalg.vector_norm(matrix, ord=1, dim=0)
    else:
        rows, cols = matrix.sum(dim=1), matrix.sum(dim=0)
    total = rows.sum().clamp_min(torch.finfo(rows.dtype).tiny)
    if rows.numel() <= cols.numel():
        rows = rows / total
    else:
        cols = cols / total
    return rows, cols


def pack_signs(positive: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (any shape, N elements) into B = ceil(N/8) uint8 bytes.

    Planar layout, so that every operation runs on contiguous memory: bit i of byte j holds
    element i*B + j (the zero padding sits in the last plane).
    """
    flat = positive.reshape(-1)
    n = flat.numel()
    per_plane = math.ceil(n / 8)
    planes = torch.zeros(8 * per_plane, dtype=torch.uint8, device=flat.device)
    planes[:n] = flat
    planes = planes.view(8, per_plane)
    packed = planes[0].clone()
    for i in _BIT_SHIFTS[1:]:
        packed.bitwise_or_(planes[i] << i)
    return packed


def unpack_signs(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The bool tensor of ``numel`` elements that ``pack_signs`` packed."""
    return _unpack_bits(packed, numel).bool()


def _unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    shifts = torch.tensor(_BIT_SHIFTS, dtype=torch.uint8, device=packed.device).unsqueeze(1)
    return ((packed.unsqueeze(0) >> shifts) & 1).view(-1)[:numel]


def _unpack_pm1(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Signs as int8 ±1 (+1 where the packed bit is set)."""
    return _unpack_bits(packed, numel).view(torch.int8).mul_(2).sub_(1)


def beta1_at(step: int, beta: float, growth_rate: float) -> float:
    return beta * growth_rate ** (step - 1)


def beta2_at(step: int, decay_rate: float) -> float:
    return 1.0 - step**decay_rate


def smmf_matrix_shape(param: torch.Tensor, vector_reshape: bool) -> tuple[int, int]:
    """The matricized shape SMMF uses for ``param``; 1-D tensors stay (N, 1) without vector_reshape."""
    if param.ndim <= 1 and not vector_reshape:
        return max(param.numel(), 1), 1
    return square_matricize(param.numel())


class SMMF(KeepStateDtypes, PerParameterStep, torch.optim.Optimizer):
    """SMMF (Park et al., AAAI 2025). ``decay_rate`` −0.5 suits CNNs, −0.8 Transformers (the authors)."""

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        beta: float = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay_rate: float = -0.5,
        growth_rate: float = 0.999,
        vector_reshape: bool = True,
        weight_decay_mode: str = "adamw",
    ) -> None:
        check_smmf_hparams(lr, beta, eps, weight_decay, decay_rate, growth_rate, weight_decay_mode)
        defaults = dict(lr=lr, beta=beta, eps=eps, weight_decay=weight_decay, decay_rate=decay_rate,
                        growth_rate=growth_rate, vector_reshape=vector_reshape, weight_decay_mode=weight_decay_mode)
        super().__init__(params, defaults)

    def _step_param(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        rows, cols = smmf_matrix_shape(p, group["vector_reshape"])
        if not state:
            state["step"] = 0
            zeros = lambda n: torch.zeros(n, dtype=torch.float32, device=p.device)  # noqa: E731
            state["row_m"], state["col_m"] = zeros(rows), zeros(cols)
            state["row_v"], state["col_v"] = zeros(rows), zeros(cols)
            state["sign"] = torch.zeros(math.ceil(p.numel() / 8), dtype=torch.uint8, device=p.device)
        state["step"] += 1
        t = state["step"]
        lr, wd = group["lr"], group["weight_decay"]
        grad = p.grad.reshape(rows, cols).float()
        if wd != 0 and group["weight_decay_mode"] == "adam":
            grad = grad.add(p.detach().reshape(rows, cols).float(), alpha=wd)
        b1, b2 = beta1_at(t, group["beta"], group["growth_rate"]), beta2_at(t, group["decay_rate"])

        # First moment: decompress sign ⊙ outer(r, c), blend in G, compress again.
        moment = torch.outer(state["row_m"], state["col_m"])
        moment.mul_(_unpack_pm1(state["sign"], p.numel()).view(rows, cols))
        moment.mul_(b1).add_(grad, alpha=1 - b1)
        state["sign"] = pack_signs(moment > 0)
        state["row_m"], state["col_m"] = rank1_nnmf(moment, absolute=True)

        # Second moment, in a buffer that then holds the denominator.
        second = torch.outer(state["row_v"], state["col_v"])
        second.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        state["row_v"], state["col_v"] = rank1_nnmf(second)

        if wd != 0 and group["weight_decay_mode"] == "adamw":
            p.mul_(1 - lr * wd)
        update = moment.div_(second.sqrt_().add_(group["eps"]))
        p.add_(update.view(p.shape).to(p.dtype), alpha=-lr)


def check_smmf_hparams(lr: float, beta: float, eps: float, weight_decay: float, decay_rate: float,
                       growth_rate: float, weight_decay_mode: str) -> None:
    check_lr(lr)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    check_nonnegative(eps=eps, weight_decay=weight_decay)
    if not -1.0 <= decay_rate <= 0.0:
        raise ValueError(f"decay_rate must be in [-1, 0] (beta2_t = 1 - t**decay_rate), got {decay_rate}")
    if not 0.0 < growth_rate <= 1.0:
        raise ValueError(f"growth_rate must be in (0, 1], got {growth_rate}")
    if weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"weight_decay_mode must be one of {', '.join(WEIGHT_DECAY_MODES)}, got {weight_decay_mode!r}")


def build_smmf(model: nn.Module, lr: float, *, beta=0.9, eps=1e-8, weight_decay=0.0, decay_rate=-0.5,
               growth_rate=0.999, vector_reshape=True, weight_decay_mode="adamw") -> SMMF:
    return SMMF(trainable(model), lr=lr, beta=beta, eps=eps, weight_decay=weight_decay, decay_rate=decay_rate,
                growth_rate=growth_rate, vector_reshape=vector_reshape, weight_decay_mode=weight_decay_mode)


def smmf_param_state_bytes(param: torch.Tensor, vector_reshape: bool = True) -> int:
    """Four float32 factors (2 rows + 2 cols) and ceil(N/8) sign bytes."""
    rows, cols = smmf_matrix_shape(param, vector_reshape)
    return 4 * 2 * (rows + cols) + math.ceil(param.numel() / 8)


def smmf_state_bytes(model: nn.Module, vector_reshape: bool = True, **_: object) -> int:
    return sum(smmf_param_state_bytes(p, vector_reshape) for p in trainable(model))


register_optimizer(
    OptimizerSpec(
        name="smmf",
        family="factorized",
        paper="Park et al., SMMF: Square-Matricized Momentum Factorization, AAAI 2025 (arXiv 2412.08894)",
        build=build_smmf,
        state_bytes=smmf_state_bytes,
        defaults={"beta": 0.9, "eps": 1e-8, "weight_decay": 0.0, "decay_rate": -0.5, "growth_rate": 0.999,
                  "vector_reshape": True, "weight_decay_mode": "adamw"},
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        description="SMMF: 1-bit sign + rank-1 factors of both moments on a square-matricized view",
    )
)
