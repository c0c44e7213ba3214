"""``nox -s gpu_check`` (``python -m optbench.gpu_check``): every optimizer on every GPU-tier task, briefly.

A check of a lent GPU end to end, sized to run in one go inside its lease (results/gpu/README.md
says how to run it there and what it should cost). For each GPU-tier task and each optimizer
available there (the ``gpu_check`` budgets: a few dozen steps on the full-size models, stand-in
CIFAR data), it runs the cell through the runner and the run store, as ``optbench run`` would,
then counts the host-device syncs inside ``optimizer.step()`` in a short pass of its own. It
writes ``GPU_CHECK.md`` and ``gpu_check.csv`` to ``--out`` (default results/gpu on CUDA,
.gpu_runs/cpu_check on the CPU, which publishes nothing): per cell the
tracked peak next to ``torch.cuda.max_memory_allocated``/``reserved``, the optimizer step and
the whole step against fused AdamW's, syncs per step, and the hardware in the header.

Robust to what a first GPU run meets:
- each task's cells run in a worker process: a C-level abort in a package's kernel (which no
  ``try`` catches) ends that worker only; the cell is recorded as crashed, with the signal and
  the end of its stderr, and a new worker takes the remaining cells;
- every record, sync count and crash is written the moment it is known: a rerun resumes, and a
  crashed cell is not retried unless ``--retry-crashed``;
- ``--budget-s`` (default 270 on CUDA): no new cell starts after it; the table says what is
  missing, and the same command resumes.

``--device cpu`` runs the same code on the CPU with the tasks' ``smoke`` budgets (small models, a
few steps: the full models take minutes per step on a CPU), so CI can run it; syncs are not
counted there (no device to sync with). One setting differs there, not what a cell runs: each
worker uses one thread (``--threads``): the smoke models are too small to gain from more, and on
a small shared machine threads that wait on each other cost far more than they give. The CPU
table's step times (one timed step at most after the smoke budgets' warm-up) check the plumbing,
not speed. On CUDA the workers keep torch's default threads.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CPU_PRESET = "smoke"  # what --device cpu runs instead of gpu_check (see the module docstring)
BASELINE = "adamw"
SYNC_STEPS = 3  # the sync pass: step 1 (state is made) and steps 2..SYNC_STEPS (steady), counted apart
DEFAULT_BUDGET_S = 270.0
DEFAULT_OUT = "results/gpu"
DEFAULT_CPU_OUT = ".gpu_runs/cpu_check"  # .gpu_runs/ is git-ignored


# ----------------------------------------------------------------------------- plan


def plan(device: str, tasks: Sequence[str] | None, optimizers: Sequence[str] | None) -> list[tuple[str, str, str]]:
    """(task, optimizer, reason-unavailable or "") for every GPU-tier task x optimizer; AdamW first per task."""
    from optbench import registry

    gpu_tasks = sorted(n for n, s in registry.tasks().items() if s.tier == "gpu")
    for name in tasks or []:
        if name not in gpu_tasks:
            from optbench.errors import UsageError

            raise UsageError(f"unknown GPU-tier task {name!r}; known: {', '.join(gpu_tasks)}")
    names = list(optimizers) if optimizers else sorted(registry.optimizers())
    for name in names:
        registry.get_optimizer(name)
    names = sorted(names, key=lambda n: (n != BASELINE, n))
    cells = []
    for task in tasks or gpu_tasks:
        for name in names:
            reason = registry.get_optimizer(name).unavailable_for(task, device) or ""
            cells.append((task, name, reason))
    return cells


def _cell_file(folder: Path, task: str, optimizer: str) -> Path:
    return folder / f"{task}__{optimizer}.json"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


# ----------------------------------------------------------------------------- syncs on a real GPU


@contextlib.contextmanager
def counting_syncs() -> Iterator[Counter[str]]:
    """Count host-device syncs on CUDA: torch's sync debug mode warns at each implicit one (a value
    read, a blocking copy, a data-dependent shape); explicit ``torch.cuda.synchronize`` calls are
    counted by a wrapper that turns the debug mode off around them, so nothing counts twice."""
    import torch

    counts: Counter[str] = Counter()
    real_synchronize = torch.cuda.synchronize

    def synchronize(*args: Any, **kwargs: Any) -> None:
        counts["torch.cuda.synchronize"] += 1
        torch.cuda.set_sync_debug_mode(0)
        try:
            real_synchronize(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("warn")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.synchronize = synchronize
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counts
        finally:
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize = real_synchronize
    counts["implicit (value read, blocking copy, data-dependent shape)"] += sum(
        "synchronizing CUDA operation" in str(w.message) for w in caught)
    counts += Counter()  # drop zero entries


def sync_pass(task: str, optimizer: str, preset: str, device: str) -> dict:
    """Syncs inside ``optimizer.step()`` per step: step 1 apart (state is made), then the steady steps."""
    from optbench.loop import StepWatch, TrainingStep
    from optbench.runner import resolve_run, seed_everything

    run = resolve_run(task, optimizer, preset=preset, device=device)
    seed_everything(0)
    instance = run.task.instantiate(preset, 0, device, **run.task_options)
    opt = run.optimizer.build(instance.model, run.lr, **run.hparams)
    step = TrainingStep.for_task(instance, run.task.budget(preset))

    class Count(StepWatch):
        def __init__(self) -> None:
            self.per_step: list[Counter[str]] = []
            self._window = None

        def grads_ready(self) -> None:
            self._window = counting_syncs()
            self.per_step.append(self._window.__enter__())

        def stepped(self) -> None:
            self._window.__exit__(None, None, None)

    watch = Count()
    for k in range(1, SYNC_STEPS + 1):
        step(instance.model, opt, next(instance.batches), k, watch)
    steady = sum(watch.per_step[1:], Counter())
    return {"step_1": sum(watch.per_step[0].values()),
            "per_steady_step": sum(steady.values()) / (SYNC_STEPS - 1),
            "kinds": sorted(set().union(*watch.per_step))}


# ----------------------------------------------------------------------------- the worker (one per task)


def worker(task: str, optimizers: Sequence[str], preset: str, device: str, runs_dir: Path, deadline: float,
           threads: int | None = None) -> int:
    """Run ``task``'s cells in order, writing each one's row as it ends; stop starting cells at ``deadline``."""
    import torch

    from optbench.runner import Cell, resolve_run, run_grid

    if threads is not None:
        torch.set_num_threads(threads)
    status = runs_dir / "gpu_check.status"
    for name in optimizers:
        row_path = _cell_file(runs_dir / "rows", task, name)
        key = resolve_run(task, name, preset=preset, device=device).key.digest()
        if row_path.exists() and json.loads(row_path.read_text()).get("run_key") == key:
            continue
        if time.time() > deadline:
            print(f"gpu_check: time budget reached before {task} / {name}; the same command resumes", flush=True)
            return 3
        with status.open("a") as f:
            f.write(f"start {task} {name}\n")
        held = held_bytes(device)
        started = time.perf_counter()
        outcome = run_grid([Cell(task, name, 0)], preset=preset, runs_dir=runs_dir, device=device, progress=False)
        record = outcome.records[0]
        syncs = None
        if device.startswith("cuda") and record["status"] == "ok":
            try:
                syncs = sync_pass(task, name, preset, device)
            except Exception as exc:  # noqa: BLE001 - a failed count is reported, the run stands
                syncs = {"error": f"{type(exc).__name__}: {exc}"}
        _write_json(row_path, {"run_key": record.get("run_key") or key, "record": record, "syncs": syncs,
                               "cell_s": time.perf_counter() - started, "held_before_bytes": held})
        with status.open("a") as f:
            f.write(f"done {task} {name}\n")
        print(f"gpu_check: {task} / {name}: {record['status']} in {time.perf_counter() - started:.1f} s", flush=True)
    return 0


def held_bytes(device: str) -> int:
    """Bytes the worker still holds on ``device`` before a cell starts, after a garbage collection.

    Earlier cells should leave nothing behind but the task's data: a figure that grows from cell
    to cell is a leak, and it inflates every later cell's allocator peaks (as the first GPU check
    showed). On CUDA the allocator's count; elsewhere the storages of the live tensors that
    Python can reach.
    """
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        return int(torch.cuda.memory_allocated(device))
    kind = torch.device(device).type
    storages = {}
    for obj in gc.get_objects():
        if not issubclass(type(obj), torch.Tensor):  # type(), not isinstance: some modules warn on __class__
            continue
        try:  # a wrapper subclass (torchao's optimizer state) has no storage of its own: its parts are counted
            if obj.device.type == kind and not obj.is_meta:
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError, TypeError, AttributeError):
            continue
    return sum(storages.values())


def _crashed_cell(status: Path, task: str) -> str | None:
    """The optimizer whose cell ``task``'s worker started and never finished, from the status file."""
    open_cells: dict[str, None] = {}
    for line in status.read_text().splitlines() if status.exists() else []:
        verb, cell_task, name = line.split()
        if cell_task == task:
            open_cells.pop(name, None) if verb == "done" else open_cells.setdefault(name, None)
    return next(reversed(open_cells), None) if open_cells else None


