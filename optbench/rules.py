"""SlimAdam rules files: the one reader and writer, and the axis helpers both SNR and SlimAdam use.

A rules file is a JSON object ``{"<full parameter name>": [axes] | null, ...}``: the dims along
which SlimAdam averages a tensor's second moment, or ``null`` (and ``[]``) for a full one. Keys
starting with ``_`` are metadata (``_command``, ``_alpha``, ``_shapes``, ...), except torch.compile's
``_orig_mod.`` prefix, which is stripped: a name is looked up without it. The format is the
reference code's (dayal-kalra/low-memory-adam, ``rules/*.json``) plus our metadata keys.

Reading is strict, because a rule that is silently misread compresses the wrong dims: a file
that is not JSON, not an object, or has an entry that is not a list of integers or null is a
``ValueError`` naming the file and the entry. JSON ``true`` is not read as axis 1 (Python's
``bool`` is an ``int``). Files are written atomically (``optbench.atomic``), since slimadam-snr
reads them in every run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Axes = tuple[int, ...] | None
COMPILE_PREFIX = "_orig_mod."
ACCEPTED = "a list of integer dims (e.g. [1] or [0, 1]) or null"


def canonical_name(name: str) -> str:
    """A parameter name without torch.compile's ``_orig_mod.`` segments."""
    return name.replace(COMPILE_PREFIX, "")


def is_metadata(key: str) -> bool:
    return key.startswith("_") and not key.startswith(COMPILE_PREFIX)


def _document(source: str | Path | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The JSON object of a rules file (or the mapping given) and how to name it in errors."""
    if isinstance(source, Mapping):
        return source, "rules"
    if not isinstance(source, (str, Path)):
        raise ValueError(f"rules must be a path or a dict {{parameter: [axes] | null}}, got {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"rules file {str(path)!r} does not exist")
    from optbench.atomic import read_json

    doc = read_json(path, "a SlimAdam rules object {parameter: [axes] | null}")
    if not isinstance(doc, Mapping):
        raise ValueError(f"{path}: a rules file must be a JSON object {{parameter: [axes] | null}}, "
                         f"not a {type(doc).__name__}")
    return doc, str(path)


def parse_axes(value: Any, *, name: str, where: str) -> Axes:
    """One rule: ``None`` (full second moment) or a tuple of integer dims; ``[]`` reads as ``None``."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, int) and not isinstance(a, bool) for a in value):
        raise ValueError(f"{where}: rule for {name!r} is {json.dumps(value)}; accepted: {ACCEPTED}")
    return tuple(value) or None


def read_rules(source: str | Path | Mapping[str, Any]) -> dict[str, Axes]:
    """Rules by canonical parameter name from a rules file or a mapping; metadata keys left out."""
    doc, where = _document(source)
    return {canonical_name(name): parse_axes(axes, name=name, where=where)
            for name, axes in doc.items() if not is_metadata(name)}


def read_metadata(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The ``_`` metadata keys of a rules file."""
    doc, _ = _document(source)
    return {k: v for k, v in doc.items() if is_metadata(k)}


def dump_rules(doc: Mapping[str, Any]) -> str:
    """JSON with one key per line (axes lists stay on their key's line, so diffs read per tensor)."""
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(list(v) if isinstance(v, tuple) else v)}"
                      for k, v in doc.items())
    return "{\n" + body + "\n}\n"


def write_rules(path: str | Path, doc: Mapping[str, Any]) -> Path:
    """Write a rules document atomically (a reader sees the old file or the new one)."""
    from optbench.atomic import write_text_atomic

    return write_text_atomic(path, dump_rules(doc))


# ---------------------------------------------------------------------------------------------
# Axis helpers


def compressed_shape(shape: Sequence[int], axes: Axes) -> tuple[int, ...]:
    """The keepdim shape of the second moment: every dim in ``axes`` becomes 1."""
    return tuple(1 if axes is not None and d in axes else s for d, s in enumerate(shape))


def compressed_numel(shape: Sequence[int], axes: Sequence[int] | None) -> int:
    """Entries of the second moment kept when it is averaged along ``axes``."""
    return math.prod(compressed_shape(shape, tuple(axes) if axes else None))
