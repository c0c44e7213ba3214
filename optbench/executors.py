"""Executors: where the runs of a grid execute. The driver plans and writes; an executor only runs.

``run_grid`` (optbench.runner) asks the run store which cells need a run, hands those cells to
an executor, and writes every record the executor yields, on the driver, as it arrives. An
executor never reads or writes the store, so reuse, resume and the store's policies are the
same whichever executor ran the cells, and workers of a cluster need no shared filesystem.

The contract (``Executor``)::

    for index, record in executor.execute([(index, cell), ...], settings):
        store.write(record)          # on the driver, the moment the run finished

- ``execute`` yields ``(index, record)`` once per cell given, in the order the runs *finish*
  (not the order given); ``index`` is the caller's own number for the cell, passed back as is.
- ``record`` is what ``runner.run_one`` returns for the cell under ``settings``, plus
  ``timing.concurrent_runs`` (below). A cell whose run could not even return a record (its
  worker died, the cluster refused it) still yields an ``error`` record naming the reason, so
  the grid goes on.
- Stopping the iteration early (Ctrl-C, an exception in the caller, ``close()`` on the
  generator) abandons the cells not yet yielded; every record already yielded is the caller's.
- ``close()`` releases what the executor holds (a Ray connection); an executor can run several
  grids before it (a sweep runs one grid per extension of its lr range).

Record key added here: ``timing.concurrent_runs`` (int) is the largest number of runs of this
grid that were training on the same node at one moment while this run was (itself included;
the local executor runs one at a time, so 1). Runs that share a node disturb each other's step
times: compare step times only between records of the same hardware and the same
``concurrent_runs`` (``env.timing_key``). A record without the key (written before executors)
ran alone.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from optbench import registry
from optbench.atomic import update_json
from optbench.errors import UsageError
from optbench.lrs import forget_cached_table
from optbench.runner import Cell, cell_key, run_one

EXECUTORS = ("local", "ray")
DEFAULT_MAX_RETRIES = 2


@dataclass(frozen=True)
class RunSettings:
    """What every run of one grid shares, besides its cell (the arguments of ``run_one``)."""

    preset: str
    device: str
    measure_memory_pass: bool = True
    threads: int | None = None  # torch threads per run (the executor's --threads); None: leave torch's setting


class Executor(Protocol):
    """Runs cells and yields ``(index, record)`` as each run finishes; never touches files (module doc)."""

    name: str

    def execute(self, cells: Sequence[tuple[int, Cell]], settings: RunSettings) -> Iterator[tuple[int, dict]]: ...

    def close(self) -> None: ...


def run_cell(cell: Cell, settings: RunSettings) -> dict:
    """One cell's run under ``settings``, in this process: the work every executor does per cell.

    Threads are set for the run and restored after it, so a driver running cells in-process keeps
    its own setting.
    """
    previous = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return run_one(cell.task, cell.optimizer, hparams=cell.hparams, seed=cell.seed, preset=settings.preset,
                       device=settings.device, task_options=cell.task_options,
                       measure_memory_pass=settings.measure_memory_pass)
    finally:
        torch.set_num_threads(previous)


def error_record(cell: Cell, settings: RunSettings, reason: str) -> dict:
    """The record of a cell whose run returned none (its worker died): every key, status ``error``."""
    return run_one(cell.task, cell.optimizer, hparams=cell.hparams, seed=cell.seed, preset=settings.preset,
                   device=settings.device, task_options=cell.task_options, not_run=reason)


class LocalExecutor:
    """One cell after another in the driver's own process: timing-clean, the default.

    ``threads``: torch threads for each run (None: this process's current setting).
    """

    name = "local"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = _check_threads(threads)

    def execute(self, cells: Sequence[tuple[int, Cell]], settings: RunSettings) -> Iterator[tuple[int, dict]]:
        if self.threads is not None:
            settings = dataclasses.replace(settings, threads=self.threads)
        for index, cell in cells:
            record = run_cell(cell, settings)
            record["timing"]["concurrent_runs"] = 1
            yield index, record

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Ray


class RayExecutor:
    """Each cell a Ray task; workers return records to the driver, which alone writes the store.

    ``address``: None starts a local Ray instance (stopped again by ``close``); ``"auto"`` joins
    the cluster this machine belongs to (``ray start`` ran here); anything else is passed to
    ``ray.init`` (``host:port``, ``ray://host:10001``). A Ray already initialised in this
    process is used as it is.

    Each run asks for ``threads`` CPUs and sets torch to that many threads (default: the driver's
    torch thread count, so a record equals the local executor's on the same hardware), and one
    GPU when the device is ``cuda``. A worker that dies (killed, out of memory, its node lost) is
    retried by Ray up to ``max_retries`` times; after that the cell becomes an ``error`` record
    naming the reason, and the grid goes on. Workers load the driver's ``--plugin`` files (their
    text travels with the task) and resolve learning rates from their own installed optbench, so
    every node must run the same optbench; a run whose key differs from the driver's (another
    version, another tuned-lr table) is refused as an error record. ``OPTBENCH_*`` environment
    variables of the driver (``OPTBENCH_TUNED_LRS``) are set on a cluster's workers too.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, threads: int | None = None,
                 max_retries: int = DEFAULT_MAX_RETRIES, init_options: Mapping[str, Any] | None = None) -> None:
        if max_retries < 0:
            raise UsageError(f"max_retries must be >= 0, got {max_retries}")
        self.address = address
        self.threads = _check_threads(threads)
        self.max_retries = max_retries
        self.init_options = dict(init_options or {})  # extra ray.init arguments for a local instance
        self.occupancy_id = uuid.uuid4().hex[:12]  # names this executor's occupancy file on each node
        self._started_ray = False
        self._grids = 0

    def _connect(self):
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'optbench[ray]'") from None
        if not ray.is_initialized():
            if self.address is None:
                ray.init(address="local", include_dashboard=False, **self.init_options)
            else:  # workers of a cluster do not inherit this shell: pass optbench's own settings on
                settings = {k: v for k, v in os.environ.items() if k.startswith("OPTBENCH_")}
                ray.init(address=self.address, runtime_env={"env_vars": settings} if settings else None)
            self._started_ray = True
        return ray

    def execute(self, cells: Sequence[tuple[int, Cell]], settings: RunSettings) -> Iterator[tuple[int, dict]]:
        if not cells:
            return
        ray = self._connect()
        settings = dataclasses.replace(settings, threads=self.threads or settings.threads or torch.get_num_threads())
        device_type = torch.device(settings.device).type
        gpus = 1 if device_type == "cuda" else 0
        if gpus:  # Ray shows each run only the GPU it was given: its first, whatever index the driver named
            settings = dataclasses.replace(settings, device="cuda")
        _check_fits(ray, settings.threads, gpus, local=self.address is None)
        grid, self._grids = self._grids, self._grids + 1
        plugins = [(str(path), path.read_text()) for path in registry.plugin_files()]
        remote = ray.remote(_run_on_worker).options(num_cpus=settings.threads, num_gpus=gpus,
                                                     max_retries=self.max_retries, retry_exceptions=False)
        pending: dict[Any, tuple[int, Cell]] = {}
        for index, cell in cells:
            token = f"{grid}:{index}"
            pending[remote.remote(cell, settings, plugins, self.occupancy_id, token)] = (index, cell)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    index, cell = pending.pop(ref)
                    yield index, self._collect(ray, ref, cell, settings, device_type)
        finally:
            # Ctrl-C or an abandoned grid: stop what has not finished; yielded records are the caller's.
            for ref in pending:
                ray.cancel(ref, force=True)

    def _collect(self, ray, ref, cell: Cell, settings: RunSettings, device_type: str) -> dict:
        try:
            record = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised in our code on the worker: not retried
            return error_record(cell, settings, f"failed on its Ray worker: {_first_line(exc.cause or exc)}")
        except ray.exceptions.RayError as exc:  # the worker or its node died, on every attempt
            return error_record(cell, settings, (
                f"its Ray worker died on each of {self.max_retries + 1} attempts ({self.max_retries} retries): "
                f"{type(exc).__name__}: {_first_line(exc)}"))
        expected = cell_key(cell, settings.preset, device_type).digest()
        if record.get("run_key") != expected:
            return error_record(cell, settings, (
                f"its Ray worker resolved another run (key {record.get('run_key')}, the driver's {expected}): "
                "that node's optbench or tasks/tuned_lrs.json differs from the driver's"))
        return record

    def close(self) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False