def run_task(task: str, todo: list[str], preset: str, device: str, runs_dir: Path, deadline: float,
             retry_crashed: bool, plugins: Sequence[str] = (), threads: int | None = None) -> None:
    """Drive ``task``'s workers until every cell has a row, a crash file, or the deadline passed."""
    crashes = runs_dir / "crashes"
    todo = [n for n in todo if retry_crashed or not _cell_file(crashes, task, n).exists()]
    while todo:
        log = runs_dir / f"worker-{task}.log"
        cmd = [sys.executable, "-m", "optbench.gpu_check", "--worker", "--tasks", task, "--optimizers", ",".join(todo),
               "--device", device, "--preset", preset, "--runs-dir", str(runs_dir), "--deadline", str(deadline),
               *(["--threads", str(threads)] if threads is not None else []),
               *(arg for path in plugins for arg in ("--plugin", path))]
        with log.open("w") as err:
            code = subprocess.run(cmd, stderr=err, check=False).returncode
        if code in (0, 3):
            return
        crashed = _crashed_cell(runs_dir / "gpu_check.status", task)
        tail = log.read_text(errors="replace")[-3000:]
        if crashed is None:
            raise RuntimeError(f"gpu_check worker for {task} exited with {code} outside a cell:\n{tail}")
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        print(f"gpu_check: {task} / {crashed}: the worker process died ({how}); going on without it", flush=True)
        _write_json(_cell_file(crashes, task, crashed), {"task": task, "optimizer": crashed, "how": how,
                                                         "stderr_tail": tail})
        with (runs_dir / "gpu_check.status").open("a") as f:
            f.write(f"done {task} {crashed}\n")
        todo = todo[todo.index(crashed) + 1:]


