"""The projection as text: its table rows, summary line, method legend, and a markdown page.

Kept apart from :mod:`optbench.project` (which computes) and from the ``optbench project`` verb
(which parses and prints), so the numbers, their wording and the command line each have one home.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone

import torch
from tabulate import tabulate

from optbench.memory import CATEGORIES
from optbench.project import Projection
from optbench.units import format_bytes


def human(nbytes: int | None) -> str:
    return format_bytes(nbytes, missing="-")


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


TABLE_HEADERS = ["optimizer", "state", "state/AdamW", "peak", "peak/AdamW", "params", "grads", "optimizer",
                 "activations", "temporaries", "method", "note"]


def table_rows(projection: Projection) -> list[list[str]]:
    out = []
    for r in projection.rows:
        if r.status != "ok":
            out.append([r.optimizer, "-", "-", "-", "-", "-", "-", "-", "-", "-", r.status, r.note])
            continue
        cat = r.peak_by_category
        out.append([r.optimizer, human(r.state_bytes), _ratio(r.state_ratio), human(r.peak_bytes), _ratio(r.peak_ratio),
                    *(human(cat.get(k)) for k in CATEGORIES), r.method, r.note])
    return out


def summary_line(projection: Projection) -> str:
    return (f"{projection.model}: {projection.description}; {projection.n_params:,} trainable parameters "
            f"({human(projection.param_bytes)} in {projection.dtype}); {projection.batch}; "
            f"{projection.steps} training steps on fake tensors")


METHOD_LEGEND = (
    "method: `state: measured` = bytes of the optimizer's state tensors after the steps, run on fake tensors; "
    "`state: formula` = the spec's exact `state_bytes(model, **hparams)` (the optimizer could not run on fake "
    "tensors; the note says why). `peak: composed` = the largest of (tracked peak of one forward/backward step "
    "with stateless SGD + the optimizer's state) and (tracked peak of the optimizer's own steps with every "
    "gradient present, its scratch included); `peak: tracked` = torch MemTracker's peak over whole training steps "
    "(`--full-steps`); `peak: estimate` = the stateless forward/backward peak + the formula state, without the "
    "optimizer step's scratch. Breakdown at the peak: params include buffers, activations include the batch, "
    "temporaries are backward scratch and optimizer-step scratch. Fake tensors count exact element bytes; a CUDA "
    "allocator adds block rounding (512 B per tensor) and fragmentation on top."
)



def markdown(projections: list[Projection], command: str, wall_s: float, outer: str | None = None) -> str:
    """The projections as a markdown page whose header names the command that wrote it."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Memory projection",
        "",
        f"Written by `{outer}`, which runs `{command}`," if outer else f"Written by `{command}`",
        f"on {stamp} (torch {torch.__version__}, Python {platform.python_version()}, "
        f"{wall_s:.0f} s wall).",
        "",
        "Every model is built on fake tensors (`FakeTensorMode`: shapes and dtypes, no memory) and each "
        "optimizer runs through its registered spec with its default hyperparameters. Ratios are to AdamW.",
        "",
        METHOD_LEGEND,
        "",
    ]
    for p in projections:
        lines += [f"## {p.model}", "", summary_line(p) + ".", ""]
        if p.roles:
            lines += [f"Parameter roles ({p.roles.get('source')}): "
                      + ", ".join(f"{k} {v}" for k, v in sorted(p.roles.get("counts", {}).items())) + ".", ""]
        lines += [tabulate(table_rows(p), headers=TABLE_HEADERS, tablefmt="github"), ""]
        lines += [f"- {note}" for note in p.notes] + [""]
    return "\n".join(lines)
