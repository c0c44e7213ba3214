"""A step time read against its memory-bandwidth bound.

An optimizer step over N parameters must at least read and write its parameters, gradients
and state once: ``bound_bytes_per_param`` bytes per parameter, declared on each optimizer's
spec. At the machine's memory bandwidth B that takes ``N * bound_bytes_per_param / B``
seconds, the fastest any implementation of that method can step there. A step time divided
by it ("÷ bound") tells a method's cost (its bound) apart from an implementation's (how far
above the bound it runs): fused AdamW runs near 1 on a CPU; a method whose ratio is far above
1 is slow because of its code, not its algorithm.

``measure_bandwidth`` times ``a.add_(b)`` on large float32 tensors (3 x 4 bytes per element:
two reads, one write), the same access pattern as an optimizer step. Compare step times and
bandwidths measured on the same machine under the same load only.
"""

from __future__ import annotations

import statistics
import time

import torch

DEFAULT_NUMEL = 1 << 26  # 64M float32 elements: 256 MiB per tensor, far beyond any cache


def add_seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    """Seconds of one ``a.add_(b)`` (synchronised on CUDA)."""
    cuda = a.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(a.device)
    start = time.perf_counter()
    a.add_(b)
    if cuda:
        torch.cuda.synchronize(a.device)
    return time.perf_counter() - start


def add_bytes(numel: int) -> int:
    """Bytes ``a.add_(b)`` moves on float32 tensors of ``numel`` elements: read a and b, write a."""
    return 3 * 4 * numel


def measure_bandwidth(device: str | torch.device = "cpu", numel: int = DEFAULT_NUMEL, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s: the median of ``repeats`` timed ``a.add_(b)`` after one untimed."""
    a = torch.zeros(numel, device=device)
    b = torch.ones(numel, device=device)
    a.add_(b)  # first touch: page faults are not bandwidth
    seconds = statistics.median(add_seconds(a, b) for _ in range(repeats))
    return add_bytes(numel) / seconds


def bound_seconds(bound_bytes_per_param: float, n_params: int, bandwidth: float) -> float:
    """The fastest a step can be: the bytes it must move, at ``bandwidth`` bytes/s."""
    return bound_bytes_per_param * n_params / bandwidth


def over_bound(step_s: float | None, bound_bytes_per_param: float | None, n_params: int | None,
               bandwidth: float | None) -> float | None:
    """Step time ÷ its bandwidth bound (>= 1 up to timing noise); None when a figure is missing.

    For the leaderboard: ``over_bound(record["timing"]["optimizer_step_s_median"],
    spec.bound_bytes_per_param, parameters of the task's model, bandwidth of the machine)``.
    """
    if not step_s or not bound_bytes_per_param or not n_params or not bandwidth:
        return None
    return step_s / bound_seconds(bound_bytes_per_param, n_params, bandwidth)
