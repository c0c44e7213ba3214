"""SNR traces read back from files: optbench's own ``trace.csv`` and the reference code's SNR logs.

``optbench snr --from-trace FILE`` derives SlimAdam rules from a trace that was recorded
earlier, by us or by someone else, without training a proxy. Two formats are read; which one a
file is follows from its header:

- optbench (``optbench.snr.write_trace_csv``): ``step, parameter, role, shape, option, axes,
  snr, mean, mean_sq, variance, relerr``; shape ``768x768``, axes ``0 1``.
- the reference (Kalra et al.'s code, github.com/dayal-kalra/low-memory-adam, which commits its
  logs under ``snr_data/``): ``step, key, shape, compress_dims, snr, mean_sqr, var``; shape and
  dims as Python tuples (``(768, 768)``, ``(0, 1)``), one row per non-empty subset of dims.
  Columns map to ours as key -> parameter, compress_dims -> axes, mean_sqr -> mean_sq,
  var -> variance. It has no role, no tensor-wide mean and no relative error: roles come from
  the task's declared roles when a task is given, else from the parameter names
  (``role_from_name``); only the ``snr`` criterion can be applied to it.

Blank or ``nan`` statistics (a slice whose V was all zero) read as NaN and are dropped when the
steps are averaged, as in the reference. The rule itself is ``optbench.snr.derive_rules``. It
differs from the reference's in two places: tensors with fewer than 2 dims are never compressed
(the reference leaves out norm weights by name, and would compress another 1-D tensor), and an
option that averages over a single element is not considered (it saves nothing).
"""

from __future__ import annotations

import ast
import csv
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from optbench.snr import ParamInfo, ProxyTrace, axis_options, option_name

STAT_KEYS = ("snr", "mean", "mean_sq", "variance", "relerr")
# format -> (columns it must have, its column -> our column)
FORMATS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "optbench": (("step", "parameter", "role", "shape", "axes", "snr"), {}),
    "reference": (("step", "key", "shape", "compress_dims", "snr"),
                  {"key": "parameter", "compress_dims": "axes", "mean_sqr": "mean_sq", "var": "variance"}),
}
# What each criterion reads from a row (optbench.snr.CRITERIA).
CRITERION_COLUMNS = {"snr": ("snr",), "variance": ("variance", "mean"), "relerr": ("relerr",)}

# Name patterns -> role, first match wins, on the lower-cased name. For logs that carry no role: the
# usual module names of GPT-2 (nanoGPT, HF), LLaMA, ViT/timm and torchvision models.
NAME_ROLES: tuple[tuple[str, str], ...] = (
    (r"(^|\.)(ln_?\w*|\w*norm\w*|bn\d*)\.(weight|bias)$", "norm"),
    (r"(^|\.|_)bias$", "bias"),
    (r"(^|\.)(wpe|pos_emb\w*|position_embeddings?|pos_embed)(\.weight)?$", "pos_embedding"),
    (r"(^|\.)(wte|tok_emb\w*|embed_tokens|token_embedding|word_embeddings|embedding|embed)\.weight$", "embedding"),
    (r"(^|\.)(c_attn|qkv|query_key_value)\.weight$|(^|\.)in_proj_weight$", "qkv"),
    (r"(^|\.)(q_proj|query|wq|q)\.weight$", "query"),
    (r"(^|\.)(k_proj|key|wk|k)\.weight$", "key"),
    (r"(^|\.)(v_proj|value|wv|v)\.weight$", "value"),
    (r"(^|\.)(o_proj|out_proj|output_proj|wo)\.weight$|(^|\.)attn\.(c_proj|proj)\.weight$", "attn_out"),
    (r"(^|\.)(c_fc|fc1|up_proj|gate_proj|mlp_up)\.weight$|(^|\.)(mlp\.gate|feed_forward\.w[13])\.weight$",
     "mlp_in"),
    (r"(^|\.)(fc2|down_proj|mlp_proj|mlp_down)\.weight$|(^|\.)(mlp\.c_proj|feed_forward\.w2)\.weight$", "mlp_out"),
    (r"(^|\.)(lm_head|output_layer)\.weight$|^output\.weight$", "head"),
    (r"^(fc|head)\.weight$|(^|\.)classifier\.weight$", "classifier"),
    (r"^(conv1|conv_stem|patch_embed\.proj|stem\.\w+)\.weight$", "conv_in"),
)


def role_from_name(name: str, shape: tuple[int, ...]) -> str:
    """A parameter's role guessed from its name (``NAME_ROLES``), else from its shape.

    Only for traces that carry no roles: a task declares its own roles and they take precedence.
    """
    lowered = name.lower()
    for pattern, role in NAME_ROLES:
        if re.search(pattern, lowered):
            return role
    if len(shape) > 2:
        return "conv"
    return "linear" if len(shape) == 2 else "other"


def detect_format(columns: list[str], path: Path) -> str:
    """Which trace format a header is; a ValueError naming the file and both column sets otherwise."""
    for name, (required, _) in FORMATS.items():
        if set(required) <= set(columns):
            return name
    accepted = "; ".join(f"{name}: {', '.join(req)}" for name, (req, _) in FORMATS.items())
    raise ValueError(f"{path}: columns {', '.join(columns) or '(none)'} are not an SNR trace; accepted formats "
                     f"(at least these columns): {accepted}")