def _check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--threads {threads!r}: give a whole number of threads >= 1")
    return threads


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_fits(ray, threads: int, gpus: int, *, local: bool) -> None:
    """Refuse, before anything runs, runs that no node could hold: Ray would queue them for ever.

    On a cluster (``local`` False) an autoscaler may still add a node that fits, so it is a warning.
    """
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    problem = None
    if threads > cpus:
        problem = (f"--threads {threads}: each run asks for {threads} CPUs, but the largest Ray node has {cpus:g}; "
                   f"give --threads between 1 and {cpus:g}")
    elif gpus and not any(r.get("GPU", 0) >= gpus for r in nodes):
        problem = "device cuda: no Ray node has a GPU; use --device cpu or add GPU nodes"
    if problem and local:
        raise UsageError(problem)
    if problem:
        print(f"warning: {problem} (runs wait until such a node joins)", file=sys.stderr)


class NodeOccupancy:
    """Which runs of one executor train on this node now, in a small JSON file under a lock.

    A run enters when it starts and leaves when it ends; each run keeps the largest number of
    runs that were in at one moment while it was (itself included). Node-local on purpose: a
    Ray task that waits on another task or actor lends its CPUs out meanwhile, so counting
    through an actor would itself let a second run start beside the first. A worker that died
    never leaves: the next run to enter finds its process gone and takes it out.
    """

    def __init__(self, executor_id: str, folder: Path | None = None) -> None:
        folder = folder or Path(tempfile.gettempdir()) / "optbench-occupancy"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{executor_id}.json"

    def enter(self, token: str, pid: int) -> None:
        def add(table: dict) -> dict:
            table = {t: entry for t, entry in table.items() if _process_alive(entry["pid"])}
            table[token] = {"pid": pid, "peak": 0}
            for entry in table.values():
                entry["peak"] = max(entry["peak"], len(table))
            return table

        update_json(self.path, add, {}, "the runs on this node")

    def leave(self, token: str) -> int:
        """Take the run out; return the most runs that were in at once while it was."""
        left: dict = {}

        def remove(table: dict) -> dict:
            left.update(table.pop(token, {}))
            return table

        update_json(self.path, remove, {}, "the runs on this node")
        return left.get("peak", 1)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


