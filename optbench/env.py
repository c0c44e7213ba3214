"""The environment a run was measured in, recorded with every run."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

import optbench

REPO_ROOT = Path(__file__).resolve().parent.parent


@lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the checkout optbench runs from, with ``-dirty`` when files differ; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def environment(device: torch.device | str) -> dict:
    device = torch.device(device)
    return {
        "optbench": optbench.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "device_name": device_name(device),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
    }


# What must match for two runs' timings and memory to be comparable (the gate's reuse rule and
# the report's mixed-environment warning both use it).
HARDWARE_FIELDS = ("device", "device_name", "cpu", "torch", "threads")


def hardware_key(env: dict) -> tuple:
    return tuple(env.get(field) for field in HARDWARE_FIELDS)


def timing_key(record: dict) -> tuple:
    """What must match for two runs' step times to be comparable: the hardware and how many runs
    shared the node (``timing.concurrent_runs``, see optbench.executors; absent = ran alone)."""
    return (*hardware_key(record.get("env") or {}), (record.get("timing") or {}).get("concurrent_runs") or 1)


def default_device(preset: str) -> str:
    """The device a run of ``preset`` gets when none is named: CUDA for the GPU presets, else the CPU.

    A GPU preset on a machine without CUDA is a usage error rather than a silent CPU fallback
    (its budgets take hours on a CPU); ``--device cpu`` runs it there on purpose.
    """
    from optbench.errors import UsageError
    from optbench.registry import GPU_PRESETS

    if preset not in GPU_PRESETS:
        return "cpu"
    if not torch.cuda.is_available():
        raise UsageError(f"preset {preset!r} runs on CUDA, which this machine lacks (torch {torch.__version__}); "
                         "pass --device cpu to run it on the CPU anyway")
    return "cuda"


def resolve_device(preset: str, device: str | None = None) -> str:
    """The device a run uses: ``device`` checked (``check_device``) when given, else ``default_device(preset)``."""
    return check_device(device) if device else default_device(preset)


DEVICE_KINDS = ("cpu", "cuda")  # what a run may be given (spec.DEVICES); "cuda:N" names one GPU


def check_device(device: str, here: bool = True) -> str:
    """``device`` when a run can use it (``here``: on this machine); a UsageError naming it otherwise.

    ``here=False`` checks the name only: runs that execute on other machines (a Ray cluster)
    may ask for CUDA from a driver that has none.
    """
    from optbench.errors import UsageError

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in DEVICE_KINDS:
        raise UsageError(f"unknown device {device!r}; known: cpu, cuda, cuda:N")
    if here and kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r}: CUDA is not available on this machine (torch {torch.__version__}); "
                         "use --device cpu")
    return device
