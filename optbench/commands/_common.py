"""Argument helpers shared by the verbs.

Everything here is cheap to import: the registry (and with it torch and every optimizer) is
imported inside the functions that need it, so ``optbench --help`` starts fast. Bad values are
``UsageError``s naming the value and the accepted ones (exit 2, see ``optbench.cli``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from optbench.atomic import writable_dir, writable_file  # noqa: F401 - the verbs' path checks
from optbench.errors import UsageError

DEFAULT_RUNS_DIR = "results/runs"


def csv_list(text: str) -> list[str]:
    """Comma-separated names; an empty list (``--tasks ''``, an unset shell variable) is an error, never 'all'."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"empty list {text!r}: give comma-separated names, or 'all'")
    return items


def int_list(text: str) -> list[int]:
    try:
        return [int(item) for item in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def float_list(text: str) -> list[float]:
    try:
        return [float(item) for item in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def parse_hparams(pairs: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as JSON when they can be (numbers, lists, booleans, null),
    else kept as strings. Types and ranges are checked against the optimizer later
    (``optbench.hparams``), still before anything runs."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--hparam {pair!r} is not of the form key=value (e.g. lr=3e-4, betas=[0.9,0.95])")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def add_plugin_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="a Python file that registers extra optimizers (repeatable)")


def load_plugins(args: argparse.Namespace) -> None:
    from optbench import registry

    for path in getattr(args, "plugin", None) or []:
        registry.load_plugin(path)


def resolve_device_arg(args: argparse.Namespace) -> str:
    """``--device`` checked (CUDA must be here unless the runs execute on a cluster), else the preset's device."""
    from optbench.env import check_device, default_device

    if args.device:
        return check_device(args.device, here=getattr(args, "executor", "local") == "local")
    return default_device(args.preset)


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """``--executor``, ``--address`` and ``--threads``: where and how wide the grid's runs execute."""
    parser.add_argument("--executor", default="local", choices=("local", "ray"),
                        help="local: one run after another in this process (default; timing-clean); "
                             "ray: each run a Ray task, several at once")
    parser.add_argument("--address", default=None,
                        help="with --executor ray: the Ray cluster to join ('auto': the one this machine belongs "
                             "to; host:port; ray://host:10001); default: start a local Ray instance")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run; under ray also the CPUs each run asks for "
                             "(default: torch's default here, all cores)")


def executor_from_args(args: argparse.Namespace):
    """The ``optbench.executors.Executor`` the arguments name (close it when the verb is done)."""
    from optbench.executors import make_executor

    return make_executor(args.executor, args.address, args.threads)


def expand_optimizers(names: list[str] | None, device: str | None = None) -> list[str]:
    """Named optimizers, or 'all' / nothing = every optimizer available on ``device``."""
    from optbench import registry

    if not names or names == ["all"]:
        return [n for n, s in sorted(registry.optimizers().items()) if s.unavailable_reason(device) is None]
    for name in names:
        registry.get_optimizer(name)
    return names


def expand_tasks(names: list[str] | None, preset: str) -> list[str]:
    """Named tasks, or 'all' / nothing = the tier the preset is for (the GPU tier for gpu and gpu_check)."""
    from optbench import registry

    if not names or names == ["all"]:
        tier = "gpu" if preset in registry.GPU_PRESETS else "cpu"
        return [n for n, s in sorted(registry.tasks().items()) if s.tier == tier]
    for name in names:
        registry.get_task(name)
    return names


def command_line(verb: str) -> str:
    """The command as the user typed it, from the verb on (for the headers of written tables)."""
    argv = sys.argv[sys.argv.index(verb):] if verb in sys.argv else [verb]
    return "optbench " + shlex.join(argv)
