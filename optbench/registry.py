"""The registries of optimizers and tasks, and how outside code adds to them.

Built-in optimizers live in the ``optimizers`` package and tasks in ``tasks``; each module
ends in one ``register_*`` call. Outside variants arrive through the entry-point group
``optbench.optimizers`` or a file given with ``--plugin``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path

from optbench.errors import UsageError
from optbench.spec import OptimizerSpec, TaskSpec

PRESETS = ("smoke", "cpu", "gpu", "gpu_check")
# Presets sized for a GPU: their default device is CUDA (optbench.env.default_device) and their
# default tasks are the GPU tier. gpu_check is a few steps per cell, to check a lent GPU end to end.
GPU_PRESETS = ("gpu", "gpu_check")
ENTRY_POINT_GROUP = "optbench.optimizers"

_OPTIMIZERS: dict[str, OptimizerSpec] = {}
_TASKS: dict[str, TaskSpec] = {}
_PLUGIN_FILES: list[Path] = []  # in load order, so workers of a cluster can load the same ones
_loaded = False


class UnknownNameError(UsageError):
    """A name that is not registered; the message lists the known ones."""


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    _register(_OPTIMIZERS, "optimizer", spec)
    return spec


def register_task(spec: TaskSpec) -> TaskSpec:
    _register(_TASKS, "task", spec)
    return spec


def _origin(spec) -> str:
    fn = getattr(spec, "build", None) or spec.setup
    return f"{fn.__module__}.{fn.__qualname__}"


def _register(table: dict, kind: str, spec) -> None:
    old = table.get(spec.name)
    # Re-importing a module registers the same spec again; a different origin is a name clash.
    if old is not None and _origin(old) != _origin(spec):
        raise ValueError(f"{kind} {spec.name!r} is already registered (by {_origin(old)})")
    table[spec.name] = spec


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("optbench.optimizers")
    importlib.import_module("optbench.tasks")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, type):
                obj()
        except Exception as exc:  # a broken plugin must not take the suite down
            warnings.warn(f"optbench plugin entry point {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)


def load_plugin(path: str | Path) -> None:
    """Import a Python file whose top level registers optimizers (``--plugin path.py``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"plugin file {str(path)!r} does not exist")
    _ensure_loaded()
    mod_name = f"optbench_plugin_{path.stem}_{abs(hash(path.resolve())) % 10**8}"
    if mod_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"plugin {str(path)!r} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:  # a plugin must not decide the exit status of a check
        del sys.modules[mod_name]
        raise UsageError(f"plugin {str(path)!r} called sys.exit({exc.code!r}) while loading; "
                         "a plugin file should only register optimizers") from None
    except Exception as exc:
        del sys.modules[mod_name]
        raise UsageError(f"plugin {str(path)!r} failed to load: {type(exc).__name__}: {exc}") from exc
    _PLUGIN_FILES.append(path.resolve())


def plugin_files() -> list[Path]:
    """The ``--plugin`` files loaded in this process, in load order."""
    return list(_PLUGIN_FILES)


def _get(table: dict, kind: str, name: str):
    _ensure_loaded()
    try:
        return table[name]
    except KeyError:
        raise UnknownNameError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}") from None


def get_optimizer(name: str) -> OptimizerSpec:
    return _get(_OPTIMIZERS, "optimizer", name)


def get_task(name: str) -> TaskSpec:
    return _get(_TASKS, "task", name)


def optimizers() -> dict[str, OptimizerSpec]:
    _ensure_loaded()
    return dict(_OPTIMIZERS)


def tasks() -> dict[str, TaskSpec]:
    _ensure_loaded()
    return dict(_TASKS)


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise UnknownNameError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return preset
