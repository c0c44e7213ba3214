"""MicroAdam in PyTorch: a sparse window of past gradients and 4-bit error feedback.

Modoranu et al., "MicroAdam: Accurate Adaptive Optimization with Low Space Overhead and
Provable Convergence", NeurIPS 2024 (official CUDA code: IST-DASLab/ISTA-DASLab-Optimizers,
``ista_daslab_optimizers/micro_adam``). Per tensor and step t (1-based)::

    a = g + dequant(e)                              (error feedback)
    I = top-k of |a| in each top-k block            (k = ceil(k_init * block size))
    window[(t-1) mod m] = (I, a[I])                 (ring buffer of the last m sparse gradients)
    e = quant4(a with a[I] = 0)                     (4 bits, 2 per byte, bf16 min/max per block)
    m_t = Σ_age (1-b1) b1^age · g_{t-age},  v_t = Σ_age (1-b2) b2^age · g_{t-age}²   (window only)
    u = (m_t / (1-b1^t)) / (sqrt(v_t / (1-b2^t)) + eps)
    p = p*(1 - lr*wd);  p = p - lr*u                 (u is zero off the window's support)

``alpha`` is the official option of that name, for pre-training: with ``0 < alpha < 1`` the
update also takes ``alpha`` times the error feedback, ``p -= lr * (u + alpha * dequant(e))``,
and the error keeps the rest, ``e = quant4((1 - alpha) * dequant(e))``. The default 0 is the
paper's algorithm (and its fine-tuning setting). The official code's experimental
``alpha = -2`` is not offered.

Layout, as in the official code: a tensor of N elements has ``N // B`` top-k blocks of
``B = min(N, topk_block_size)`` elements and a shorter last block with the rest (its own
``ceil(k_init * rest)``); indices are stored within the block, as int16 when ``B <= 32768``
(the default block size 32768 guarantees this), else int32; values are bf16. Quantization
blocks of ``quant_block_size`` elements, the last one shorter, each with a bf16 min and max
(``ceil(N/qbs)`` of them; the official code keeps ``floor(N/qbs) + 1``). Byte j of the codes
holds the codes of elements 2j (low nibble) and 2j+1 (high nibble); codes round to nearest.
``quantize_error=False`` keeps the error exactly, in a float32 tensor (4N bytes): for tests,
e.g. "k = 100% equals windowed Adam", and to measure what quantization costs. The step count
is a Python int in the state.

State bytes per tensor: m·K·(2 or 4) indices + m·K·2 values + ceil(N/2) codes + 4·ceil(N/qbs)
min/max, K the sum of k over its blocks (4N instead of the last two without quantization).

Three implementations of the same step; ``optimizer.optbench_impl`` says which ran, and the
runner records it:

- **native** (the default on CPU float32 parameters): ``kernels/microadam.c``, every tensor in one
  call, built on first use (``optbench.optimizers._native``). Per top-k block it computes ``a``,
  selects the top-k (a sampled threshold, then an exact selection among the few that pass), writes
  the window slot and applies the window's update; per quantization block it recomputes the
  residual and writes its codes. Its scratch is a few blocks per thread. torch ops cannot reach
  the memory bandwidth here: ``torch.topk`` alone costs 5x fused AdamW's step on a 27M model
  (``results/ratios/microadam-floor.md``). The kernel's error codes and window equal the eager
  step's; parameters agree to a few ulps (the kernel multiplies by the bias corrections'
  reciprocals, and its ``sqrt`` is correctly rounded where torch's CPU one is not), except that
  among entries tied in ``|a|`` at the k-th place the two may choose differently
  (``torch.topk``'s choice among ties is unspecified). ``alpha > 0``, ``quantize_error=False``,
  an odd ``quant_block_size`` and other devices or dtypes take a torch step.
- **compiled** (``compile=True``): one function over every tensor, which ``torch.compile`` fuses
  (``optbench.optimizers._common``); the path for CUDA. On a 2-core CPU compiling costs minutes
  per model (``results/ratios/compile-topics.md``).
- **eager**: the same function run op by op, in pieces (below); the reference the other two are
  tested against.

The window's moments are gathered on its support (about m·k_init·N entries), never into dense m
and v. The compiled step holds one dense float32 temporary, ``a``, and gathers the moments
through it. The eager step holds none: it computes ``a`` a piece at a time, twice (to choose the
top-k, then to write the residual; the error's quantization blocks and the top-k blocks do not
line up, so one pass cannot do both), and gathers the moments a piece of top-k blocks at a time
(``window_pieces``) through a piece-sized buffer. Its pieces (``piece_elements``,
``topk_blocks_per_piece``) bound both its scratch and its op count per tensor.

``impl="official"`` hands the parameters to ``ista_daslab_optimizers.MicroAdam``, which needs
CUDA and bfloat16 parameters (its kernels assert bf16 gradients); both are checked before it
is built. Its state bytes are an estimate from its published layout (``official_state_bytes_estimate``),
not verified: no such run has been made.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from optbench.optimizers._common import (
    PlannedStep,
    Prepared,
    bias_correction,
    check_betas,
    check_lr,
    check_nonnegative,
    check_positive_int,
    decay_factor,
    trainable,
    work_view,
)
from optbench.optimizers._keep_dtypes import KeepStateDtypes
from optbench.optimizers._native import KernelStep
from torch import nn

from optbench.param_groups import decay_groups, flat_params
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec

INT16_BLOCK_LIMIT = 32768  # indices 0..32767 fit int16
IMPLS = ("torch", "official")
OFFICIAL_PACKAGE = "ista_daslab_optimizers"
CHUNK_ELEMENTS = 1 << 18  # the eager path works on pieces of about this many elements
MAX_PIECES = 8  # ... and on at most this many pieces per tensor (``piece_elements``)
BOARD_NOTE = (
    "Defaults are the paper's fine-tuning setting: a window of m = 10 sparse gradients at 1% density "
    "(k_init 0.01) and alpha = 0, so each step updates at most 10% of the coordinates; at budgets of a few "
    "hundred steps from scratch that regime is far from the paper's. alpha > 0 (the official code's "
    "pre-training option) adds a share of the error feedback to every update."
    " On CPU the step is optbench's C kernel (optimizer_impl 'native'; results/ratios/)."
)


# ----------------------------------------------------------------------------- layout


def topk_layout(numel: int, topk_block_size: int, k_init: float) -> tuple[int, int, int, int, int]:
    """(full blocks, block size B, k per full block, rest, k of the rest) for ``numel`` elements."""
    size = min(numel, topk_block_size)
    full, rest = divmod(numel, size)
    return full, size, _k(size, k_init), rest, _k(rest, k_init) if rest else 0


def _k(size: int, k_init: float) -> int:
    return min(size, max(1, math.ceil(k_init * size)))


def window_width(numel: int, topk_block_size: int, k_init: float) -> int:
    """K: how many entries one gradient keeps in the window."""
    full, _, k, _, k_rest = topk_layout(numel, topk_block_size, k_init)
    return full * k + k_rest


def index_dtype(block_size: int) -> torch.dtype:
    return torch.int16 if block_size <= INT16_BLOCK_LIMIT else torch.int32


# ----------------------------------------------------------------------------- 4-bit quantization


def _quant_blocks(x: torch.Tensor, block_size: int) -> list[torch.Tensor]:
    """``x`` (flat) as a (blocks, block_size) view and, if any, its shorter last block as (1, rest)."""
    full = x.numel() // block_size
    parts = [x[:full * block_size].view(full, block_size)] if full else []
    if x.numel() > full * block_size:
        parts.append(x[full * block_size:].view(1, -1))
    return parts


def quantize4(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric 4-bit block quantization of a flat float tensor (length even, or the whole tensor).

    Returns (codes packed two per byte, ceil(N/2) uint8, see ``pack_nibbles``; bf16 block
    minima; bf16 block maxima), ceil(N/block_size) blocks.
    """
    parts = _quant_blocks(x, block_size)
    lo = torch.cat([p.amin(dim=1) for p in parts]).to(torch.bfloat16)
    hi = torch.cat([p.amax(dim=1) for p in parts]).to(torch.bfloat16)
    codes, start = [], 0
    for part in parts:
        rows = part.shape[0]
        lo32, hi32 = lo[start:start + rows].float().unsqueeze(1), hi[start:start + rows].float().unsqueeze(1)
        scale = ((hi32 - lo32) / 15).clamp_min(torch.finfo(torch.float32).tiny)
        codes.append(((part - lo32) / scale).round_().clamp_(0, 15).to(torch.uint8).view(-1))
        start += rows
    return pack_nibbles(torch.cat(codes)), lo, hi


