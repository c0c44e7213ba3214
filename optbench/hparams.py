"""Hyperparameter values checked by type and range before anything runs.

A value given by the user (``--hparam``, a plugin's caller, a grid) must have the type of the
optimizer's declared default for that key (a float default takes any real number, an int
default an integer, a bool default a bool, a tuple default a list of the same length whose
items follow the same rule), and the conventional keys shared by the optimizers here must be
in range (``RANGES``). A bad value is a ``UsageError`` naming it and what is accepted, so it
never becomes a stored error record. A default of ``None`` (e.g. SlimAdam's ``rules``)
accepts any value; the optimizer's own ``build`` checks those.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from optbench.errors import UsageError

# key -> (what is accepted, test); applied to each item of a sequence (betas, Adafactor's eps pair).
RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "lr": ("a finite number > 0", lambda v: 0 < v < math.inf),
    "weight_decay": ("a finite number >= 0", lambda v: 0 <= v < math.inf),
    "eps": ("a finite number > 0", lambda v: 0 < v < math.inf),
    "betas": ("numbers in [0, 1)", lambda v: 0 <= v < 1),
    "beta": ("a number in [0, 1)", lambda v: 0 <= v < 1),
    "momentum": ("a number in [0, 1)", lambda v: 0 <= v < 1),
}


def _show(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_error(key: str, value: Any, default: Any) -> str | None:
    """Why ``value`` does not have the type of ``default``, or None when it does."""
    if default is None:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected an integer"
    if isinstance(default, float):
        return None if _is_real(value) else "expected a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "expected a string"
    if isinstance(default, (tuple, list)):
        if not isinstance(value, (tuple, list)) or len(value) != len(default):
            return f"expected a list of {len(default)} like {_show(list(default))}"
        for item, item_default in zip(value, default):
            if item_default is None and (item is None or _is_real(item)):
                continue
            if _type_error(key, item, item_default):
                return f"expected a list of {len(default)} like {_show(list(default))}"
        return None
    return None


def _range_error(key: str, value: Any) -> str | None:
    if key not in RANGES:
        return None
    accepted, test = RANGES[key]
    items = value if isinstance(value, (tuple, list)) else [value]
    for item in items:
        if item is None:
            continue
        if not _is_real(item) or not test(float(item)):
            return f"expected {accepted}"
    return None


def check_lr(value: Any) -> float:
    """An explicitly given learning rate as a float; UsageError unless a finite number > 0."""
    if not _is_real(value) or not 0 < value < math.inf:
        raise UsageError(f"lr={_show(value)}: expected {RANGES['lr'][0]}")
    return float(value)


def check_hparams(optimizer: str, defaults: Mapping[str, Any], hparams: Mapping[str, Any]) -> None:
    """UsageError for the first key of ``hparams`` that is unknown, mistyped or out of range."""
    for key, value in hparams.items():
        if key == "lr":
            check_lr(value)
            continue
        if key not in defaults:
            known = ", ".join(sorted(["lr", *defaults]))
            raise UsageError(f"unknown hyperparameter {key!r} for optimizer {optimizer!r}; known: {known}")
        problem = _type_error(key, value, defaults[key]) or _range_error(key, value)
        if problem:
            raise UsageError(f"{key}={_show(value)} for optimizer {optimizer!r}: {problem} "
                             f"(default {_show(defaults[key])})")
