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
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from optbench import registry
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
    threads: int | None = None  # torch threads per run; None: torch's default on the machine that runs it


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
    """One cell after another in the driver's own process: timing-clean, the default."""

    name = "local"

    def execute(self, cells: Sequence[tuple[int, Cell]], settings: RunSettings) -> Iterator[tuple[int, dict]]:
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

    Each run asks for ``settings.threads`` CPUs and sets torch to that many threads (default: the
    driver's torch thread count, so a record equals the local executor's on the same hardware),
    and one GPU when the device is ``cuda``. A worker that dies (killed, out of memory, its node
    lost) is retried by Ray up to ``max_retries`` times; after that the cell becomes an ``error``
    record naming the reason, and the grid goes on. Workers load the driver's ``--plugin`` files
    (their source travels with the task) and resolve learning rates from their own installed
    optbench, so every node must run the same optbench; a run whose key differs from the
    driver's (another version, another tuned-lr table) is refused as an error record.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, max_retries: int = DEFAULT_MAX_RETRIES,
                 init_options: Mapping[str, Any] | None = None) -> None:
        if max_retries < 0:
            raise UsageError(f"max_retries must be >= 0, got {max_retries}")
        self.address = address
        self.max_retries = max_retries
        self.init_options = dict(init_options or {})  # extra ray.init arguments for a local instance
        self._started_ray = False
        self._occupancy = None
        self._grids = 0

    def _connect(self):
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'optbench[ray]'") from None
        if not ray.is_initialized():
            if self.address is None:
                ray.init(address="local", include_dashboard=False, **self.init_options)
            else:
                ray.init(address=self.address)
            self._started_ray = True
        if self._occupancy is None:
            self._occupancy = ray.remote(num_cpus=0)(NodeOccupancy).remote()
        return ray

    def execute(self, cells: Sequence[tuple[int, Cell]], settings: RunSettings) -> Iterator[tuple[int, dict]]:
        if not cells:
            return
        ray = self._connect()
        settings = dataclasses.replace(settings, threads=settings.threads or torch.get_num_threads())
        gpus = 1 if torch.device(settings.device).type == "cuda" else 0
        _check_fits(ray, settings.threads, gpus)
        grid, self._grids = self._grids, self._grids + 1
        plugins = [(str(path), path.read_text()) for path in registry.plugin_files()]
        remote = ray.remote(_run_on_worker).options(num_cpus=settings.threads, num_gpus=gpus,
                                                     max_retries=self.max_retries, retry_exceptions=False)
        device_type = torch.device(settings.device).type
        pending: dict[Any, tuple[int, Cell, str]] = {}
        for index, cell in cells:
            token = f"{grid}:{index}"
            ref = remote.remote(cell, settings, plugins, token, self._occupancy)
            pending[ref] = (index, cell, token)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    index, cell, token = pending.pop(ref)
                    record = self._collect(ray, ref, cell, settings, token)
                    expected = cell_key(cell, settings.preset, device_type).digest()
                    if record.get("run_key") not in (None, expected):
                        record = error_record(cell, settings, (
                            f"the worker resolved another run (key {record['run_key']}, the driver's {expected}): "
                            "its optbench or tasks/tuned_lrs.json differs from the driver's"))
                    yield index, record
        finally:
            # Ctrl-C or an abandoned grid: stop what has not finished; yielded records are the caller's.
            for ref, (_, _, token) in pending.items():
                ray.cancel(ref, force=True)
                self._occupancy.leave.remote(token)

    def _collect(self, ray, ref, cell: Cell, settings: RunSettings, token: str) -> dict:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised in our code on the worker: not retried
            reason = f"failed on its Ray worker: {_first_line(exc.cause if exc.cause else exc)}"
        except ray.exceptions.RayError as exc:  # the worker or its node died, every attempt
            reason = (f"its Ray worker died on each of {self.max_retries + 1} attempts "
                      f"({self.max_retries} retries): {type(exc).__name__}: {_first_line(exc)}")
        self._occupancy.leave.remote(token)
        return error_record(cell, settings, reason)

    def close(self) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
        self._occupancy = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_fits(ray, threads: int, gpus: int) -> None:
    """Refuse, before anything runs, a run that no node of the cluster could ever hold."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    if threads > cpus:
        raise UsageError(f"--threads {threads}: each run asks for {threads} CPUs, but the largest node of the Ray "
                         f"cluster has {cpus:g}; give --threads between 1 and {cpus:g}")
    if gpus and not any(r.get("GPU", 0) >= gpus for r in nodes):
        raise UsageError("device cuda: no node of the Ray cluster has a GPU; use --device cpu or add GPU nodes")


class NodeOccupancy:
    """How many runs train on each node at once (a Ray actor, one per executor).

    A run enters when it starts and leaves when it ends; each run keeps the largest count of
    runs on its node seen while it was in. A worker that died never leaves: the next run to
    enter on that node finds its process gone and takes it out, and a retried run enters again
    under the same token, so a dead attempt is not counted.
    """

    def __init__(self) -> None:
        self.node_of: dict[str, str] = {}
        self.pid_of: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    def on_node(self, node: str) -> list[tuple[str, int]]:
        """(token, process id) of every run in on ``node``."""
        return [(t, self.pid_of[t]) for t, n in self.node_of.items() if n == node]

    def enter(self, token: str, node: str, pid: int, dead: Sequence[str] = ()) -> None:
        """Count a run in; ``dead``: runs of this node whose process the entering one found gone."""
        for t in dead:
            self.node_of.pop(t, None)
        self.node_of[token], self.pid_of[token] = node, pid
        together = [t for t, n in self.node_of.items() if n == node]
        for t in together:
            self.peak[t] = max(self.peak.get(t, 0), len(together))

    def leave(self, token: str) -> int:
        self.node_of.pop(token, None)
        self.pid_of.pop(token, None)
        return self.peak.pop(token, 1)


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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_on_worker(cell: Cell, settings: RunSettings, plugins: Sequence[tuple[str, str]], token: str,
                   occupancy) -> dict:
    """The Ray task: one cell's run on a worker, with the count of runs that shared its node."""
    import ray

    _load_plugins(plugins)
    forget_cached_table()  # a worker lives across grids; a sweep may have rewritten the table since
    node = ray.get_runtime_context().get_node_id()
    dead = [t for t, pid in ray.get(occupancy.on_node.remote(node)) if not _process_alive(pid)]
    ray.get(occupancy.enter.remote(token, node, os.getpid(), dead))
    try:
        record = run_cell(cell, settings)
    finally:
        together = ray.get(occupancy.leave.remote(token))
    record["timing"]["concurrent_runs"] = together
    return record


def make_executor(name: str, address: str | None = None) -> Executor:
    """The executor a verb's ``--executor`` and ``--address`` name."""
    if name == "local":
        if address is not None:
            raise UsageError(f"--address {address!r} needs --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address)
    raise UsageError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
