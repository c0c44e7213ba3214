"""Does an optimizer's declared state formula agree with the state it actually keeps?

A spec may declare ``state_bytes(model, **hparams)``, the exact bytes of its state after a step
(the projection relies on it for models too large to build); a plugin may leave it out. The
runner counts the state after every run anyway (``optbench.state``) and compares the two, so a
formula that lies (say, one returning 0) cannot pass unnoticed. The record's memory section says:

- ``state_bytes_source``: ``"formula"`` when a formula exists and equals the count (the figure is
  then both), ``"measured"`` when there is none or it disagrees (the count is the figure);
- ``state_bytes_formula``: what the formula gave (``None`` without one, or when it raised);
- ``state_bytes_issue``: why the formula was not used although the spec declares one, else ``None``;

and an issue is also a note of the record; ``optbench check`` repeats it in its verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the record-side helper below is read by the gate, which need not load torch
    from torch import nn

    from optbench.spec import OptimizerSpec


@dataclass(frozen=True)
class StateBytesCheck:
    source: str  # "formula" | "measured"
    formula: int | None
    note: str | None  # why the formula was not used, when it exists

    def memory_fields(self) -> dict[str, Any]:
        """The keys this adds to a record's ``memory`` section."""
        return {"state_bytes_source": self.source, "state_bytes_formula": self.formula, "state_bytes_issue": self.note}


def check_state_formula(spec: OptimizerSpec, model: nn.Module, hparams: Mapping[str, Any],
                        measured: int) -> StateBytesCheck:
    """Compare ``spec.state_bytes(model, **hparams)`` with the ``measured`` state bytes."""
    if spec.state_bytes is None:
        return StateBytesCheck("measured", None, None)
    try:
        formula = int(spec.state_bytes(model, **hparams))
    except Exception as exc:  # noqa: BLE001 - a broken formula is reported, the run stays valid
        return StateBytesCheck("measured", None, f"state_bytes formula of {spec.name!r} raised "
                                                 f"{type(exc).__name__}: {exc}; the measured state is used")
    if formula == measured:
        return StateBytesCheck("formula", formula, None)
    return StateBytesCheck("measured", formula, f"state_bytes formula of {spec.name!r} gives {formula} B but the "
                                                f"optimizer holds {measured} B; the measured state is used")


def state_formula_issue(record: Mapping[str, Any]) -> str | None:
    """From a run record (JSON): why the spec's state formula was not used, or None when it was or there is none."""
    return (record.get("memory") or {}).get("state_bytes_issue")
