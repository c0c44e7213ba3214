"""Atomic writes for every file a later run reads (run records, the tuned-lr table, SNR rules).

``write_text_atomic`` writes to a temporary file in the same folder, fsyncs it and renames it
over the target, so a reader sees the old file or the new one, never half of one, whatever
happens to the writer (Ctrl-C, SIGKILL, a full disk). ``update_json`` adds a lock around a
read-modify-write, so that two processes updating one table (two sweeps at once) do not lose
each other's updates.

Temporary files are named ``.<target>.<pid>.<random>.tmp``; ``stale_temporaries`` finds those
whose writer is gone (the process no longer exists, or the file is a day old), so the run store
can clean them up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
STALE_AFTER_S = 24 * 3600  # a temporary file this old is dead whatever its pid says


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (module docstring); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """An exclusive advisory lock tied to ``path`` (on ``<path>.lock``), held for the ``with`` block."""
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file's content; a ValueError that names the file and ``what`` it should be when it is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); expected {what}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file ({exc}); expected {what}") from None


def update_json(path: str | Path, update: Callable[[Any], Any], default: Any, what: str) -> Any:
    """Read-modify-write a JSON file under its lock, written atomically; returns what was written.

    ``update`` receives the current content (``default`` when the file does not exist yet) and
    returns the new content.
    """
    path = Path(path)
    with locked(path):
        current = read_json(path, what) if path.exists() else default
        new = update(current)
        write_text_atomic(path, json.dumps(new, indent=1, sort_keys=True) + "\n")
    return new


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(folder: str | Path, now: float | None = None) -> list[Path]:
    """Temporary files under ``folder`` left by a writer that is gone (module docstring)."""
    now = time.time() if now is None else now
    stale = []
    for path in Path(folder).rglob(f".*{TMP_SUFFIX}"):
        parts = path.name.rsplit(".", 3)  # [".<target>", "<pid>", "<random>", "tmp"]
        pid = int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue  # its writer just renamed it into place
        if age > STALE_AFTER_S or (pid is not None and not _pid_alive(pid)) or (pid is None and age > 600):
            stale.append(path)
    return stale


def writable_dir(path: str | Path, flag: str) -> Path:
    """``path`` as a folder this process can write into (created when missing); a UsageError naming it otherwise."""
    from optbench.errors import UsageError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a file, not a folder; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe.{os.getpid()}{TMP_SUFFIX}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"{flag} {str(path)!r} is not writable ({exc.strerror or exc}); "
                         "give a folder you can write to") from None
    return path


def writable_file(path: str | Path, flag: str) -> Path:
    """``path`` as a file this process can (re)write atomically; a UsageError naming it otherwise."""
    from optbench.errors import UsageError

    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a folder; give a file name")
    try:
        writable_dir(path.parent, f"{flag}'s folder")
    except UsageError:
        raise UsageError(f"{flag} {str(path)!r} is not writable: its folder {str(path.parent)!r} cannot be "
                         "written") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {str(path)!r} is not writable; give a file you can write")
    return path
