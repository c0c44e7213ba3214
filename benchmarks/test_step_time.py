"""Micro-benchmark: one ``optimizer.step()`` per registered optimizer on the topics-gpt task's GPT.

Gradients are computed once and left in place, so only the step is timed; warm-up rounds
are excluded (pytest-benchmark ``pedantic``). Not collected by the default run (testpaths =
tests). Save a baseline, then compare a later run against it and fail on a slowdown:

    pytest benchmarks/test_step_time.py --benchmark-save=baseline
    pytest benchmarks/test_step_time.py --benchmark-compare --benchmark-compare-fail=min:50%

The regression gate is the fastest step over the rounds (min): a run fails when an
optimizer's min is more than 50% above the saved baseline's (pytest-benchmark compares each
benchmark by name). The min, not the median: noise on a CPU only ever adds time. The bound is
wide because on the 2-core machine two back-to-back runs differed by up to 40% in the median
and 25% in the min of 1-2 ms steps; it catches a lost fused/multi-tensor path, not 10%.
Compare only runs taken on the same machine with the same load; on a shared machine even 50% can be
within the noise. Rounds and warm-up: OPTBENCH_MICROBENCH_ROUNDS (default 30) and
OPTBENCH_MICROBENCH_WARMUP (default 5); device: OPTBENCH_DEVICE (default cpu; the CUDA path
synchronizes after each step and was never run here).
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.optimizer_ratios import build, fill_gradients
from optbench.registry import optimizers

ROUNDS = int(os.environ.get("OPTBENCH_MICROBENCH_ROUNDS", "30"))
WARMUP = int(os.environ.get("OPTBENCH_MICROBENCH_WARMUP", "5"))
DEVICE = os.environ.get("OPTBENCH_DEVICE", "cpu")
NAMES = sorted(optimizers())


@pytest.mark.parametrize("name", NAMES)
def test_step_time(benchmark, name):
    spec = optimizers()[name]
    reason = spec.unavailable_reason(DEVICE)
    if reason:
        pytest.skip(f"{name} unavailable: {reason}")
    model, source = build("topics", DEVICE), "optbench.tasks.topics_gpt.build_model"
    hparams = spec.resolve_hparams()
    try:
        optimizer = spec.build(model, spec.default_lr, **hparams)
    except ValueError as exc:  # e.g. slimadam-snr without rules for this task
        pytest.skip(f"{name} cannot build on {source}: {exc}")
    fill_gradients(model)

    def step() -> None:
        optimizer.step()
        if DEVICE.startswith("cuda"):
            torch.cuda.synchronize()

    benchmark.group = f"optimizer.step, {source}"
    benchmark.extra_info.update(device=DEVICE, threads=torch.get_num_threads(), model=source)
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
