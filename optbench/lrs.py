"""Learning rates, resolved in this one place: explicit > the committed sweep table > the task's
entry for the optimizer > the task's AdamW lr x the spec's ``lr_vs_adamw`` > the spec's ``default_lr``.

``tasks/tuned_lrs.json`` is written by ``optbench sweep`` and read by every run, so the
leaderboard compares optimizers at their tuned learning rates and says where one was not tuned.
``OPTBENCH_TUNED_LRS=path`` makes a process read another table instead (``nox -s publish --
--smoke`` tunes into a scratch table and runs its board from it, leaving the committed one alone).
"""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

from optbench.spec import OptimizerSpec, TaskSpec

ADAMW = "adamw"  # the baseline whose lr every task declares and other optimizers relate to


def _tasks_dir() -> Path:
    """Where the ``optbench.tasks`` package lives (the top-level ``tasks/`` folder of the source tree)."""
    spec = importlib.util.find_spec("optbench.tasks")
    return Path(next(iter(spec.submodule_search_locations)))


TUNED_LRS_PATH = Path(os.environ.get("OPTBENCH_TUNED_LRS") or _tasks_dir() / "tuned_lrs.json")


TABLE_SHAPE = "a JSON object {preset: {task: {optimizer: lr > 0}}}"


@lru_cache(maxsize=4)
def _load(path: Path) -> dict:
    """The tuned-lr table; a ValueError naming the file (and the bad entry) when it is not one."""
    from optbench.atomic import read_json

    if not path.exists():
        return {}
    table = read_json(path, TABLE_SHAPE)

    def bad(where: str, value) -> ValueError:
        return ValueError(f"{path}: {where} is {json.dumps(value)[:40]}, expected {TABLE_SHAPE}")

    if not isinstance(table, dict):
        raise bad("the top level", table)
    for preset, tasks in table.items():
        if not isinstance(tasks, dict):
            raise bad(preset, tasks)
        for task, lrs in tasks.items():
            if not isinstance(lrs, dict):
                raise bad(f"{preset}/{task}", lrs)
            for name, lr in lrs.items():
                if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
                    raise bad(f"{preset}/{task}/{name}", lr)
    return table


def forget_cached_table() -> None:
    """Drop the cached tables, so a table just rewritten (by a sweep) is read afresh."""
    _load.cache_clear()


def resolve_lr(task: TaskSpec, optimizer: OptimizerSpec, preset: str, explicit: float | None = None,
               path: Path = TUNED_LRS_PATH) -> tuple[float, str]:
    """The learning rate for this cell and where it came from ('explicit', 'sweep', 'task', 'optimizer')."""
    if explicit is not None:
        return float(explicit), "explicit"
    # Each preset reads only its own sweep: an lr tuned for the cpu budget is no good guess for the
    # 30-step smoke budget (a small tuned lr barely moves there), so smoke runs use the task's lr.
    lr = _load(path).get(preset, {}).get(task.name, {}).get(optimizer.name)
    if lr is not None:
        return float(lr), "sweep"
    return starting_lr(task, optimizer)


def starting_lr(task: TaskSpec, optimizer: OptimizerSpec) -> tuple[float, str]:
    """The lr before any sweep, and its source: the task's entry for this optimizer ('task'); else
    the task's AdamW lr x the spec's ``lr_vs_adamw``, to two significant figures ('task'); else the
    spec's ``default_lr`` ('optimizer').

    The relation is what lets an optimizer no task has heard of (a plugin) start at a learning
    rate fitted to the task instead of a task-blind default. A sweep starts from here too.
    """
    if optimizer.name in task.default_lrs:
        return float(task.default_lrs[optimizer.name]), "task"
    adamw_lr = task.default_lrs.get(ADAMW)
    if adamw_lr is not None and optimizer.lr_vs_adamw is not None:
        return float(f"{adamw_lr * optimizer.lr_vs_adamw:.2g}"), "task"
    return float(optimizer.default_lr), "optimizer"