_LOADED_PLUGIN_SOURCES: set[str] = set()


def _load_plugins(plugins: Sequence[tuple[str, str]]) -> None:
    """Load the driver's plugin files here: the same file when it is here with the same text, else its text."""
    for path, source in plugins:
        if source in _LOADED_PLUGIN_SOURCES:
            continue
        here = Path(path)
        if not (here.is_file() and here.read_text() == source):
            here = Path(tempfile.mkdtemp(prefix="optbench-plugin-")) / Path(path).name
            here.write_text(source)
        registry.load_plugin(here)
        _LOADED_PLUGIN_SOURCES.add(source)


def _run_on_worker(cell: Cell, settings: RunSettings, plugins: Sequence[tuple[str, str]], executor_id: str,
                   token: str) -> dict:
    """The Ray task: one cell's run on a worker, with the count of runs that shared its node."""
    _load_plugins(plugins)
    forget_cached_table()  # a worker lives across grids; a sweep may have rewritten the table since
    occupancy = NodeOccupancy(executor_id)
    occupancy.enter(token, os.getpid())
    try:
        record = run_cell(cell, settings)
    finally:
        together = occupancy.leave(token)
    record["timing"]["concurrent_runs"] = together
    return record


def make_executor(name: str, address: str | None = None, threads: int | None = None) -> Executor:
    """The executor a verb's ``--executor``, ``--address`` and ``--threads`` name."""
    if name == "local":
        if address is not None:
            raise UsageError(f"--address {address!r} needs --executor ray")
        return LocalExecutor(threads)
    if name == "ray":
        return RayExecutor(address, threads=threads)
    raise UsageError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
