"""The run record: one JSON file per run, typed, validated by type as well as by key.

``RunRecord`` and its sections mirror DESIGN.md's run-record schema (``SCHEMA``): each field
is declared with its JSON type, and ``RunRecord.from_json`` checks every value against it, so
a file with ``"seed": "zero"`` or ``"metrics": "oops"`` is reported by name as corrupt rather
than reused and later misread. ``to_json`` gives back the same shape, extra keys included.

Extra keys are kept, never lost: a key a section does not declare (``budget.schedule``,
``timing.train_s``, ``metrics.target``, a task's extra metrics, ``timing.concurrent_runs``,
``optimizer_impl``, ``state_bytes_source`` ...) travels in that section's ``extra`` and is
written back as it was. Only the extras listed in ``KNOWN_EXTRAS`` are type-checked, because
this code reads them; any other key is the business of whoever wrote it.

A record whose ``schema`` is newer than ``SCHEMA`` is not corrupt: it was written by a newer
optbench, and ``from_json`` raises ``NewerSchemaError`` so that callers can say so.

Records are written by ``optbench.store.RunStore`` only; ``write_record`` and ``read_record``
are the file-level pieces it uses.
"""

from __future__ import annotations

import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union

from optbench.atomic import write_text_atomic

SCHEMA = 1
STATUSES = ("ok", "diverged", "error")
MEMORY_CATEGORIES = ("params", "grads", "optimizer", "activations", "temporaries")
NON_FINITE = ("nan", "inf", "-inf")  # how a non-finite float is stored (JSON has none)


class UnreadableRecordError(ValueError):
    """A run file that cannot be used as a run record of this optbench; the message names the file."""


class CorruptRecordError(UnreadableRecordError):
    """A file that is not a valid run record: unreadable JSON, a missing key or a value of the wrong type."""


class NewerSchemaError(UnreadableRecordError):
    """A valid-looking record from a newer optbench (its ``schema`` is above ``SCHEMA``): not corrupt."""


# ---------------------------------------------------------------------------------------------
# JSON values


def canonical(obj: Any) -> Any:
    """JSON-stable form of a value: tuples as lists, string keys, non-finite floats as strings."""
    if isinstance(obj, Mapping):
        return {str(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _type_name(hint: Any) -> str:
    if hint is Any:
        return "any"
    if hint is float:
        return "number"
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(hint))}]"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the declared type (the check behind ``from_json``)."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:  # an int or float (never a bool), or one of NON_FINITE
        return (isinstance(value, (int, float)) and not isinstance(value, bool)) or value in NON_FINITE
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(v, args[1]) for v in value.values())
    raise TypeError(f"records: no JSON check for type {hint!r}")


def _check(value: Any, hint: Any, where: str) -> None:
    if not _matches(value, hint):
        raise CorruptRecordError(f"{where} is {json.dumps(value)[:60]}, expected {_type_name(hint)}")


# ---------------------------------------------------------------------------------------------
# Sections


class _Section:
    """A record section: declared fields (typed) plus ``extra``, every other key as found."""

    extra: dict[str, Any]

    @classmethod
    def from_json(cls, data: Any, where: str):
        if not isinstance(data, dict):
            raise CorruptRecordError(f"{where} is {json.dumps(data)[:60]}, expected an object")
        hints = typing.get_type_hints(cls)
        declared = [f.name for f in fields(cls) if f.name != "extra"]
        missing = [name for name in declared if name not in data]
        if missing:
            raise CorruptRecordError(f"{where} is missing key(s) {missing}")
        values = {}
        for name in declared:
            hint = hints[name]
            if isinstance(hint, type) and issubclass(hint, _Section):
                values[name] = hint.from_json(data[name], f"{where}.{name}")
            else:
                _check(data[name], hint, f"{where}.{name}")
                values[name] = data[name]
        extra = {k: v for k, v in data.items() if k not in declared}
        for name, hint in KNOWN_EXTRAS.get(cls.__name__, {}).items():
            if name in extra:
                _check(extra[name], hint, f"{where}.{name}")
        obj = cls(**values, extra=extra)
        obj._validate(where)
        return obj

    def _validate(self, where: str) -> None:
        """Checks beyond types (allowed values); a section overrides it when it has any."""

    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_json() if isinstance(value, _Section) else canonical(value)
        return out | canonical(self.extra)


@dataclass
class Env(_Section):
    optbench: str
    torch: str
    python: str
    device: str
    device_name: str
    cpu: str
    threads: int
    git_commit: str | None
    extra: dict[str, Any] = field(default_factory=dict)  # cpu_count, ...


@dataclass
class BudgetInfo(_Section):
    steps: int
    batch_size: int
    tokens_per_step: int | None
    extra: dict[str, Any] = field(default_factory=dict)  # schedule

    def _validate(self, where: str) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise CorruptRecordError(f"{where}: steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")


@dataclass
class Metrics(_Section):
    metric_name: str
    final_metric: float | None
    higher_is_better: bool
    final_train_loss: float | None
    eval_loss: float | None
    steps_to_target: int | None
    extra: dict[str, Any] = field(default_factory=dict)  # target, a task's extra metrics


@dataclass
class Memory(_Section):
    optimizer_state_bytes: int | None
    peak_bytes: int | None
    peak_by_category: dict[str, int | None] | None
    method: str
    cuda_max_allocated: int | None
    cuda_max_reserved: int | None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def not_measured(cls, method: str = "not measured") -> Memory:
        return cls(None, None, None, method, None, None)


@dataclass
class Timing(_Section):
    step_s_median: float | None
    optimizer_step_s_median: float | None
    samples_per_s: float | None
    tokens_per_s: float | None
    wall_s: float | None
    extra: dict[str, Any] = field(default_factory=dict)  # train_s, concurrent_runs


