"""Run records: one JSON file per run, written atomically, keyed by what defines the run.

The keys follow DESIGN.md's run-record schema (``SCHEMA``); readers check them, so a file
from another version or a torn write is reported by name rather than misread.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = 1
STATUSES = ("ok", "diverged", "error")
TOP_KEYS = (
    "schema", "task", "optimizer", "hparams", "seed", "preset", "status", "error", "diverged_at_step",
    "env", "budget", "metrics", "memory", "timing", "curve",
)
SECTION_KEYS = {
    "env": ("optbench", "torch", "python", "device", "device_name", "cpu", "threads", "git_commit"),
    "budget": ("steps", "batch_size", "tokens_per_step"),
    "metrics": ("metric_name", "final_metric", "higher_is_better", "final_train_loss", "eval_loss", "steps_to_target"),
    "memory": ("optimizer_state_bytes", "peak_bytes", "peak_by_category", "method", "cuda_max_allocated",
               "cuda_max_reserved"),
    "timing": ("step_s_median", "optimizer_step_s_median", "samples_per_s", "tokens_per_s", "wall_s"),
    "curve": ("train", "eval"),
}
MEMORY_CATEGORIES = ("params", "grads", "optimizer", "activations", "temporaries")


class CorruptRecordError(ValueError):
    """A run file that cannot be read as a run record; the message names the file."""


def canonical(obj: Any) -> Any:
    """JSON-stable form of hyperparameters (tuples as lists, dict keys sorted later)."""
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


@dataclass(frozen=True)
class RunKey:
    """What defines a run: two runs with the same key are the same experiment."""

    task: str
    optimizer: str
    hparams: Mapping[str, Any]
    seed: int
    preset: str
    device: str = "cpu"
    task_options: Mapping[str, Any] | None = None

    def digest(self) -> str:
        payload = json.dumps(
            [self.task, self.optimizer, canonical(self.hparams), self.seed, self.preset, self.device,
             canonical(self.task_options or {})],
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    def path(self, runs_dir: str | Path) -> Path:
        return Path(runs_dir) / self.preset / self.task / f"{self.optimizer}__s{self.seed}__{self.digest()}.json"


def validate(record: Mapping[str, Any], source: str = "record") -> None:
    missing = [k for k in TOP_KEYS if k not in record]
    for section, keys in SECTION_KEYS.items():
        if isinstance(record.get(section), Mapping):
            missing += [f"{section}.{k}" for k in keys if k not in record[section]]
    if missing:
        raise CorruptRecordError(f"{source}: not a run record, missing keys {missing}")
    if record["schema"] != SCHEMA:
        raise CorruptRecordError(f"{source}: schema {record['schema']!r}, this optbench reads schema {SCHEMA}")
    if record["status"] not in STATUSES:
        raise CorruptRecordError(f"{source}: status {record['status']!r} not in {STATUSES}")


def write_record(record: Mapping[str, Any], path: str | Path) -> Path:
    """Write atomically: a crash or Ctrl-C leaves either the old file or the new one, never half."""
    validate(record, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(canonical(record), fh, indent=1, sort_keys=False, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_record(path: str | Path) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRecordError(f"{path}: unreadable run record ({exc})") from None
    if not isinstance(record, dict):
        raise CorruptRecordError(f"{path}: not a JSON object")
    validate(record, str(path))
    return record


def iter_records(runs_dir: str | Path) -> Iterator[tuple[Path, dict | CorruptRecordError]]:
    """Every run file under ``runs_dir`` with its record, or the error that names why it is unreadable."""
    for path in sorted(Path(runs_dir).rglob("*.json")):
        try:
            yield path, read_record(path)
        except CorruptRecordError as exc:
            yield path, exc