def _shape(text: str, fmt: str) -> tuple[int, ...]:
    if fmt == "optbench":
        return tuple(int(s) for s in text.split("x")) if text else ()
    value = ast.literal_eval(text)
    return (int(value),) if isinstance(value, int) else tuple(int(s) for s in value)


def _axes(text: str, fmt: str) -> tuple[int, ...]:
    if fmt == "optbench":
        return tuple(int(a) for a in text.split())
    value = ast.literal_eval(text)
    return (int(value),) if isinstance(value, int) else tuple(int(a) for a in value)


def _number(text: str | None) -> float:
    return math.nan if text is None or text.strip() == "" else float(text)


def read_trace(path: str | Path, *, roles: Mapping[str, str] | None = None, task: str | None = None) -> ProxyTrace:
    """A trace file (either format) as a ``ProxyTrace`` whose rows use our columns.

    ``roles`` (a task's declared roles) override the file's roles or the ones inferred from names.
    The trace's ``source`` says which file and format it came from and which statistics it has.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"trace file {str(path)!r} does not exist")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or [])
        fmt = detect_format(columns, path)
        rename = FORMATS[fmt][1]
        rows: list[dict[str, Any]] = []
        params: dict[str, ParamInfo] = {}
        for line, raw in enumerate(reader, start=2):
            row = {rename.get(k, k): v for k, v in raw.items()}
            try:
                name = row["parameter"]
                shape = _shape(row["shape"], fmt)
                axes = tuple(sorted(_axes(row["axes"], fmt)))
                step = int(row["step"])
                stats = {key: _number(row.get(key)) for key in STAT_KEYS}
            except (ValueError, SyntaxError, TypeError) as exc:
                raise ValueError(f"{path}:{line}: cannot read this {fmt}-format row ({exc})") from None
            role = (roles or {}).get(name) or (row.get("role") if fmt == "optbench" else None)
            known = params.get(name)
            if known is None:
                params[name] = known = ParamInfo(name, shape, role or role_from_name(name, shape))
            elif known.shape != shape:
                raise ValueError(f"{path}:{line}: {name!r} has shape {shape}, earlier rows say {known.shape}")
            rows.append({"step": step, "parameter": name, "role": known.role,
                         "shape": "x".join(map(str, shape)), "option": option_name(shape, axes),
                         "axes": " ".join(map(str, axes)), **stats})
    if not rows:
        raise ValueError(f"{path}: the trace has a header but no rows")
    steps = sorted({r["step"] for r in rows})
    present = [k for k in STAT_KEYS if any(not math.isnan(r[k]) for r in rows)]
    trace = ProxyTrace(task=task, preset=None, lr=None, steps=steps[-1], every=None, seed=None,
                       params=list(params.values()), rows=rows,
                       source={"path": str(path), "format": fmt, "statistics": present, "recorded_steps": steps})
    trace.cost = {"recorded_steps": len(steps)}
    return trace


def check_criterion(trace: ProxyTrace, criterion: str) -> None:
    """A ValueError when the trace lacks the statistics ``criterion`` reads, naming those it can use."""
    present = set(trace.source["statistics"]) if trace.source else set(STAT_KEYS)
    usable = [c for c, cols in CRITERION_COLUMNS.items() if set(cols) <= present]
    missing = [c for c in CRITERION_COLUMNS.get(criterion, ()) if c not in present]
    if missing:
        raise ValueError(f"criterion {criterion!r} reads {', '.join(missing)}, which {trace.source['path']} "
                         f"({trace.source['format']} format) does not record; usable here: {', '.join(usable)}")


def align_with_model(trace: ProxyTrace, model: Mapping[str, tuple[tuple[int, ...], str]], task: str) -> None:
    """Make the trace cover exactly a task model's trainable parameters (``{name: (shape, role)}``).

    A parameter the trace never recorded is added with no rows (so its rule is null) when it has no
    axis options anyway (norms, biases, vectors: our own traces write no rows for them); any other
    difference is a ValueError naming the parameters.
    """
    traced = {p.name: p.shape for p in trace.params}
    missing = [n for n in model if n not in traced]
    unrecordable = [n for n in missing if not axis_options(*model[n])]
    missing = [n for n in missing if n not in unrecordable]
    extra = [n for n in traced if n not in model]
    differ = [n for n in traced if n in model and tuple(traced[n]) != tuple(model[n][0])]
    if missing or extra or differ:
        parts = [f"{label}: {', '.join(names[:5])}" + (f" ... ({len(names)} in all)" if len(names) > 5 else "")
                 for label, names in (("not in the trace", missing), ("not in the model", extra),
                                      ("another shape", differ)) if names]
        raise ValueError(f"trace {trace.source['path']} does not match task {task!r}'s model: {'; '.join(parts)}")
    trace.params.extend(ParamInfo(n, tuple(model[n][0]), model[n][1]) for n in unrecordable)
    order = {n: i for i, n in enumerate(model)}
    trace.params.sort(key=lambda p: order[p.name])