# ----------------------------------------------------------------------------- the table


def hardware(device: str, threads: int | None = None) -> dict[str, Any]:
    """The header's hardware: this process's environment, with the workers' thread count when set."""
    import torch

    from optbench.env import environment, git_commit

    info = dict(environment(device))
    info["git_commit"] = os.environ.get("OPTBENCH_GIT_COMMIT") or git_commit()
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    info["platform"] = platform.platform()
    if threads is not None:
        info["threads"] = threads
    return info


def _mib(value: Any) -> str:
    return "" if value is None else f"{value / 2**20:.1f}"


def _ms(value: Any) -> str:
    return "" if value is None else f"{1000 * value:.2f}"


def table_rows(cells: list[tuple[str, str, str]], runs_dir: Path) -> list[dict[str, Any]]:
    """One row per planned cell, from the rows and crash files the workers wrote."""
    rows, base = [], {}
    for task, name, reason in cells:
        row: dict[str, Any] = {"task": task, "optimizer": name}
        saved = _cell_file(runs_dir / "rows", task, name)
        crash = _cell_file(runs_dir / "crashes", task, name)
        if reason:
            row["status"] = f"unavailable: {reason}"
        elif crash.exists():
            row["status"] = f"crashed ({json.loads(crash.read_text())['how']})"
        elif not saved.exists():
            row["status"] = "not run (time budget; rerun to resume)"
        else:
            data = json.loads(saved.read_text())
            rec, syncs = data["record"], data["syncs"]
            mem, timing = rec.get("memory") or {}, rec.get("timing") or {}
            row["status"] = rec["status"] if rec["status"] == "ok" else f"{rec['status']}: {rec.get('error')}"
            row.update(opt_step_s=timing.get("optimizer_step_s_median"), step_s=timing.get("step_s_median"),
                       state_bytes=mem.get("optimizer_state_bytes"), tracked_peak_bytes=mem.get("peak_bytes"),
                       cuda_max_allocated=mem.get("cuda_max_allocated"), cuda_max_reserved=mem.get("cuda_max_reserved"),
                       memory_method=(mem.get("method") or "").split(";")[0], cell_s=data.get("cell_s"),
                       held_before_bytes=data.get("held_before_bytes"),
                       final_train_loss=(rec.get("metrics") or {}).get("final_train_loss"))
            if isinstance(syncs, dict) and "error" not in syncs:
                row.update(syncs_step_1=syncs["step_1"], syncs_per_step=syncs["per_steady_step"],
                           sync_kinds="; ".join(syncs["kinds"]))
            elif isinstance(syncs, dict):
                row["sync_kinds"] = f"count failed: {syncs['error']}"
            if name == BASELINE and rec["status"] == "ok":
                base[task] = row
        rows.append(row)
    for row in rows:
        ref = base.get(row["task"])
        for key in ("opt_step_s", "step_s"):
            if ref and row.get(key) and ref.get(key):
                row[f"{key}_vs_adamw"] = row[key] / ref[key]
    return rows


