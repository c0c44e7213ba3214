"""SMMF: square-matricized momentum factorization.

Park et al., "SMMF: Square-Matricized Momentum Factorization for Memory-Efficient
Optimization", AAAI 2025 (arXiv 2412.08894; official code github.com/eai-lab/SMMF).

Every tensor of N elements is viewed as the most square matrix (n, m) with n*m = N
(``square_matricize``). The first moment is kept as a 1-bit sign plus a rank-1 factorization
of its magnitude, the second moment as a rank-1 factorization; both factorizations are the
closed-form rank-1 NNMF (``rank1_factors``). Per step t (1-based)::

    M_hat = sign * outer(r_M, c_M);  V_hat = outer(r_V, c_V)           (decompress)
    b1_t = beta * growth_rate**(t-1);  b2_t = 1 - t**decay_rate
    M = b1_t*M_hat + (1-b1_t)*G;  V = b2_t*V_hat + (1-b2_t)*G*G
    sign = M > 0;  (r_M, c_M) = nnmf(|M|);  (r_V, c_V) = nnmf(V)       (compress)
    p = p*(1 - lr*wd)  (adamw mode);  p = p - lr * M / (sqrt(V) + eps)  (no bias correction)

Which tensors are factorized follows the reference: it decides on the *squeezed* shape, and
without ``vector_reshape`` a tensor whose squeezed shape is 1-D ((48,), (1, 48), (48, 1),
(1, 1, 40)) keeps full ``exp_avg`` and ``exp_avg_sq`` in its own dtype and takes the same
update unfactorized (the reference's ``_adam``). With ``vector_reshape`` (the default) every
tensor is factorized.

``weight_decay_mode``: "adamw" (default) decays the parameter as above. "adam" adds the L2
term ``wd * p`` to the gradient the moments see. The reference adds it to a local copy of the
gradient that its update never reads, so there decay does nothing in that mode; we apply it,
as the paper's Algorithm 1 intends.

State per factorized tensor: four float32 factor vectors and the sign packed 1 bit per
element (the paper's 1-bit sign; the official code keeps a bool per element), 32 rows to an
int32 word: 8(n+m) + 4·ceil(n/32)·m bytes. Bit i of word (r, c) is the sign of element
(32r+i, c) of the matricized view (``pack_signs``), so a step running along a row reads and
writes whole vectors of words with one shift; n is padded to a multiple of 32 (at most 31
unused bits per column, fewer bytes than the factors take). The step count is a Python int
in the state (no tensor).

Three implementations of the same step; ``optimizer.optbench_impl`` says which ran:

- **native** (the default on CPU float32 parameters): ``kernels/smmf.c``, every tensor in one
  call, built on first use (``optbench.optimizers._native``). It reads each element's gradient,
  parameter and sign bit once: per 32-row group it rebuilds M and V from the old factors, writes
  the signs and the parameter and keeps the row and column sums that become the new factors.
  Its sums add in another order than torch's, so factors agree to float rounding; where M lands
  within rounding of zero, the sign it stores can differ from the torch step's (as the compiled
  step's can), and that row and column then differ by a sign's worth.
- **compiled** (``compile=True``): one function over every tensor through ``torch.compile``
  (``optbench.optimizers._common``); the path for CUDA. On a 2-core CPU compiling costs
  minutes per model (``results/ratios/compile-topics.md``).
- **eager**: the same row function run op by op on blocks of rows, so that its scratch stays a
  fraction of one parameter-sized float32 temporary however large a tensor is (``block_rows``);
  the reference the other two are tested against.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterable, Sequence
from functools import lru_cache

import torch
from optbench.optimizers._common import (
    PlannedStep,
    Prepared,
    check_lr,
    check_nonnegative,
    column_sums,
    decay_factor,
    ema_,
    trainable,
    work_view,
)
from optbench.optimizers._keep_dtypes import KeepStateDtypes
from optbench.optimizers._native import KernelStep
from torch import nn

from optbench.param_groups import decay_groups
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec

WEIGHT_DECAY_MODES = ("adamw", "adam")
CHUNK_ELEMENTS = 1 << 18  # the eager path's block of rows holds at most about this many elements
MAX_BLOCKS = 8  # ... and a tensor has at most this many blocks (``block_rows``)
FACTORED, PLAIN = "factored", "plain"


# ----------------------------------------------------------------------------- the pieces


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


def factorizes(shape: Sequence[int], vector_reshape: bool) -> bool:
    """Whether SMMF factorizes a tensor of ``shape``: always with ``vector_reshape``; otherwise
    unless its squeezed shape is 1-D (the reference's rule, ``grad.squeeze()``)."""
    return vector_reshape or sum(1 for d in shape if d != 1) != 1


def rank1_factors(row_sums: torch.Tensor, col_sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The closed-form rank-1 NNMF of a non-negative (n, m) matrix from its row and column sums.

    ``outer(r, c) = rowsum ⊗ colsum / total``: the shorter factor (the columns when n >= m,
    as in the reference) is divided by its own sum. An all-zero matrix gives zero factors.
    """
    tiny = torch.finfo(row_sums.dtype).tiny
    if row_sums.numel() < col_sums.numel():
        return row_sums / row_sums.sum().clamp_min(tiny), col_sums
    return row_sums, col_sums / col_sums.sum().clamp_min(tiny)


def rank1_nnmf(matrix: torch.Tensor, *, absolute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-1 NNMF factors of a non-negative (n, m) matrix (of ``|matrix|`` when ``absolute``)."""
    if absolute:
        matrix = matrix.abs()
    return rank1_factors(matrix.sum(dim=1), matrix.sum(dim=0))


SIGN_BITS = 32  # rows packed into one int32 word of signs


def sign_shape(rows: int, cols: int) -> tuple[int, int]:
    """The packed sign of a (rows, cols) matrix: one row of int32 words per 32 rows."""
    return math.ceil(rows / SIGN_BITS), cols


def pack_signs(positive: torch.Tensor) -> torch.Tensor:
    """Pack a (rows, cols) bool matrix into ``sign_shape`` int32: bit i of word (r, c) is element (32r+i, c).

    Int32 words, not bytes: compiled for a CPU, a step that runs along a row then loads and
    shifts whole vectors of words in the lanes of its float32 vectors (uint8 vectors compile to
    partial loads several times slower). Bit 31 is the sign bit of the word.
    """
    rows, cols = positive.shape
    planes = torch.nn.functional.pad(positive.to(torch.int32), (0, 0, 0, -rows % SIGN_BITS))
    planes = planes.view(-1, SIGN_BITS, cols)
    packed = planes[:, 0]
    for bit in range(1, SIGN_BITS):
        packed = packed | (planes[:, bit] << bit)
    return packed


def unpack_signs(packed: torch.Tensor, rows: int) -> torch.Tensor:
    """The (rows, cols) bool matrix that ``pack_signs`` packed."""
    return _unpack_bits(packed, rows).bool()


def _unpack_bits(packed: torch.Tensor, rows: int) -> torch.Tensor:
    shifts = torch.arange(SIGN_BITS, dtype=torch.int32, device=packed.device).view(1, SIGN_BITS, 1)
    return ((packed.unsqueeze(1) >> shifts) & 1).view(-1, packed.shape[1])[:rows]


def beta1_at(step: int, beta: float, growth_rate: float) -> float:
    return beta * growth_rate ** (step - 1)


def beta2_at(step: int, decay_rate: float) -> float:
    return 1.0 - step**decay_rate


def smmf_matrix_shape(param: torch.Tensor) -> tuple[int, int]:
    """The matricized shape SMMF uses for a factorized ``param``."""
    return square_matricize(max(param.numel(), 1))


# ----------------------------------------------------------------------------- the step, per tensor


def factored_rows(param: torch.Tensor, grad: torch.Tensor, row_m: torch.Tensor, col_m: torch.Tensor,
                  row_v: torch.Tensor, col_v: torch.Tensor, sign: torch.Tensor, scalars: Sequence[float],
                  l2_term: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """SMMF's step on a block of rows of one matricized tensor; the new moments' row and column sums.

    ``param``, ``grad``: (h, m) rows of the matricized views; ``row_m``, ``row_v``: (h,) their
    row factors; ``col_m``, ``col_v``: (m,) the column factors; ``sign``: the packed signs of
    these rows, overwritten with the new ones. ``scalars`` = (b1_t, b2_t, eps, decay, lr, l2);
    ``l2_term``: add ``l2 * param`` to the gradient (weight_decay_mode "adam").
    Returns (row sums of |M|, column sums of |M|, row sums of V, column sums of V).
    """
    b1, b2, eps, decay, lr, l2 = scalars
    g = grad.float()
    if l2_term:  # weight_decay_mode="adam": the L2 term joins the gradient the moments see
        g = g + param.float() * l2
    rows, cols = g.shape
    # Out of place, so that a compiled step computes M and V where they are used instead of
    # storing them (in place, each would become a dense buffer); the eager path's blocks are small.
    moment = torch.outer(row_m, col_m) * (_unpack_bits(sign, rows) * 2.0 - 1.0) * b1 + g * (1 - b1)  # M
    second = torch.outer(row_v, col_v) * b2 + g * g * (1 - b2)  # V = b2*V_hat + (1-b2)*G²
    sign.copy_(pack_signs(moment > 0))
    magnitude = moment.abs()
    sums = (magnitude.sum(dim=1), column_sums(magnitude), second.sum(dim=1), column_sums(second))
    param.mul_(decay).sub_(moment / (second.sqrt() + eps) * lr)
    return sums


def plain_adam_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                scalars: Sequence[float], l2_term: bool = False) -> None:
    """The same update with full moments (the reference's ``_adam``): no factors, no bias correction."""
    b1, b2, eps, decay, lr, l2 = scalars
    g = grad + param * l2 if l2_term else grad
    ema_(exp_avg, g, b1)
    ema_(exp_avg_sq, g * g, b2)
    param.mul_(decay).sub_(exp_avg / exp_avg_sq.sqrt().add_(eps) * lr)


def _set_factors(rows: torch.Tensor, cols: torch.Tensor, row_sums: torch.Tensor, col_sums: torch.Tensor) -> None:
    new_rows, new_cols = rank1_factors(row_sums, col_sums)
    rows.copy_(new_rows)
    cols.copy_(new_cols)


# ----------------------------------------------------------------------------- the step, every tensor


def smmf_step(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[tuple[torch.Tensor, ...]],
              layout: tuple, smmf_scalars: list[tuple[float, ...]]) -> None:
    """Every tensor's step in one function (what ``torch.compile`` fuses): whole matrices at once.

    ``params`` and ``grads`` come already matricized (``SMMF.step`` makes the views: a reshape
    inside a compiled graph with symbolic shapes costs several times the step). ``layout[i]`` =
    (kind, L2 term, scalar slot) of tensor i; ``smmf_scalars[j]`` the scalars of ``factored_rows``.
    """
    for p, g, state, (kind, l2_term, slot) in zip(params, grads, states, layout, strict=True):
        scalars = smmf_scalars[slot]
        if kind == PLAIN:
            plain_adam_(p, g, state[0], state[1], scalars, l2_term)
        else:
            row_m, col_m, row_v, col_v, sign = state
            sums = factored_rows(p, g, row_m, col_m, row_v, col_v, sign, scalars, l2_term)
            _set_factors(row_m, col_m, sums[0], sums[1])
            _set_factors(row_v, col_v, sums[2], sums[3])


def smmf_step_eager(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[tuple[torch.Tensor, ...]],
                    layout: tuple, smmf_scalars: list[tuple[float, ...]]) -> None:
    """The same step, eagerly, on blocks of rows (``block_rows``: about ``CHUNK_ELEMENTS``, at most
    ``MAX_BLOCKS`` per tensor): the scratch is a few blocks, not a few tensors."""
    for p, g, state, (kind, l2_term, slot) in zip(params, grads, states, layout, strict=True):
        if kind == PLAIN:
            plain_adam_(p, g, state[0], state[1], smmf_scalars[slot], l2_term)
        else:
            _factored_in_blocks(p, g, state, smmf_scalars[slot], l2_term)


def block_rows(rows: int, cols: int) -> int:
    """Rows per block of the eager step on a (rows, cols) matricized tensor: a pure function of its
    shape, so the step and its projection on fake tensors cut a tensor alike.

    A multiple of 32 (each block's signs are whole words), at most about ``CHUNK_ELEMENTS``
    elements, but at least ``rows / MAX_BLOCKS``: never more than ``MAX_BLOCKS`` blocks, so the
    step's op count per tensor does not grow with its size (a projection on fake tensors pays a
    dispatch for every op). A block holds at most max(CHUNK_ELEMENTS, N / MAX_BLOCKS) + 32·cols of
    the tensor's N elements, and the step's scratch is 20 bytes per block element (five float32
    block-sized temporaries at once): at most 2.5 bytes per parameter plus 5 MiB + 640·cols bytes,
    under two thirds of one parameter-sized float32 temporary (the most the step may hold).
    """
    fit = CHUNK_ELEMENTS // cols // SIGN_BITS * SIGN_BITS
    bounded = -(-rows // (MAX_BLOCKS * SIGN_BITS)) * SIGN_BITS
    return max(SIGN_BITS, fit, bounded)


def _factored_in_blocks(param: torch.Tensor, grad: torch.Tensor, state: tuple[torch.Tensor, ...],
                        scalars: Sequence[float], l2_term: bool) -> None:
    row_m, col_m, row_v, col_v, sign = state
    rows, cols = param.shape
    block = block_rows(rows, cols)
    row_sums_m, row_sums_v = torch.empty_like(row_m), torch.empty_like(row_v)
    col_sums_m, col_sums_v = torch.zeros_like(col_m), torch.zeros_like(col_v)
    for lo in range(0, rows, block):
        hi = min(rows, lo + block)
        sums = factored_rows(param[lo:hi], grad[lo:hi], row_m[lo:hi], col_m, row_v[lo:hi], col_v,
                             sign[lo // SIGN_BITS:math.ceil(hi / SIGN_BITS)], scalars, l2_term)
        row_sums_m[lo:hi], row_sums_v[lo:hi] = sums[0], sums[2]
        col_sums_m += sums[1]
        col_sums_v += sums[3]
    _set_factors(row_m, col_m, row_sums_m, col_sums_m)
    _set_factors(row_v, col_v, row_sums_v, col_sums_v)


# ----------------------------------------------------------------------------- the C kernel's step


class _Tensor(ctypes.Structure):
    """``ftensor`` of ``kernels/smmf.c``."""

    _fields_ = [("rows", ctypes.c_int64), ("cols", ctypes.c_int64), ("p", ctypes.c_void_p), ("g", ctypes.c_void_p),
                ("row_m", ctypes.c_void_p), ("col_m", ctypes.c_void_p), ("row_v", ctypes.c_void_p),
                ("col_v", ctypes.c_void_p), ("sign", ctypes.c_void_p), ("exp_avg", ctypes.c_void_p),
                ("exp_avg_sq", ctypes.c_void_p), ("plain", ctypes.c_int64), ("l2_term", ctypes.c_int64),
                ("group_rows", ctypes.c_int64), ("first_item", ctypes.c_int64), ("group", ctypes.c_int64)]


class _Group(ctypes.Structure):
    """``fgroup``: a scalar slot's numbers, as float32."""

    _fields_ = [(name, ctypes.c_float) for name in ("b1", "one_minus_b1", "b2", "one_minus_b2", "eps", "decay", "lr",
                                                     "l2")]


ITEM_ELEMENTS = 1 << 16  # elements per work item of the kernel, about
COLSUM_FLOATS = 1 << 20  # the kernel's column sums scratch (4 MiB), unless one tensor needs more


def item_rows(rows: int, cols: int, plain: bool) -> int:
    """Rows per item of the kernel: whole 32-row sign words, about ``ITEM_ELEMENTS`` elements
    (plain tensors: elements per item)."""
    if plain:
        return ITEM_ELEMENTS
    return max(SIGN_BITS, ITEM_ELEMENTS // cols // SIGN_BITS * SIGN_BITS)


class NativeStep(KernelStep):
    """SMMF's step through ``kernels/smmf.c``: every tensor in one call.

    Its torch allocations, counted by the memory tracker: the column sums of a batch of tensors'
    items (2·cols floats an item; all of them when they fit in ``COLSUM_FLOATS``, else batches of
    that or of what the largest tensor needs, about 1/4 byte per element of it) and a row of sign
    words per thread.
    """

    def __init__(self, library: ctypes.CDLL) -> None:
        super().__init__()
        self.fn = library.optbench_smmf_step
        self.fn.restype = ctypes.c_int
        self.fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                            ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64]
        self.items = self.cap = self.word_row = 0

    def _run(self, params, layout, scalars) -> None:
        groups = (_Group * len(scalars))()
        for i, (b1, b2, eps, decay, lr, l2) in enumerate(scalars):
            groups[i] = _Group(b1, 1 - b1, b2, 1 - b2, eps, decay, lr, l2)
        threads = torch.get_num_threads()
        colsums, words = self._scratch(threads, params[0].device)
        if self.fn(len(params), ctypes.addressof(self.tensors), ctypes.addressof(groups), self.items,
                   colsums.data_ptr(), self.cap, words.data_ptr(), self.word_row, threads):
            raise RuntimeError("SMMF's C kernel failed: a tensor's column sums exceed its scratch, or no memory")

    def _scratch(self, threads: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.empty(self.cap, dtype=torch.float32, device=device),
                torch.empty(threads * self.word_row, dtype=torch.int32, device=device))

    def dry_run(self, params, grads, states, layout, scalars) -> None:
        """On fake tensors (a projection): the call's torch allocations (``_scratch``), no arithmetic."""
        self.items, self.cap, self.word_row = self._plan(params, layout)
        self._scratch(torch.get_num_threads(), params[0].device)

    @staticmethod
    def _plan(params, layout) -> tuple[int, int, int]:
        """(items over every tensor, floats of the column sums scratch, sign words per thread)."""
        items, need, total, cols = 0, 0, 0, 1
        for p, (kind, _, _) in zip(params, layout, strict=True):
            rows, width = p.shape if kind == FACTORED else (p.numel(), 1)
            count = -(-rows // item_rows(rows, width, kind == PLAIN))
            items += count
            if kind == FACTORED:
                need, total, cols = max(need, count * 2 * width), total + count * 2 * width, max(cols, width)
        # every tensor in one batch when they fit in COLSUM_FLOATS; else batches of that, or of the largest's need
        return items, max(1, min(total, max(need, COLSUM_FLOATS))), cols

    def _describe(self, params, states, layout) -> bool:
        tensors = (_Tensor * len(params))()
        first = 0
        for i, (p, state, (kind, l2_term, slot)) in enumerate(zip(params, states, layout, strict=True)):
            if any(t.dtype not in (torch.float32, torch.int32) or t.device.type != "cpu" or not t.is_contiguous()
                   for t in (p, *state)) or p.dtype != torch.float32:
                return False
            plain = kind == PLAIN
            rows, cols = (p.numel(), 1) if plain else p.shape
            per = item_rows(rows, cols, plain)
            pointers = ([0] * 5 + [t.data_ptr() for t in state]) if plain else ([t.data_ptr() for t in state] + [0, 0])
            tensors[i] = _Tensor(rows, cols, p.data_ptr(), 0, *pointers, int(plain), int(l2_term), per, first, slot)
            first += -(-rows // per)
        self.tensors = tensors
        self.items, self.cap, self.word_row = self._plan(params, layout)
        return True


# ----------------------------------------------------------------------------- the optimizer


class SMMF(PlannedStep, KeepStateDtypes, torch.optim.Optimizer):
    """SMMF (Park et al., AAAI 2025). ``decay_rate`` −0.5 suits CNNs, −0.8 Transformers (the authors).

    ``native=True`` (default) runs the C kernel where it applies, ``compile=True`` the step
    through ``torch.compile`` instead; ``optbench_impl`` says which step ran ("native",
    "compiled" or "eager").
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        beta: float = 0.9,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay_rate: float = -0.5,
        growth_rate: float = 0.999,
        vector_reshape: bool = True,
        weight_decay_mode: str = "adamw",
        compile: bool = False,
        native: bool = True,
    ) -> None:
        check_smmf_hparams(lr, beta, eps, weight_decay, decay_rate, growth_rate, weight_decay_mode)
        defaults = dict(lr=lr, beta=beta, eps=eps, weight_decay=weight_decay, decay_rate=decay_rate,
                        growth_rate=growth_rate, vector_reshape=vector_reshape, weight_decay_mode=weight_decay_mode)
        super().__init__(params, defaults)
        self._choose_step(compile, native, "smmf", NativeStep, self._native_fits)

    def _native_fits(self) -> bool:
        """Whether the C kernel takes every parameter: CPU float32."""
        return all(p.device.type == "cpu" and p.dtype == torch.float32 for g in self.param_groups for p in g["params"])

    def _step_pieces(self):
        return _describe, _step_scalars, smmf_step, smmf_step_eager, self._native


def _describe(p: torch.Tensor, group: dict, state: dict) -> Prepared:
    """SMMF's state for ``p`` (made on its first step), the matricized view the step updates, and
    its static layout entry: factorized or plain, and whether the L2 term joins the gradient."""
    factored = factorizes(p.shape, group["vector_reshape"])
    shape = smmf_matrix_shape(p) if factored else tuple(p.shape)
    if not state:
        state["step"] = 0
        if factored:
            zeros = lambda n: torch.zeros(n, dtype=torch.float32, device=p.device)  # noqa: E731
            state["row_m"], state["col_m"] = zeros(shape[0]), zeros(shape[1])
            state["row_v"], state["col_v"] = zeros(shape[0]), zeros(shape[1])
            state["sign"] = torch.zeros(sign_shape(*shape), dtype=torch.int32, device=p.device)
        else:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
    tensors = ((state["row_m"], state["col_m"], state["row_v"], state["col_v"], state["sign"]) if factored
               else (state["exp_avg"], state["exp_avg_sq"]))
    l2_term = group["weight_decay_mode"] == "adam" and group["weight_decay"] != 0
    work, copied = work_view(p, shape)
    return Prepared(work, tensors, (FACTORED if factored else PLAIN, l2_term), shape, copied)


def _step_scalars(step: int, group: dict) -> tuple[float, ...]:
    """(b1_t, b2_t, eps, decay factor, lr, L2 coefficient) of ``factored_rows`` for this step and group."""
    lr, wd = float(group["lr"]), group["weight_decay"]
    adamw = group["weight_decay_mode"] == "adamw"
    return (beta1_at(step, group["beta"], group["growth_rate"]), beta2_at(step, group["decay_rate"]),
            group["eps"], decay_factor(lr, wd) if adamw else 1.0, lr, 0.0 if adamw else wd)


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
               growth_rate=0.999, vector_reshape=True, weight_decay_mode="adamw", compile=False,
               native=True) -> SMMF:
    check_smmf_hparams(lr, beta, eps, weight_decay, decay_rate, growth_rate, weight_decay_mode)
    return SMMF(decay_groups(model, weight_decay), lr=lr, beta=beta, eps=eps, weight_decay=weight_decay,
                decay_rate=decay_rate, growth_rate=growth_rate, vector_reshape=vector_reshape,
                weight_decay_mode=weight_decay_mode, compile=compile, native=native)


def smmf_param_state_bytes(param: torch.Tensor, vector_reshape: bool = True) -> int:
    """Factorized: four float32 factors (2 rows + 2 cols) and ceil(rows/32)·cols int32 words of
    signs; otherwise two full moments in the parameter's dtype."""
    if not factorizes(param.shape, vector_reshape):
        return 2 * param.numel() * param.element_size()
    rows, cols = smmf_matrix_shape(param)
    return 4 * 2 * (rows + cols) + 4 * math.prod(sign_shape(rows, cols))


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
                  "vector_reshape": True, "weight_decay_mode": "adamw", "compile": False},
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        # Per element, a step must read the parameter and its gradient and write the parameter
        # (4 + 4 + 4 bytes in float32) and read and write the packed sign (1/8 + 1/8); the factors
        # are O(sqrt(N)).
        bound_bytes_per_param=12.25,
        board_note="On CPU the step is optbench's C kernel (optimizer_impl 'native'; results/ratios/).",
        description="SMMF: 1-bit sign + rank-1 factors of both moments on a square-matricized view",
    )
)
