"""Byte counts for people: the one formatter the leaderboard, the gate and the projection print with."""

from __future__ import annotations

import math

BINARY_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def format_bytes(n: float | None, digits: int = 2, missing: str = "—") -> str:
    """``n`` bytes in the largest binary unit it reaches (``1.50 MiB``), whole bytes below 1 KiB;
    ``missing`` for None or a non-finite value (an empty table cell)."""
    if n is None or not math.isfinite(n):
        return missing
    for unit, size in BINARY_UNITS:
        if abs(n) >= size:
            return f"{n / size:.{digits}f} {unit}"
    return f"{n:.0f} B"


def byte_unit(max_bytes: float) -> tuple[str, int]:
    """The unit (name, size) a plot axis uses for values up to ``max_bytes``."""
    for unit, size in BINARY_UNITS:
        if max_bytes >= size:
            return unit, size
    return "B", 1
