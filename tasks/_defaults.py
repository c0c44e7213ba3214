"""Starting learning rates per optimizer, derived from a task's AdamW lr (a sweep later replaces them).

Optimizers whose update is Adam-normalised (SlimAdam, Adam-mini, 8-bit Adam, GaLore, APOLLO,
SMMF, MicroAdam) start at the AdamW lr; Lion at a third of it (its paper: 3-10x smaller than
AdamW, as its sign update has a larger norm); Adafactor at torch's default 1e-2, which torch
scales by each parameter's RMS; SGD at a task-specific value.
"""

from __future__ import annotations

ADAM_LIKE = ("adamw", "adam", "slimadam", "slimadam-snr", "adam-mini", "adam8bit", "galore", "apollo",
             "apollo-mini", "smmf", "microadam")


def default_lrs(adamw_lr: float, sgd_lr: float) -> dict[str, float]:
    lrs = {name: adamw_lr for name in ADAM_LIKE}
    lrs.update({"lion": float(f"{adamw_lr / 3:.2g}"), "adafactor": 1e-2, "sgd": sgd_lr})
    return lrs
