"""Build and load optbench's C kernels (``optimizers/kernels/*.c``) for CPU steps.

A kernel is compiled on first use with the system C compiler (``$CC``, else ``cc``) into
a shared library cached under ``$OPTBENCH_KERNEL_CACHE`` (default
``~/.cache/optbench/kernels``), named by a hash of its source, the flags, the compiler's
version and the machine, and loaded with ``ctypes``: no torch headers, no build step at
install time, about a second to build. This is how DeepSpeed's ``cpu_adam`` and
bitsandbytes' CPU backend reach the memory bandwidth on CPUs; torch ops cannot, for a step
made of a per-block top-k and scatter-adds (``results/ratios/microadam-floor.md``).

The flags keep every float operation as written (``-ffp-contract=off``: no fused
multiply-adds), so that a kernel reproduces the torch step's roundings. OpenMP
(``-fopenmp``) parallelizes over blocks; without it the kernel runs on one thread.

``OPTBENCH_NATIVE=0`` disables every kernel (the optimizers then take their torch step). A
missing compiler or a failed build is reported once, as a warning, and the torch step runs:
``optimizer.optbench_impl`` says which ran, and the runner records it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

NATIVE_ENV = "OPTBENCH_NATIVE"
CACHE_ENV = "OPTBENCH_KERNEL_CACHE"
KERNELS = Path(__file__).with_name("kernels")
FLAGS = ("-O3", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno")
NATIVE_ISA = ("-march=native",)  # this CPU's vector width (the cache key names the CPU's features)
OPENMP = ("-fopenmp",)
ATTEMPTS = (NATIVE_ISA + FLAGS + OPENMP, FLAGS + OPENMP, FLAGS)


def native_enabled() -> bool:
    """False when ``OPTBENCH_NATIVE=0``."""
    return os.environ.get(NATIVE_ENV, "1") != "0"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "optbench" / "kernels")


def compiler() -> str | None:
    """The C compiler to build with: ``$CC`` or ``cc`` on the PATH, or None."""
    name = os.environ.get("CC", "cc")
    return shutil.which(name)


@functools.cache
def cpu_features() -> str:
    """The CPU's feature flags (Linux: ``/proc/cpuinfo``), so that a cache shared by machines of
    different CPUs never hands one a library built with ``-march=native`` on another."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@functools.cache
def _compiler_version(path: str) -> str:
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def library_path(name: str, cc: str, flags: tuple[str, ...]) -> Path:
    source = (KERNELS / f"{name}.c").read_bytes()
    digest = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), _compiler_version(cc).encode(),
                                        platform.machine().encode(), platform.system().encode(),
                                        cpu_features().encode()])).hexdigest()[:16]
    return cache_dir() / f"{name}-{digest}.so"


def build(name: str, attempts: tuple[tuple[str, ...], ...] | None = None) -> Path:
    """The path of kernel ``name``'s shared library, compiled if the cache lacks it.

    Raises ``RuntimeError`` with the compiler's message when no compiler is found or every
    attempt fails (``attempts``, by default ``ATTEMPTS``: for this CPU with OpenMP, generic with
    OpenMP, generic)."""
    cc = compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler ({os.environ.get('CC', 'cc')!r} is not on the PATH)")
    errors = []
    for flags in attempts or ATTEMPTS:
        target = library_path(name, cc, flags)
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            partial = Path(tmp) / target.name
            result = subprocess.run([cc, *flags, str(KERNELS / f"{name}.c"), "-o", str(partial), "-lm"],
                                    capture_output=True, text=True, timeout=300)
            if result.returncode == 0:
                os.replace(partial, target)  # atomic: a concurrent build of the same kernel writes the same file
                return target
            errors.append((result.stderr or result.stdout).strip().splitlines()[-1:] or ["(no message)"])
    raise RuntimeError(f"building kernels/{name}.c failed: {errors[-1][0]}")


_LOADED: dict[str, ctypes.CDLL | None] = {}
_WHY: dict[str, str] = {}


def load(name: str) -> ctypes.CDLL | None:
    """Kernel ``name`` loaded (built first if needed), or None when disabled or unavailable;
    ``why_unavailable(name)`` then says why. A failure warns once per process."""
    if not native_enabled():
        return None
    if name not in _LOADED:
        try:
            _LOADED[name] = ctypes.CDLL(str(build(name)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _LOADED[name] = None
            _WHY[name] = str(exc)
            warnings.warn(f"optbench: the C kernel {name!r} is unavailable ({exc}); its optimizer takes the torch step",
                          stacklevel=2)
    return _LOADED[name]


class KernelStep:
    """The Python side of a kernel's step over every tensor (``run_step``'s ``native_fn``).

    The tensors' descriptors (a ctypes array of the kernel's struct, one per tensor, with a
    field ``g``) are made once per set of tensors, named by the identities of their state tuples
    and parameters (a step plan keeps them from step to step); each call then only sets the
    gradients' addresses and runs the kernel. A call returns False, before changing anything,
    when the kernel cannot take a tensor. Subclasses fill ``_describe`` and ``_run``.
    """

    def __init__(self) -> None:
        self.key: tuple = ()
        self.tensors = None

    def __call__(self, params, grads, states, layout, scalars) -> bool:
        key = tuple(map(id, states)) + tuple(map(id, params))
        if key != self.key:
            if not self._describe(params, states, layout):
                return False
            self.key = key
        if any(g.dtype != torch.float32 or not g.is_contiguous() or g.device.type != "cpu" for g in grads):
            return False
        for i, g in enumerate(grads):
            self.tensors[i].g = g.data_ptr()
        self._run(params, layout, scalars)
        return True

    def dry_run(self, params, grads, states, layout, scalars) -> None:
        """On fake tensors (a projection): the torch allocations a call would make, no arithmetic."""

    def _describe(self, params, states, layout) -> bool:
        """Fill ``self.tensors``; False if a tensor is one the kernel does not take."""
        raise NotImplementedError

    def _run(self, params, layout, scalars) -> None:
        raise NotImplementedError


def why_unavailable(name: str) -> str | None:
    if not native_enabled():
        return f"{NATIVE_ENV}=0"
    return _WHY.get(name)