def dequantize4(packed: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, numel: int, block_size: int) -> torch.Tensor:
    """The float32 tensor (flat, ``numel``) that ``quantize4`` encoded."""
    codes = unpack_nibbles(packed, numel).float()
    out, start = [], 0
    for part in _quant_blocks(codes, block_size):
        rows = part.shape[0]
        lo32, hi32 = lo[start:start + rows].float().unsqueeze(1), hi[start:start + rows].float().unsqueeze(1)
        out.append((part * ((hi32 - lo32) / 15) + lo32).view(-1))
        start += rows
    return torch.cat(out) if len(out) > 1 else out[0]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15] -> ceil(N/2) bytes: byte j holds code 2j (low nibble) and code 2j+1 (high)."""
    flat = torch.nn.functional.pad(codes.reshape(-1), (0, codes.numel() % 2)).view(-1, 2)
    return flat[:, 0] | (flat[:, 1] << 4)


def unpack_nibbles(packed: torch.Tensor, numel: int) -> torch.Tensor:
    return torch.stack((packed & 15, packed >> 4), dim=1).view(-1)[:numel]


class ErrorFeedback:
    """Where the error lives in a tensor's state: 4-bit codes with block min/max, or exact float32."""

    @staticmethod
    def read(state: Sequence[torch.Tensor], lo: int, hi: int, block_size: int) -> torch.Tensor:
        """The error of elements ``lo:hi`` (``lo`` a multiple of ``block_size``, even) as float32."""
        if len(state) == 1:
            return state[0][lo:hi]
        codes, mins, maxs = state
        blocks = slice(lo // block_size, math.ceil(hi / block_size))
        return dequantize4(codes[lo // 2:math.ceil(hi / 2)], mins[blocks], maxs[blocks], hi - lo, block_size)

    @staticmethod
    def write(state: Sequence[torch.Tensor], values: torch.Tensor, lo: int, hi: int, block_size: int) -> None:
        if len(state) == 1:
            state[0][lo:hi].copy_(values)
            return
        codes, mins, maxs = state
        packed, block_min, block_max = quantize4(values, block_size)
        blocks = slice(lo // block_size, math.ceil(hi / block_size))
        codes[lo // 2:math.ceil(hi / 2)].copy_(packed)
        mins[blocks].copy_(block_min)
        maxs[blocks].copy_(block_max)


def read_error_range(error: Sequence[torch.Tensor], lo: int, hi: int, numel: int, block_size: int) -> torch.Tensor:
    """The error of elements ``lo:hi`` (of ``numel``) as float32, for any range: the quantization
    blocks covering it are decoded (from an even element, so that no byte of codes is split) and sliced."""
    if len(error) == 1:
        return error[0][lo:hi]
    start = lo - lo % block_size
    if start % 2:  # an odd block size: one block earlier starts on an even element
        start -= block_size
    end = min(numel, -(-hi // block_size) * block_size)
    return ErrorFeedback.read(error, start, end, block_size)[lo - start:hi - start]


def piece_elements(numel: int, block_size: int) -> int:
    """Elements per piece of the eager step for a tensor of ``numel`` elements: a pure function of
    the tensor's size, so the step and its projection on fake tensors cut a tensor alike.

    Whole quantization blocks of ``block_size``, an even count (no byte of codes straddles two
    pieces), about ``CHUNK_ELEMENTS``, and at least ``numel / MAX_PIECES``: never more than
    ``MAX_PIECES`` pieces, so the step's op count per tensor does not grow with its size (a
    projection on fake tensors pays a dispatch for every op). A piece holds at most
    max(CHUNK_ELEMENTS, numel / MAX_PIECES) + 2 blocks, and the scratch of a piece is about 20
    bytes per element (the residual, the decoded error and the codes while it is written): at
    most 2.5 bytes per parameter plus 5 MiB: under one parameter-sized float32 temporary on large
    tensors, while on small ones the 5 MiB floor dominates.
    """
    blocks = max(1, CHUNK_ELEMENTS // block_size, -(-numel // (MAX_PIECES * block_size)))
    step = blocks * block_size
    return step + step % 2 * block_size


def _pieces(numel: int, block_size: int, whole: bool) -> list[tuple[int, int]]:
    """(lo, hi) ranges of whole quantization blocks, each of an even length but the last (one range if ``whole``)."""
    if whole:
        return [(0, numel)]
    step = piece_elements(numel, block_size)
    return [(lo, min(numel, lo + step)) for lo in range(0, numel, step)]


def topk_blocks_per_piece(full: int, size: int) -> int:
    """Top-k blocks of ``size`` per piece of the eager selection: about ``CHUNK_ELEMENTS`` elements,
    and at most ``MAX_PIECES`` pieces over the ``full`` blocks (``piece_elements``' rule)."""
    return max(1, CHUNK_ELEMENTS // size, -(-full // MAX_PIECES))


# ----------------------------------------------------------------------------- the step, per tensor


def window_weights(step: float, window: int, beta: float, log_beta: float, device: torch.device) -> torch.Tensor:
    """(1-beta)·beta^age for each ring slot (age = how many steps ago it was written); 0 for slots
    not written yet. Computed on the device from the step count: no host-to-device copy.
    ``log_beta`` = ``log_or_floor(beta)``, so that beta^age = exp(age·log_beta), 0^0 = 1 included."""
    slots = torch.arange(window, dtype=torch.float64, device=device)
    age = torch.remainder(step - 1 - slots, window)
    return torch.where(age < step, torch.exp(age * log_beta) * (1 - beta), 0.0).float()


def log_or_floor(beta: float) -> float:
    """log(beta), or a very negative number for beta = 0 (then exp(age·it) is 1 at age 0, else 0)."""
    return math.log(beta) if beta > 0 else -1e30


def ring_slot(slot: float, window: int, device: torch.device) -> torch.Tensor:
    """The ring slot ``slot`` = (t-1) mod m as a one-element index tensor, made on the device."""
    slots = torch.arange(window, device=device)
    return (slots * (slots == slot)).sum().view(1)


def block_spans(full: int, size: int, whole: bool) -> list[tuple[int, int]]:
    """(first, end) of each piece of the ``full`` top-k blocks of ``size``: one piece when ``whole``,
    else ``topk_blocks_per_piece`` blocks a piece. The selection and the window's gathers share it."""
    per_piece = full if whole else topk_blocks_per_piece(full, size)
    return [(first, min(full, first + per_piece)) for first in range(0, full, per_piece)]


def select_top_k(read: Callable[[int, int], torch.Tensor], layout: tuple[int, int, int, int, int],
                 whole: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Global indices (K,) of the k largest |a| in every top-k block of the flat ``a``, and those entries.

    ``read(lo, hi)`` gives ``a[lo:hi]`` as float32, a piece of top-k blocks at a time (all of them
    when ``whole``): the eager step computes each piece from the gradient and the error there,
    without a dense ``a``.
    """
    full, size, k, rest, k_rest = layout
    picked, entries = [], []
    for first, last in block_spans(full, size, whole):
        blocks = read(first * size, last * size).view(last - first, size)
        local = blocks.abs().topk(k, dim=1, sorted=False).indices
        entries.append(blocks.gather(1, local).view(-1))
        offsets = torch.arange(first, last, device=local.device).mul_(size).unsqueeze(1)
        picked.append((local + offsets).view(-1))
    if rest:
        tail = read(full * size, full * size + rest)
        local = tail.abs().topk(k_rest, sorted=False).indices
        entries.append(tail[local])
        picked.append(local + full * size)
    if len(picked) == 1:
        return picked[0], entries[0]
    return torch.cat(picked), torch.cat(entries)


def local_indices(global_idx: torch.Tensor, size: int, dtype: torch.dtype) -> torch.Tensor:
    """Indices within their top-k block, in the window's index dtype."""
    return torch.remainder(global_idx, size).to(dtype)


def per_step(scalars: Sequence[float], window: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor]:
    """What every tensor of a param group shares at a step: the ring slot to write (``ring_slot``)
    and the window's weights for the two moments (``window_weights``, as (m, 1) columns)."""
    step, slot, b1, b2, log_b1, log_b2 = scalars[:6]
    return (ring_slot(slot, window, device), window_weights(step, window, b1, log_b1, device).unsqueeze(1),
            window_weights(step, window, b2, log_b2, device).unsqueeze(1))


def microadam_tensor_(p: torch.Tensor, g: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                      error: Sequence[torch.Tensor], layout: tuple, scalars: Sequence[float], whole: bool,
                      shared: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
    """One tensor's MicroAdam step (flat ``p``, ``g``); ``whole``: no pieces (what the compiled step does).

    ``shared``: ``per_step`` of ``scalars``, made once for all the tensors that share them."""
    topk, qbs, window, dense_share = layout
    bc1, bc2, eps, decay, lr, alpha = scalars[6:]  # the first six are read by ``per_step``
    ring, w1, w2 = shared
    n = p.numel()
    pieces = _pieces(n, qbs, whole)
    if len(pieces) == 1 and len(window_pieces(topk, whole)) == 1:
        # One piece (every tensor of a small model, the vectors of a large one): one buffer ``a``
        # serves the selection, the residual and the window, as in the compiled step. Its scratch is
        # that of a piece, and computing ``a`` twice made MicroAdam's eager step on topics-gpt 25% slower.
        whole = True
    if whole:  # a = g + e: the compiled step's one dense float32 buffer
        a = g.float() + ErrorFeedback.read(error, 0, n, qbs)
        chosen, entries = select_top_k(lambda lo, hi: a[lo:hi], topk, whole)
    else:  # a piece of a at a time, twice: to choose the top-k, then to write the residual
        chosen, entries = select_top_k(lambda lo, hi: g[lo:hi].float() + read_error_range(error, lo, hi, n, qbs),
                                       topk, whole)
    indices.index_copy_(0, ring, local_indices(chosen, topk[1], indices.dtype).unsqueeze(0))
    values.index_copy_(0, ring, entries.to(values.dtype).unsqueeze(0))
    if whole:
        a.index_fill_(0, chosen, 0.0)  # the residual, which becomes the next error
        ErrorFeedback.write(error, a, 0, n, qbs)
    else:
        for lo, hi in pieces:  # the same residual, piece by piece: g + e there, the chosen entries zeroed
            residual = torch.empty(hi - lo + 1, dtype=torch.float32, device=p.device)
            torch.add(g[lo:hi], ErrorFeedback.read(error, lo, hi, qbs), out=residual[:-1])
            inside = (chosen >= lo) & (chosen < hi)  # the others go to the spare last element
            residual.index_fill_(0, torch.where(inside, chosen - lo, hi - lo), 0.0)
            ErrorFeedback.write(error, residual[:-1], lo, hi, qbs)
            del residual  # before the next piece's is allocated: one piece's residual at a time

    p.mul_(decay)
    if dense_share:  # alpha > 0, the official pre-training option: a share of the error joins the update
        for lo, hi in pieces:
            e = ErrorFeedback.read(error, lo, hi, qbs)
            p[lo:hi].sub_(e * (lr * alpha))
            ErrorFeedback.write(error, e.mul_(1 - alpha), lo, hi, qbs)

    # The window's moments on its support, a piece of top-k blocks at a time (all of them at once
    # when ``whole``, through ``a``): each piece's entries index only its own blocks, so a buffer of
    # the piece's size (zeroed at the support only) takes its scatter-adds.
    for col_lo, col_hi, lo, hi in window_pieces(topk, whole):
        support = piece_support(indices[:, col_lo:col_hi], col_lo, topk, lo)
        buffer = a if whole else torch.empty(hi - lo, dtype=torch.float32, device=p.device)
        window_values = values[:, col_lo:col_hi].float()
        first = _sum_on_support(buffer, support, window_values * w1)
        second = _sum_on_support(buffer, support, window_values.square_() * w2)
        update = first.div_(bc1).div_(second.div_(bc2).sqrt_().add_(eps))
        # Repeated indices (one per slot that chose the entry) carry equal values, so their order is moot.
        piece = p[lo:hi]
        piece.index_copy_(0, support, piece.index_select(0, support).sub_(update.mul_(lr)))


def window_pieces(layout: tuple[int, int, int, int, int], whole: bool) -> list[tuple[int, int, int, int]]:
    """(first window column, end column, first element, end element) of each piece of top-k blocks.

    The pieces follow ``select_top_k``'s (``topk_blocks_per_piece``), with the shorter last block
    a piece of its own; ``whole``: one piece, every column and element. Sums on the support add
    each index's slots in slot order either way, so the pieces change no result.
    """
    full, size, k, rest, k_rest = layout
    if whole:
        return [(0, full * k + k_rest, 0, full * size + rest)]
    out = [(first * k, last * k, first * size, last * size) for first, last in block_spans(full, size, whole)]
    if rest:
        out.append((full * k, full * k + k_rest, full * size, full * size + rest))
    return out


def piece_support(local: torch.Tensor, col_lo: int, layout: tuple[int, int, int, int, int], lo: int) -> torch.Tensor:
    """The (m, c) window indices of columns ``col_lo``.. as flat positions within the piece that starts
    at element ``lo``: each entry's index within its block plus where its block starts."""
    full, size, k, _, _ = layout
    column = torch.arange(col_lo, col_lo + local.shape[-1], device=local.device)
    block = column.div_(k, rounding_mode="floor").clamp_(max=full)
    return (local.long() + block * size - lo).view(-1)


def _sum_on_support(buffer: torch.Tensor, support: torch.Tensor, weighted: torch.Tensor) -> torch.Tensor:
    """For each window entry, the sum of the weighted values the window holds at its index: a
    scatter-add into ``buffer`` (zeroed at the support only) read back at the support."""
    buffer.index_fill_(0, support, 0.0).index_add_(0, support, weighted.view(-1))
    return buffer.index_select(0, support)


def microadam_step(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[tuple], layout: tuple,
                   microadam_scalars: list[tuple[float, ...]]) -> None:
    """Every tensor's step in one function (what ``torch.compile`` fuses)."""
    _every_tensor(params, grads, states, layout, microadam_scalars, whole=True)


def microadam_step_eager(params: list[torch.Tensor], grads: list[torch.Tensor], states: list[tuple], layout: tuple,
                         microadam_scalars: list[tuple[float, ...]]) -> None:
    """The same step, eagerly, in pieces (``piece_elements``: at most ``MAX_PIECES``) besides the buffer ``a``."""
    _every_tensor(params, grads, states, layout, microadam_scalars, whole=False)


def _every_tensor(params, grads, states, layout, slots, whole: bool) -> None:
    """``params`` and ``grads`` come flat (``MicroAdam.step`` makes the views: a reshape inside a
    compiled graph with symbolic shapes costs several times the step)."""
    shared: dict[tuple, tuple] = {}  # per (scalar slot, window, device): made once a step, not once a tensor
    for p, g, (indices, values, *error), (tensor_layout, slot) in zip(params, grads, states, layout, strict=True):
        key = (slot, tensor_layout[2], p.device)
        if key not in shared:
            shared[key] = per_step(slots[slot], tensor_layout[2], p.device)
        microadam_tensor_(p, g, indices, values, error, tensor_layout, slots[slot], whole, shared[key])


# ----------------------------------------------------------------------------- the C kernel's step


class _Tensor(ctypes.Structure):
    """``mtensor`` of ``kernels/microadam.c``: one tensor's memory and layout."""

    _fields_ = [("n", ctypes.c_int64), ("p", ctypes.c_void_p), ("g", ctypes.c_void_p), ("codes", ctypes.c_void_p),
                ("emin", ctypes.c_void_p), ("emax", ctypes.c_void_p), ("idx", ctypes.c_void_p),
                ("vals", ctypes.c_void_p), ("K", ctypes.c_int64), ("full", ctypes.c_int64), ("B", ctypes.c_int64),
                ("k", ctypes.c_int64), ("rest", ctypes.c_int64), ("k_rest", ctypes.c_int64), ("qbs", ctypes.c_int64),
                ("idx32", ctypes.c_int64), ("group", ctypes.c_int64)]


class _Group(ctypes.Structure):
    """``mgroup``: the per-step numbers of one scalar slot (a param group at a step count)."""

    _fields_ = [("w1", ctypes.c_void_p), ("w2", ctypes.c_void_p), ("m", ctypes.c_int64), ("slot", ctypes.c_int64),
                ("bc1", ctypes.c_float), ("bc2", ctypes.c_float), ("eps", ctypes.c_float), ("decay", ctypes.c_float),
                ("lr", ctypes.c_float), ("pad", ctypes.c_float)]


def native_layout_ok(quant_block_size: int, alpha: float, quantize_error: bool) -> bool:
    """Whether the C kernel implements a param group with these options: the 4-bit error, alpha = 0,
    and an even quantization block (no byte of codes is shared by two blocks)."""
    return quantize_error and alpha == 0 and quant_block_size % 2 == 0


def scratch_row(tensors: Iterable[tuple[int, tuple[int, int, int, int, int], int]]) -> int:
    """Floats of the kernel's scratch per thread for tensors of (numel, top-k layout, qbs): for the
    largest top-k block B and k, ``a`` and the window's two sums (3B), k indices and a candidate
    list (8 bytes per element), or the largest quantization block's residual and a byte mask of
    it (``phase1_layout`` in the kernel); even, so that every thread's row starts 8-byte aligned."""
    items = list(tensors)
    size = max(topk[1] for _, topk, _ in items)
    k = max(topk[2] for _, topk, _ in items)
    chosen = k + k % 2 + 1
    quant = max(min(qbs, numel) for numel, _, qbs in items)
    row = max(5 * size + chosen + 1, quant + -(-quant // 4))  # phase 2: a block's residual, then its mask bytes
    return row + row % 2


class NativeStep(KernelStep):
    """MicroAdam's step through ``kernels/microadam.c``: every tensor in one call.

    The kernel's per-thread scratch (a top-k block's ``a``, the window's sums and the selection's
    candidates, or a quantization block's residual and mask) is a torch tensor allocated for the
    call, so the memory tracker counts it.
    """

    def __init__(self, library: ctypes.CDLL) -> None:
        super().__init__()
        self.fn = library.optbench_microadam_step
        self.fn.restype = ctypes.c_int
        self.fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                            ctypes.c_int64]
        self.row = 0
        self.windows: dict[int, int] = {}

    def _run(self, params, layout, scalars) -> None:
        keep, groups = [], (_Group * len(scalars))()
        for i, numbers in enumerate(scalars):
            window = self.windows[i]
            _, w1, w2 = per_step(numbers, window, torch.device("cpu"))
            keep += [w1, w2]  # alive until the call returns
            bc1, bc2, eps, decay, lr = numbers[6:11]
            groups[i] = _Group(w1.data_ptr(), w2.data_ptr(), window, int(numbers[1]), bc1, bc2, eps, decay, lr, 0.0)
        threads = torch.get_num_threads()
        scratch = torch.empty(threads * self.row, dtype=torch.float32)
        status = self.fn(len(params), ctypes.addressof(self.tensors), ctypes.addressof(groups), scratch.data_ptr(),
                         self.row, threads)
        if status:
            raise RuntimeError(f"MicroAdam's C kernel failed (status {status}: "
                               f"{'no memory for its work list' if status == 1 else 'scratch too small'})")

    def dry_run(self, params, grads, states, layout, scalars) -> None:
        """On fake tensors (a projection): the call's one torch allocation, its scratch."""
        row = scratch_row((p.numel(), topk, qbs) for p, ((topk, qbs, *_), _) in zip(params, layout, strict=True))
        torch.empty(torch.get_num_threads() * row, dtype=torch.float32, device=params[0].device)

    def _describe(self, params, states, layout) -> bool:
        tensors = (_Tensor * len(params))()
        windows = {}
        for i, (p, state, ((topk, qbs, window, dense_share), slot)) in enumerate(zip(params, states, layout,
                                                                                     strict=True)):
            if (len(state) != 5 or dense_share or qbs % 2 or p.dtype != torch.float32 or p.device.type != "cpu"
                    or not p.is_contiguous()):
                return False
            indices, values, codes, mins, maxs = state
            full, size, k, rest, k_rest = topk
            tensors[i] = _Tensor(p.numel(), p.data_ptr(), 0, codes.data_ptr(), mins.data_ptr(), maxs.data_ptr(),
                                 indices.data_ptr(), values.data_ptr(), indices.shape[1], full, size, k, rest, k_rest,
                                 qbs, int(indices.dtype == torch.int32), slot)
            windows[slot] = window
        row = scratch_row((p.numel(), topk, qbs) for p, ((topk, qbs, *_), _) in zip(params, layout, strict=True))
        self.tensors, self.row, self.windows = tensors, row, windows
        return True


# ----------------------------------------------------------------------------- the optimizer


class MicroAdam(PlannedStep, KeepStateDtypes, torch.optim.Optimizer):
    """MicroAdam (Modoranu et al., NeurIPS 2024) in PyTorch; see the module docstring.

    ``native=True`` (default) runs the C kernel where it applies, ``compile=True`` the step
    through ``torch.compile`` instead; ``optbench_impl`` says which step ran ("native",
    "compiled" or "eager").
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        m: int = 10,
        k_init: float = 0.01,
        quant_block_size: int = 100_000,
        topk_block_size: int = INT16_BLOCK_LIMIT,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        alpha: float = 0.0,
        quantize_error: bool = True,
        compile: bool = False,
        native: bool = True,
    ) -> None:
        check_microadam_hparams(lr, m, k_init, quant_block_size, topk_block_size, betas, eps, weight_decay, alpha)
        defaults = dict(lr=lr, m=int(m), k_init=k_init, quant_block_size=int(quant_block_size),
                        topk_block_size=int(topk_block_size), betas=tuple(betas), eps=eps,
                        weight_decay=weight_decay, alpha=alpha, quantize_error=bool(quantize_error))
        super().__init__(params, defaults)
        self._choose_step(compile, native, "microadam", NativeStep, self._native_fits)

    def _native_fits(self) -> bool:
        """Whether the C kernel implements every param group's options and takes every parameter."""
        return all(native_layout_ok(g["quant_block_size"], g["alpha"], g["quantize_error"])
                   and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in g["params"])
                   for g in self.param_groups)

    def _step_pieces(self):
        return _describe, _step_scalars, microadam_step, microadam_step_eager, self._native


def _describe(p: torch.Tensor, group: dict, state: dict) -> Prepared:
    """MicroAdam's state for ``p`` (made on its first step), the flat view the step updates, and its
    static layout entry: the top-k layout, quantization block, window and whether alpha > 0."""
    n = p.numel()
    layout = topk_layout(n, group["topk_block_size"], group["k_init"])
    if not state:
        state["step"] = 0
        width = window_width(n, group["topk_block_size"], group["k_init"])
        state["indices"] = torch.zeros(group["m"], width, dtype=index_dtype(layout[1]), device=p.device)
        state["values"] = torch.zeros(group["m"], width, dtype=torch.bfloat16, device=p.device)
        if group["quantize_error"]:
            qblocks = math.ceil(n / group["quant_block_size"])
            state["error_codes"] = torch.zeros(math.ceil(n / 2), dtype=torch.uint8, device=p.device)
            # min = max = 0 decodes to an all-zero error before the first step.
            state["error_min"] = torch.zeros(qblocks, dtype=torch.bfloat16, device=p.device)
            state["error_max"] = torch.zeros(qblocks, dtype=torch.bfloat16, device=p.device)
        else:
            state["error"] = torch.zeros(n, dtype=torch.float32, device=p.device)
    error = (state["error"],) if "error" in state else (state["error_codes"], state["error_min"], state["error_max"])
    work, copied = work_view(p, (n,))
    entry = ((layout, group["quant_block_size"], group["m"], group["alpha"] > 0),)
    return Prepared(work, (state["indices"], state["values"], *error), entry, (n,), copied)


def _step_scalars(step: int, group: dict) -> tuple[float, ...]:
    """(t, ring slot (t-1) mod m, b1, b2, log b1, log b2, 1 - b1^t, 1 - b2^t, eps, 1 - lr*wd, lr, alpha)."""
    (b1, b2), lr = group["betas"], float(group["lr"])
    return (float(step), float((step - 1) % group["m"]), b1, b2, log_or_floor(b1), log_or_floor(b2),
            bias_correction(b1, step), bias_correction(b2, step), group["eps"],
            decay_factor(lr, group["weight_decay"]), lr, group["alpha"])


def check_microadam_hparams(lr: float, m: int, k_init: float, quant_block_size: int, topk_block_size: int,
                            betas, eps: float, weight_decay: float, alpha: float = 0.0) -> None:
    check_lr(lr)
    check_positive_int(m=m, quant_block_size=quant_block_size, topk_block_size=topk_block_size)
    if not 0.0 < k_init <= 1.0:
        raise ValueError(f"k_init must be in (0, 1] (fraction of each block kept), got {k_init}")
    if len(tuple(betas)) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    check_betas(betas)
    check_nonnegative(eps=eps, weight_decay=weight_decay)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1) (share of the error feedback added to each update; "
                         f"the official code's experimental -2 is not offered), got {alpha}")


def build_microadam(model: nn.Module, lr: float, *, m=10, k_init=0.01, quant_block_size=100_000,
                    topk_block_size=INT16_BLOCK_LIMIT, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, alpha=0.0,
                    quantize_error=True, impl="torch", compile=False, native=True) -> torch.optim.Optimizer:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    check_microadam_hparams(lr, m, k_init, quant_block_size, topk_block_size, betas, eps, weight_decay, alpha)
    groups = decay_groups(model, weight_decay)
    if impl == "official":
        return _official(groups, lr, m, k_init, quant_block_size, betas, eps, weight_decay, alpha)
    return MicroAdam(groups, lr=lr, m=m, k_init=k_init, quant_block_size=quant_block_size,
                     topk_block_size=topk_block_size, betas=betas, eps=eps, weight_decay=weight_decay, alpha=alpha,
                     quantize_error=quantize_error, compile=compile, native=native)


def official_unmet(params: Sequence[torch.Tensor]) -> str | None:
    """Why the official optimizer cannot take these parameters, or None."""
    if importlib.util.find_spec(OFFICIAL_PACKAGE) is None:
        return f"impl='official' needs the package {OFFICIAL_PACKAGE} (pip install ista-daslab-optimizers)"
    return official_device_unmet(params)


def official_device_unmet(params: Sequence[torch.Tensor]) -> str | None:
    """Why the official CUDA kernels cannot take these parameters (CUDA and bfloat16 needed), or None.

    Checked before the optimizer is built: the kernels assert bf16 gradients in C, which aborts
    the whole process (a grid with it) instead of raising."""
    devices = sorted({p.device.type for p in params} - {"cuda"})
    if not params or devices:
        return f"impl='official' runs on CUDA parameters only, not {', '.join(devices) or 'no parameters'}"
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in params} - {"bfloat16"})
    if dtypes:
        return (f"impl='official' needs bfloat16 parameters and gradients (its CUDA kernels assert bf16), "
                f"got {', '.join(dtypes)}; convert the model with model.to(torch.bfloat16)")
    return None


def _official(groups, lr, m, k_init, quant_block_size, betas, eps, weight_decay, alpha) -> torch.optim.Optimizer:
    """The authors' CUDA MicroAdam (not installed on the development machine; no run made)."""
    reason = official_unmet(flat_params(groups))
    if reason is not None:
        raise ValueError(f"{reason}; or use impl='torch'")
    from ista_daslab_optimizers import MicroAdam as OfficialMicroAdam

    optimizer = OfficialMicroAdam(groups, m=m, lr=lr, quant_block_size=quant_block_size, k_init=k_init, alpha=alpha,
                                  betas=tuple(betas), weight_decay=weight_decay, eps=eps)
    optimizer.optbench_impl = "official"
    return optimizer


def microadam_param_state_bytes(param: torch.Tensor, m: int = 10, k_init: float = 0.01,
                                quant_block_size: int = 100_000, topk_block_size: int = INT16_BLOCK_LIMIT,
                                quantize_error: bool = True) -> int:
    n = param.numel()
    size = topk_layout(n, topk_block_size, k_init)[1]
    index_bytes = torch.empty((), dtype=index_dtype(size)).element_size()
    window = m * window_width(n, topk_block_size, k_init) * (index_bytes + 2)
    if quantize_error:
        return window + math.ceil(n / 2) + 2 * 2 * math.ceil(n / quant_block_size)
    return window + 4 * n


def official_state_bytes_estimate(param: torch.Tensor, m: int, k_init: float, quant_block_size: int) -> int:
    """The official package's layout as REFERENCES.md states it, not verified by a run:
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
                  "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "alpha": 0.0, "quantize_error": True,
                  "impl": "torch", "compile": False},
        default_lr=1e-3,
        lr_vs_adamw=1.0,  # Adam-normalised update: starts at the task's AdamW lr
        # Per element, at the defaults (m = 10, k_init = 0.01): read the gradient, read and write the
        # parameter (12 bytes in float32), read and write the 4-bit error (0.5 + 0.5) and read the
        # window, m·k_init·(2 index + 2 value) = 0.4 bytes: 13.4.
        bound_bytes_per_param=13.4,
        board_note=BOARD_NOTE,
        description="MicroAdam in PyTorch: top-k gradient window (int16+bf16) and 4-bit error feedback",
    )
)