COLUMNS = ["task", "optimizer", "status", "opt_step_s", "opt_step_s_vs_adamw", "step_s", "step_s_vs_adamw",
           "state_bytes", "tracked_peak_bytes", "cuda_max_allocated", "cuda_max_reserved", "syncs_step_1",
           "syncs_per_step", "sync_kinds", "final_train_loss", "cell_s", "held_before_bytes", "memory_method"]


def write_outputs(rows: list[dict], hw: dict, out: Path, preset: str, command: str, wall_s: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "gpu_check.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# gpu_check", "",
        f"Command: `{command}` (preset `{preset}`; wall time {wall_s:.0f} s in this invocation).", "",
        "Hardware: " + ", ".join(f"{k} {hw[k]}" for k in sorted(hw)), "",
        "Memory: *tracked peak* is optbench's tensor-level peak of a training step (params, grads, optimizer "
        "state, activations, temporaries; `memory.method` of each record says how); *max allocated* and "
        "*max reserved* are torch's CUDA allocator figures over the same steps, after `gc.collect()`, "
        "`torch.cuda.empty_cache()` and `reset_peak_memory_stats()`: they also hold the batch, cuBLAS/cuDNN "
        "workspaces and allocator rounding. Times are medians after the budget's warm-up steps; ratios are "
        "against fused AdamW on the same task. Syncs: host-device syncs inside `optimizer.step()`, in "
        "step 1 (state is made) and per later step. *Held before* is what the task's worker still held on "
        "the device when the cell started (after a garbage collection): the task's data, and nothing that "
        "grows from cell to cell.", "",
        "| task | optimizer | status | step() ms | x AdamW | step ms | x AdamW | state MiB | tracked peak MiB "
        "| max allocated MiB | max reserved MiB | held before MiB | syncs step 1 | syncs/step | sync kinds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    def ratio(r: dict, k: str) -> str:
        return f"{r[k]:.2f}" if r.get(k) else ""

    for r in rows:
        syncs = "" if r.get("syncs_per_step") is None else f"{r['syncs_per_step']:g}"
        lines.append(
            f"| {r['task']} | {r['optimizer']} | {r['status']} | {_ms(r.get('opt_step_s'))} | "
            f"{ratio(r, 'opt_step_s_vs_adamw')} | {_ms(r.get('step_s'))} | {ratio(r, 'step_s_vs_adamw')} | "
            f"{_mib(r.get('state_bytes'))} | {_mib(r.get('tracked_peak_bytes'))} | "
            f"{_mib(r.get('cuda_max_allocated'))} | {_mib(r.get('cuda_max_reserved'))} | "
            f"{_mib(r.get('held_before_bytes'))} | "
            f"{r.get('syncs_step_1', '')} | {syncs} | {r.get('sync_kinds', '')} |")
    (out / "GPU_CHECK.md").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m optbench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default; needs CUDA) or cpu (smoke budgets)")
    parser.add_argument("--out", default=None,
                        help=f"where GPU_CHECK.md and gpu_check.csv go (default: {DEFAULT_OUT} on cuda; "
                             f"{DEFAULT_CPU_OUT}, git-ignored, on cpu: a CPU check is not a published result)")
    parser.add_argument("--runs-dir", default=None, help="records, sync counts, crashes (default: OUT/runs)")
    parser.add_argument("--tasks", default=None, help="comma-separated GPU-tier tasks (default: all)")
    parser.add_argument("--optimizers", default=None, help="comma-separated optimizers (default: all)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"start no cell after this many seconds (default {DEFAULT_BUDGET_S:g} on cuda, "
                             "none on cpu)")
    parser.add_argument("--retry-crashed", action="store_true", help="run again the cells whose worker died")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per worker (default: 1 on cpu, torch's default on cuda)")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="a Python file that registers extra optimizers, checked too (repeatable)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        from optbench.errors import UsageError

        raise UsageError(f"an empty list {text!r}; name at least one, or leave the option out for all")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    from optbench.env import check_device
    from optbench.errors import UsageError

    args = parse_args(argv)
    try:
        from optbench.registry import load_plugin, plugin_files

        for path in args.plugin:
            load_plugin(path)
        device = check_device(args.device)
        on_cuda = device.startswith("cuda")
        out = Path(args.out or (DEFAULT_OUT if on_cuda else DEFAULT_CPU_OUT))
        runs_dir = Path(args.runs_dir or out / "runs")
        preset = args.preset or ("gpu_check" if on_cuda else CPU_PRESET)
        if args.threads is not None and args.threads < 1:
            raise UsageError(f"--threads {args.threads}: give 1 or more")
        threads = args.threads if args.threads is not None else (None if on_cuda else 1)
        if args.worker:
            return worker(_csv(args.tasks)[0], _csv(args.optimizers), preset, device, runs_dir, args.deadline,
                          threads)
        cells = plan(device, _csv(args.tasks), _csv(args.optimizers))
    except UsageError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    budget = args.budget_s if args.budget_s is not None else (DEFAULT_BUDGET_S if on_cuda else None)
    start = time.time()
    deadline = start + budget if budget is not None else float("inf")
    runs_dir.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check: {len(cells)} cells on {device} (preset {preset}), records in {runs_dir}", flush=True)
    plugins = [str(path) for path in plugin_files()]  # every plugin plan() saw, not only --plugin's
    for task in dict.fromkeys(t for t, _, _ in cells):
        todo = [name for t, name, reason in cells if t == task and not reason]
        run_task(task, todo, preset, device, runs_dir, deadline, args.retry_crashed, plugins, threads)
    rows = table_rows(cells, runs_dir)
    command = "python -m optbench.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:])
    write_outputs(rows, hardware(device, threads), out, preset, command.strip(), time.time() - start)
    bad = [r for r in rows if not r["status"].startswith(("ok", "unavailable"))]
    print(f"gpu_check: wrote {out / 'GPU_CHECK.md'}; {len(rows) - len(bad)} of {len(rows)} cells ok "
          "or unavailable" + (f"; not ok: {', '.join(r['task'] + '/' + r['optimizer'] for r in bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
