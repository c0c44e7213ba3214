"""The run store: the one owner of run record files under a runs folder.

Layout: ``<root>/<preset>/<task>/<optimizer>__s<seed>__<run key>.json``, one file per run
(``RunKey``). Everything that reads or writes run files goes through a ``RunStore``: the grid
(``optbench.runner.run_grid``, and so ``run``, ``sweep`` and ``check``) and the report. Nothing
else deletes or renames a record.

What the store decides:

- **Reuse.** A stored record under a cell's key is reused unless the policy (``ReusePolicy``)
  says otherwise: error records are rerun on request (``--rerun-failed``; the gate always), a
  record measured on other hardware is rerun or refused when the policy asks for this hardware
  (the gate), and ``fresh`` keys (the gate's candidate) are always run again.
- **Replacing.** A stored record is only ever replaced when the new run has finished: the new
  file is renamed over the old one atomically. A record from other hardware is kept beside the
  new one as ``*.json.otherenv`` at that moment; a stored run whose input files have since
  changed (another run key, same configuration) is set aside as ``*.json.stale``.
- **Corrupt files** (unreadable JSON, wrong keys or types) are named, set aside as
  ``*.json.corrupt`` and rerun. Set-aside files are numbered (``x.json.corrupt``,
  ``x.json.2.corrupt`` ...), so a second corruption never overwrites the first.
- **Records from a newer optbench** (a higher schema) are neither corrupt nor overwritten: a
  grid that needs one stops before running anything (``UsageError``), the report lists them.
- **Temporary files** left by a killed writer are removed when a grid starts.
- **Reading for the report** (``scan``): only files in the layout count, and only when their
  content agrees with their place (preset, task, optimizer, seed, key); a copy elsewhere
  (``archive/``, ``x (copy).json``) is listed as ignored, so no run is counted twice.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optbench.atomic import stale_temporaries, writable_dir
from optbench.errors import UsageError
from optbench.records import (
    CorruptRecordError,
    NewerSchemaError,
    RunKey,
    read_record,
    write_record,
)

ASIDE_KINDS = ("corrupt", "otherenv", "stale")
ENV_POLICIES = ("rerun", "refuse")
LAYOUT = "<preset>/<task>/<optimizer>__s<seed>__<key>.json"
RECORD_NAME = re.compile(r"^(?P<optimizer>.+)__s(?P<seed>-?\d+)__(?P<key>[0-9a-f]{10})\.json$")


@dataclass(frozen=True)
class ReusePolicy:
    """Which stored records a grid may reuse instead of running the cell again (module docstring)."""

    errors: bool = True  # reuse stored error records (False: rerun them)
    hardware: Mapping[str, Any] | None = None  # when given, reuse only records measured on this hardware
    other_hardware: str = "rerun"  # what to do with one that was not: "rerun" here, or "refuse" (UsageError)

    def __post_init__(self) -> None:
        if self.other_hardware not in ENV_POLICIES:
            raise UsageError(f"unknown environment-mismatch policy {self.other_hardware!r}; "
                             f"known: {', '.join(ENV_POLICIES)}")


@dataclass
class Decision:
    """What the grid does with one key: reuse the stored record, or run and write a new one."""

    key: RunKey
    path: Path
    action: str  # "reuse" or "run"
    reason: str  # one line, for logs
    record: dict | None = None  # the stored record, when reused
    aside_on_write: str | None = None  # kind under which the old file is kept when the new one lands
    set_aside: Path | None = None  # where a corrupt file at ``path`` was moved


@dataclass
class Scan:
    """Every run file under a store, sorted by what it is."""

    records: list[tuple[Path, dict]] = field(default_factory=list)
    corrupt: list[tuple[Path, str]] = field(default_factory=list)
    newer: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)


def budget_difference(record: Mapping[str, Any], task: str, preset: str) -> str | None:
    """How the budget a stored record trained differs from the task's budget now; None when it does not.

    A run key names the task, optimizer, hyperparameters, seed, preset, device and input files,
    not the budget: a task whose steps, batch, clipping or schedule changed would otherwise have
    its old runs reused as if they were new. A task that is not registered here is not checked."""
    from optbench import registry

    try:
        budget = registry.get_task(task).budget(preset)
    except ValueError:
        return None
    stored = record.get("budget") or {}
    now = {"steps": budget.steps, "batch_size": budget.batch_size, "grad_clip": budget.grad_clip,
           "schedule": budget.schedule.describe(budget.steps)}
    diff = [f"{name} {stored.get(name)!r}, now {value!r}" for name, value in now.items() if stored.get(name) != value]
    return "; ".join(diff) or None


def hardware_difference(stored: Mapping[str, Any], here: Mapping[str, Any]) -> str | None:
    """Which hardware fields (``env.HARDWARE_FIELDS``) differ between two environments; None when none do."""
    from optbench.env import HARDWARE_FIELDS, hardware_key

    a, b = hardware_key(dict(stored)), hardware_key(dict(here))
    if a == b:
        return None
    return "; ".join(f"{k} {x!r} here {y!r}" for k, x, y in zip(HARDWARE_FIELDS, a, b) if x != y)


class RunStore:
    """Run records under ``root`` (module docstring)."""

    def __init__(self, root: str | Path, log: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.log = log

    # -- paths ---------------------------------------------------------------------------------

    def path_of(self, key: RunKey) -> Path:
        return key.path(self.root)

    def check_writable(self, flag: str = "--runs-dir") -> None:
        """A UsageError naming the folder when runs cannot be written there (checked before any run)."""
        writable_dir(self.root, flag)

    def clean_temporaries(self) -> list[Path]:
        """Remove temporary files whose writer is gone (a killed run); returns what was removed."""
        removed = []
        if self.root.is_dir():
            for path in stale_temporaries(self.root):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # -- reading -------------------------------------------------------------------------------

    def read(self, path: Path) -> dict:
        """The validated record in ``path``; CorruptRecordError / NewerSchemaError naming the file."""
        return read_record(path)

    def plan(self, keys: Sequence[RunKey], policy: ReusePolicy = ReusePolicy(),
             fresh: Iterable[str] = ()) -> list[Decision]:
        """One decision per key (same order). Raises UsageError, before anything runs, for records from a
        newer optbench and for records from other hardware under ``other_hardware="refuse"``.

        ``fresh``: digests of keys whose stored records must not be reused (they are replaced when
        the new run finishes). Corrupt files are set aside here.
        """
        fresh = set(fresh)
        decisions, newer, refused = [], [], []
        for key in keys:
            path = self.path_of(key)
            decision = self._decide(key, path, policy, key.digest() in fresh)
            if decision.action == "newer":
                newer.append(decision.reason)
            elif decision.action == "refuse":
                refused.append(decision.reason)
            decisions.append(decision)
        if newer:
            raise UsageError(f"{len(newer)} stored run(s) are from a newer optbench and are left as they are: "
                             f"{'; '.join(newer[:3])}; upgrade optbench or give another --runs-dir")
        if refused:
            raise UsageError(f"{len(refused)} stored run(s) were measured on another environment and "
                             f"--on-env-mismatch is 'refuse': {'; '.join(refused[:3])}; "
                             "use --on-env-mismatch rerun or another --runs-dir")
        return decisions

    def _decide(self, key: RunKey, path: Path, policy: ReusePolicy, fresh: bool) -> Decision:
        if not path.exists():
            return Decision(key, path, "run", "not stored yet")
        try:
            record = self.read(path)
        except NewerSchemaError as exc:
            return Decision(key, path, "newer", str(exc))
        except CorruptRecordError as exc:
            aside = self.set_aside(path, "corrupt")
            self.log(f"corrupt run file set aside as {aside} and rerun: {exc}")
            return Decision(key, path, "run", f"corrupt file set aside as {aside}", set_aside=aside)
        if fresh:
            return Decision(key, path, "run", "stored run is replaced when the new run finishes")
        changed = budget_difference(record, key.task, key.preset)
        if changed is not None:
            return Decision(key, path, "run", f"stored run trained another budget ({changed}): rerun, the old "
                            "record kept as *.json.stale when the new run finishes", aside_on_write="stale")
        if record["status"] == "error" and not policy.errors:
            return Decision(key, path, "run", "stored run errored; run again")
        if policy.hardware is not None:
            diff = hardware_difference(record["env"], policy.hardware)
            if diff is not None:
                if policy.other_hardware == "refuse":
                    return Decision(key, path, "refuse", f"{path} ({diff})")
                return Decision(key, path, "run", f"stored run measured on another environment ({diff}): rerun "
                                "here, the old record kept as *.json.otherenv when the new run finishes",
                                aside_on_write="otherenv")
        return Decision(key, path, "reuse", f"reused {path}", record=record)

    def scan(self, preset: str | None = None) -> Scan:
        """Every run file under the root (of ``preset`` only, when given), sorted by what it is."""
        scan, seen = Scan(), {}
        if not self.root.is_dir():
            return scan
        for path in sorted(self.root.rglob("*.json")):
            rel = path.relative_to(self.root).parts
            if any(part.startswith(".") for part in rel):
                continue
            if len(rel) != 3 or not RECORD_NAME.match(rel[2]):
                if preset is None or (rel[0] == preset and len(rel) > 1):
                    scan.ignored.append((path, f"not in the store layout {LAYOUT}"))
                continue
            if preset is not None and rel[0] != preset:
                continue
            try:
                record = self.read(path)
            except NewerSchemaError as exc:
                scan.newer.append((path, str(exc)))
                continue
            except CorruptRecordError as exc:
                scan.corrupt.append((path, str(exc)))
                continue
            misplaced = _misplaced(record, rel)
            if misplaced:
                scan.ignored.append((path, misplaced))
            elif record.get("run_key") in seen:
                scan.ignored.append((path, f"the same run as {seen[record['run_key']]}"))
            else:
                if record.get("run_key"):
                    seen[record["run_key"]] = path
                scan.records.append((path, record))
        return scan

    # -- writing -------------------------------------------------------------------------------

    def path_of_record(self, record: Mapping[str, Any]) -> Path | None:
        """Where a record belongs, from its own content (None when it carries no run key)."""
        if not record.get("run_key"):
            return None
        return (self.root / record["preset"] / record["task"]
                / f"{record['optimizer']}__s{record['seed']}__{record['run_key']}.json")

    def write(self, record: Mapping[str, Any], path: Path | None = None, aside: str | None = None) -> Path:
        """Write a finished run's record where it belongs (``path`` when it carries no run key),
        atomically replacing any file there; returns where it went.

        ``aside``: keep the file being replaced as ``*.json.<aside>`` (numbered) instead. Stored
        runs of the same configuration whose input files were different are set aside as stale.
        """
        path = self.path_of_record(record) or path
        if path is None:
            raise ValueError("a record without a run key needs a path")
        if aside is not None and path.exists():
            self.set_aside(path, aside)
        written = write_record(record, path)
        if record.get("input_files"):
            for sibling in self._stale_siblings(record, path):
                self.log(f"stored run {sibling.name} read other input files: set aside as "
                         f"{self.set_aside(sibling, 'stale')}")
        return written

    def set_aside(self, path: Path, kind: str) -> Path:
        """Rename ``path`` to ``<path>.<kind>``, or ``<path>.<n>.<kind>`` when that exists: nothing is overwritten."""
        if kind not in ASIDE_KINDS:
            raise ValueError(f"unknown set-aside kind {kind!r}; known: {', '.join(ASIDE_KINDS)}")
        n = 1
        while True:
            target = path.with_name(f"{path.name}.{kind}" if n == 1 else f"{path.name}.{n}.{kind}")
            try:
                os.link(path, target)  # fails if target exists: no race overwrites an earlier one
            except FileExistsError:
                n += 1
                continue
            path.unlink()
            return target

    def _stale_siblings(self, record: Mapping[str, Any], path: Path) -> list[Path]:
        """Stored runs of the same configuration as ``record`` under another key (their input files differed)."""
        same = ("hparams", "task_options")
        siblings = []
        for other in path.parent.glob(f"{record['optimizer']}__s{record['seed']}__*.json"):
            if other == path or not RECORD_NAME.match(other.name):
                continue
            try:
                stored = self.read(other)
            except (CorruptRecordError, NewerSchemaError):
                continue
            if (stored["optimizer"] == record["optimizer"] and stored["env"]["device"] == record["env"]["device"]
                    and all(json.dumps(stored.get(k) or {}, sort_keys=True) == json.dumps(record.get(k) or {},
                                                                                         sort_keys=True)
                            for k in same)
                    and stored.get("input_files") != record.get("input_files")):
                siblings.append(other)
        return siblings


def _misplaced(record: Mapping[str, Any], rel: tuple[str, ...]) -> str | None:
    """Why a record's content disagrees with where it lies, or None when it agrees."""
    match = RECORD_NAME.match(rel[2])
    expected = {"preset": rel[0], "task": rel[1], "optimizer": match["optimizer"], "seed": int(match["seed"])}
    wrong = [f"{k} {record[k]!r} (its place says {v!r})" for k, v in expected.items() if record[k] != v]
    if record.get("run_key") not in (None, match["key"]):
        wrong.append(f"run key {record['run_key']!r} (its name says {match['key']!r})")
    return f"misplaced: {', '.join(wrong)}" if wrong else None
