"""Argument helpers shared by the verbs."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from optbench import registry

DEFAULT_RUNS_DIR = "results/runs"


def csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


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
    """``key=value`` pairs; values are parsed as JSON when they can be (numbers, lists, booleans)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"hyperparameter {pair!r} is not of the form key=value")
        key, value = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def add_plugin_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="a Python file that registers extra optimizers (repeatable)")


def load_plugins(args: argparse.Namespace) -> None:
    for path in getattr(args, "plugin", None) or []:
        registry.load_plugin(path)


def expand_optimizers(names: list[str] | None, device: str | None = None) -> list[str]:
    """Named optimizers, or 'all' / nothing = every optimizer available on ``device``."""
    if not names or names == ["all"]:
        return [n for n, s in sorted(registry.optimizers().items()) if s.unavailable_reason(device) is None]
    for name in names:
        registry.get_optimizer(name)
    return names


def expand_tasks(names: list[str] | None, preset: str) -> list[str]:
    """Named tasks, or 'all' / nothing = the tier the preset is for (cpu tasks unless preset is gpu)."""
    if not names or names == ["all"]:
        tier = "gpu" if preset == "gpu" else "cpu"
        return [n for n, s in sorted(registry.tasks().items()) if s.tier == tier]
    for name in names:
        registry.get_task(name)
    return names


def command_line(verb: str) -> str:
    """The command as the user typed it, from the verb on (for the headers of written tables)."""
    argv = sys.argv[sys.argv.index(verb):] if verb in sys.argv else [verb]
    return "optbench " + shlex.join(argv)
