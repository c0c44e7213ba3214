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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from optbench.runner import Cell, run_one

EXECUTORS = ("local", "ray")


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