@dataclass
class Curve(_Section):
    train: list[list[float]]
    eval: list[list[float]]
    extra: dict[str, Any] = field(default_factory=dict)

    def _validate(self, where: str) -> None:
        for name in ("train", "eval"):
            bad = [point for point in getattr(self, name) if len(point) != 2]
            if bad:
                raise CorruptRecordError(f"{where}.{name} has points {bad[:2]} that are not [step, value] pairs")


@dataclass
class RunRecord(_Section):
    """One run, as DESIGN.md's schema declares it; ``to_json``/``from_json`` keep every extra key."""

    schema: int
    task: str
    optimizer: str
    hparams: dict[str, Any]
    seed: int
    preset: str
    status: str
    error: str | None
    diverged_at_step: int | None
    env: Env
    budget: BudgetInfo
    metrics: Metrics
    memory: Memory
    timing: Timing
    curve: Curve
    extra: dict[str, Any] = field(default_factory=dict)  # run_key, lr_source, notes, input_files, ...

    @classmethod
    def from_json(cls, data: Any, where: str = "record") -> RunRecord:
        """The typed record; ``CorruptRecordError`` or ``NewerSchemaError`` naming ``where`` otherwise."""
        if isinstance(data, dict):
            schema = data.get("schema")
            if isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA:
                raise NewerSchemaError(f"{where}: written by a newer optbench (record schema {schema}; this "
                                       f"optbench reads schema {SCHEMA}); upgrade optbench to read it")
        try:
            return super().from_json(data, where)
        except CorruptRecordError as exc:
            message = str(exc)
            prefix = "" if message.startswith(where) else f"{where}: "
            raise CorruptRecordError(f"{prefix}not a valid run record: {message}") from None

    def _validate(self, where: str) -> None:
        if self.schema != SCHEMA:
            raise CorruptRecordError(f"{where}.schema is {self.schema}, expected {SCHEMA}")
        if self.status not in STATUSES:
            raise CorruptRecordError(f"{where}.status is {self.status!r}, expected one of {', '.join(STATUSES)}")
        if self.status == "error" and not self.error:
            raise CorruptRecordError(f"{where}: status 'error' without an error message")
        for name in ("task", "optimizer", "preset"):
            if not getattr(self, name):
                raise CorruptRecordError(f"{where}.{name} is empty")

    @property
    def run_key(self) -> str | None:
        return self.extra.get("run_key")

    @property
    def label(self) -> str:
        return f"{self.task} / {self.optimizer} / seed {self.seed}"


# Extra keys this code reads, type-checked when present (any other extra key is kept unchecked).
KNOWN_EXTRAS: dict[str, dict[str, Any]] = {
    "RunRecord": {"run_key": str, "lr_source": str, "notes": list[str], "task_options": dict[str, Any],
                  "optimizer_class": str, "optimizer_impl": str | None, "traceback": str,
                  "input_files": dict[str, str]},
    "Metrics": {"target": float | None},
    "Timing": {"train_s": float | None, "concurrent_runs": int},
    "BudgetInfo": {"schedule": dict[str, Any]},
}

# The contract's keys, by section (DESIGN.md), as the dataclasses declare them.
TOP_KEYS = tuple(f.name for f in fields(RunRecord) if f.name != "extra")
SECTION_KEYS = {
    name: tuple(f.name for f in fields(section) if f.name != "extra")
    for name, section in (("env", Env), ("budget", BudgetInfo), ("metrics", Metrics), ("memory", Memory),
                          ("timing", Timing), ("curve", Curve))
}


def validate(record: Mapping[str, Any], source: str = "record") -> RunRecord:
    """The typed form of a JSON record; ``CorruptRecordError``/``NewerSchemaError`` naming ``source`` otherwise."""
    return RunRecord.from_json(dict(record) if isinstance(record, Mapping) else record, source)


# ---------------------------------------------------------------------------------------------
# The run key


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits), or ``"missing"`` when there is no such file."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except FileNotFoundError:
        return "missing"


@dataclass(frozen=True)
class RunKey:
    """What defines a run: two runs with the same key are the same experiment.

    ``inputs`` maps each file a run reads (declared by its specs' ``input_files``) to the digest
    of its contents: regenerating such a file makes a new key, so a stale run is never reused.
    Only the digests enter the key (not where the files lie), and a run with no file inputs has
    the key it had before inputs were part of it.
    """

    task: str
    optimizer: str
    hparams: Mapping[str, Any]
    seed: int
    preset: str
    device: str = "cpu"
    task_options: Mapping[str, Any] | None = None
    inputs: Mapping[str, str] | None = None

    def digest(self) -> str:
        parts = [self.task, self.optimizer, canonical(self.hparams), self.seed, self.preset, self.device,
                 canonical(self.task_options or {})]
        if self.inputs:
            parts.append(sorted(self.inputs.values()))
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]

    def filename(self) -> str:
        return f"{self.optimizer}__s{self.seed}__{self.digest()}.json"

    def path(self, runs_dir: str | Path) -> Path:
        return Path(runs_dir) / self.preset / self.task / self.filename()


# ---------------------------------------------------------------------------------------------
# Files


def write_record(record: Mapping[str, Any] | RunRecord, path: str | Path) -> Path:
    """Validate, then write atomically: a crash or Ctrl-C leaves the old file or the new one, never half."""
    typed = record if isinstance(record, RunRecord) else validate(record, str(path))
    text = json.dumps(typed.to_json(), indent=1, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def read_record(path: str | Path) -> dict:
    """The record in a file, as validated JSON; ``CorruptRecordError``/``NewerSchemaError`` naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRecordError(f"{path}: unreadable run record ({exc})") from None
    return validate(data, str(path)).to_json()
