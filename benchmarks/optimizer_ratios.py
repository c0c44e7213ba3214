"""Each available optimizer's step against fused AdamW and against its own bandwidth bound.

    python -m benchmarks.optimizer_ratios [--model topics|25m] [--json FILE] [--steps 30] [--warmup 5]
                                          [--optimizers a,b] [--device cpu] [--no-scratch] [--compiled]
                                          [--torch-step]

Per optimizer: the median ``optimizer.step()`` time, its ratio to fused AdamW's, the bytes per
parameter one step must move (``bound_bytes_per_param`` on its spec), the step time over that
bound at the machine's bandwidth (``optbench.bandwidth``), its state bytes over AdamW's, and
the step's scratch memory (bytes a step allocates beyond the state, from the tensor-level
memory tracker, ``optbench.memory.measure_optimizer_steps``; it follows the native and eager
steps, not the compiled one) as a share of the largest parameter in float32.

Models: ``topics`` is the topics-gpt task's GPT (0.88M parameters, 69 tensors); ``25m`` is
``tasks._transformer.GPT`` with vocabulary 8192, context 256, 6 layers, d_model 512, 8 heads,
MLP 2048 (27.4M parameters, 101 tensors). Gradients come from one forward/backward on random
tokens and stay in place, so only the step is timed. Steps are interleaved: round r times
every optimizer's step r, and a ``a.add_(b)`` of 64M float32 elements for the bandwidth,
before any step r+1, so a change in the machine's load reaches all of them alike. Warm-up
rounds (where compiled steps compile) are dropped; medians are over the rest. The load
average before and after is printed and written, since the machine may be shared.

The JSON (``--json``) is ``{"optimizers": [{"optimizer", "step_ms", "step_ratio",
"bound_bytes_per_param", "bound_ratio", "state_ratio", ...}], "model", "params",
"bandwidth_gbs", ...}``; ``python -m benchmarks.ratio_table`` turns several into the median table
published under results/ratios/. Our own optimizers' plain rows are their registered
defaults, which on CPU step through their C kernels (``optimizers/kernels``; the ``impl``
column says "native"). ``--compiled`` adds a row ``<name>+compiled`` for every optimizer with a
``compile`` hyperparameter (our own), built with ``compile=True``: the compile happens in the
warm-up rounds. ``--torch-step`` adds a row ``<name>+torch`` for every optimizer whose default
is a C kernel, built with the kernels off (``OPTBENCH_NATIVE=0``): the torch step the kernel
replaces, timed beside it. On CUDA each step is followed by ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from optbench.optimizers._native import NATIVE_ENV
from optbench.tasks._text import next_byte_loss
from tabulate import tabulate
from torch import nn

from optbench.bandwidth import add_bytes, add_seconds, over_bound
from optbench.loop import TrainingStep
from optbench.registry import optimizers
from optbench.state import optimizer_state_bytes

BASELINE = "adamw"
BANDWIDTH_NUMEL = 1 << 26


def topics_model() -> nn.Module:
    from optbench.tasks.topics_gpt import build_model

    return build_model()


def gpt_25m() -> nn.Module:
    from optbench.tasks._transformer import GPT, with_info

    model = GPT(vocab=8192, context=256, n_layers=6, d_model=512, n_heads=8, d_mlp=2048)
    return with_info(model, d_model=512, n_heads=8, task="gpt-25m")


MODELS: dict[str, Callable[[], nn.Module]] = {"topics": topics_model, "25m": gpt_25m}


def build(model_name: str, device: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[model_name]().to(device)


def fill_gradients(model: nn.Module, batch_size: int = 4, seed: int = 0) -> None:
    """One forward/backward on fixed random tokens, leaving ``.grad`` in place for step timing."""
    device = next(model.parameters()).device
    vocab, context = model.wte.num_embeddings, model.context
    idx = torch.randint(0, vocab, (batch_size, context + 1), generator=torch.Generator().manual_seed(seed)).to(device)
    model.zero_grad(set_to_none=True)
    TrainingStep(next_byte_loss).gradients(model, (idx[:, :-1], idx[:, 1:]))  # the suite's one forward/backward


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="topics", help=f"one of {', '.join(MODELS)} (default topics)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this file")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per optimizer, after warm-up")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compiled steps compile here)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--optimizers", default="", help="comma-separated names (default: every available one)")
    parser.add_argument("--no-scratch", action="store_true", help="skip the memory tracker's scratch measurement")
    parser.add_argument("--compiled", action="store_true",
                        help="also time our own optimizers with compile=True (rows <name>+compiled)")
    parser.add_argument("--torch-step", action="store_true",
                        help="also time our own optimizers' torch step, kernels off (rows <name>+torch)")
    args = parser.parse_args(argv)
    if args.model not in MODELS:
        parser.error(f"--model {args.model!r} is not one of {', '.join(MODELS)}")
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    known = optimizers()
    unknown = [n for n in args.optimizers.split(",") if n and n not in known]
    if unknown:
        parser.error(f"unknown optimizer(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return args


COMPILED = "+compiled"
TORCH_STEP = "+torch"


@contextlib.contextmanager
def kernels_off(off: bool = True):
    """Build optimizers with their C kernels off (``OPTBENCH_NATIVE=0``) inside the block."""
    if not off:
        yield
        return
    before = os.environ.get(NATIVE_ENV)
    os.environ[NATIVE_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ[NATIVE_ENV]
        else:
            os.environ[NATIVE_ENV] = before


def prepare(names: list[str], model_name: str, device: str, compiled: bool = False,
            torch_step: bool = False) -> tuple[dict, list[tuple[str, str]]]:
    """Ready (spec, model, optimizer) per name with gradients in place; skipped names with reasons.

    ``compiled``: also ``<name>+compiled``, built with ``compile=True``, for each optimizer that has
    a ``compile`` hyperparameter. ``torch_step``: also ``<name>+torch``, built with the C kernels
    off, for each optimizer whose default row steps through one."""
    specs, ready, skipped = optimizers(), {}, []
    wanted = [(name, "") for name in names]
    if compiled:
        wanted += [(name, COMPILED) for name in names if "compile" in specs[name].resolve_hparams()]
    if torch_step:
        wanted += [(name, TORCH_STEP) for name in names]
    for name, variant in wanted:
        if variant == TORCH_STEP and getattr(ready.get(name, (None,) * 3)[2], "optbench_impl", None) != "native":
            continue  # no kernel ran in the plain row: it is the torch step already
        spec = specs[name]
        hparams = spec.resolve_hparams() | ({"compile": True} if variant == COMPILED else {})
        reason = spec.unavailable_reason(device)
        if reason is None:
            model = build(model_name, device)
            try:
                with kernels_off(variant == TORCH_STEP):
                    optimizer = spec.build(model, spec.default_lr, **hparams)
            except ValueError as exc:  # e.g. slimadam-snr without rules for this model
                reason = str(exc)
        if reason is not None:
            skipped.append((name + variant, reason))
            continue
        fill_gradients(model)
        ready[name + variant] = (spec, model, optimizer)
    return ready, skipped


def timed_step(optimizer: torch.optim.Optimizer, cuda: bool) -> float:
    start = time.perf_counter()
    optimizer.step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(ready: dict, steps: int, warmup: int, device: str) -> tuple[dict[str, list[float]], list[float]]:
    """Step seconds per optimizer and ``a.add_(b)`` seconds, interleaved round by round."""
    cuda = device.startswith("cuda")
    times: dict[str, list[float]] = {name: [] for name in ready}
    adds: list[float] = []
    a, b = torch.zeros(BANDWIDTH_NUMEL, device=device), torch.ones(BANDWIDTH_NUMEL, device=device)
    for round_ in range(warmup + steps):
        for name, (_, _, optimizer) in ready.items():
            seconds = timed_step(optimizer, cuda)
            if round_ >= warmup:
                times[name].append(seconds)
        seconds = add_seconds(a, b)
        if round_ >= warmup:
            adds.append(seconds)
    return times, adds


def step_scratch(spec, model_name: str, device: str, torch_step: bool = False) -> int | None:
    """Bytes one step allocates beyond params, grads and state (the tracker's peak scratch over 2 steps)."""
    from optbench.memory import measure_optimizer_steps

    model = build(model_name, device)
    fill_gradients(model)
    try:
        with kernels_off(torch_step):
            optimizer = spec.build(model, spec.default_lr, **spec.resolve_hparams())
        report = measure_optimizer_steps(model, optimizer, steps=2)
    except Exception:  # noqa: BLE001 - a package the tracker cannot follow: no figure
        return None
    return report.raw_by_category.get("optimizer_scratch")


def rows_for(ready: dict, times: dict, adds: list[float], scratch: dict, n_params: int, largest: int) -> list[dict]:
    bandwidth = add_bytes(BANDWIDTH_NUMEL) / statistics.median(adds)
    median = {name: statistics.median(t) for name, t in times.items()}
    state = {name: optimizer_state_bytes(opt) for name, (_, _, opt) in ready.items()}
    rows = []
    for name, (spec, model, optimizer) in ready.items():
        formula = spec.state_bytes(model, **spec.resolve_hparams()) if spec.state_bytes else None
        rows.append({
            "optimizer": name,
            "impl": getattr(optimizer, "optbench_impl", None),
            "step_ms": median[name] * 1e3,
            "step_ratio": median[name] / median[BASELINE],
            "bound_bytes_per_param": spec.bound_bytes_per_param,
            "bound_ratio": over_bound(median[name], spec.bound_bytes_per_param, n_params, bandwidth),
            "state_bytes": state[name],
            "state_ratio": state[name] / state[BASELINE],
            "state_formula_ok": None if formula is None else formula == state[name],
            "scratch_bytes": scratch.get(name),
            "scratch_vs_largest_param": None if scratch.get(name) is None else scratch[name] / (4 * largest),
        })
    return sorted(rows, key=lambda r: r["state_bytes"])


def print_table(rows: list[dict], header: str) -> None:
    def fmt(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    table = [[r["optimizer"], r["impl"] or "", fmt(r["step_ms"], ".2f"), fmt(r["step_ratio"], ".2f"),
              fmt(r["bound_bytes_per_param"], "g"), fmt(r["bound_ratio"], ".2f"), fmt(r["state_ratio"], ".3f"),
              fmt(r["scratch_vs_largest_param"], ".2f")] for r in rows]
    print(header)
    print(tabulate(table, headers=["optimizer", "impl", "step ms (median)", "step / adamw", "bytes/param at bound",
                                   "step / bound", "state / adamw", "scratch / largest param"], tablefmt="github"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n for n in args.optimizers.split(",") if n] or sorted(optimizers())
    if BASELINE not in names:
        names.insert(0, BASELINE)
    load_before = os.getloadavg()
    ready, skipped = prepare(names, args.model, args.device, args.compiled, args.torch_step)
    if BASELINE not in ready:
        raise SystemExit(f"baseline {BASELINE!r} cannot run here: {dict(skipped).get(BASELINE)}")
    times, adds = measure(ready, args.steps, args.warmup, args.device)
    load_after = os.getloadavg()
    reference = ready[BASELINE][1]
    n_params = sum(p.numel() for p in reference.parameters() if p.requires_grad)
    largest = max(p.numel() for p in reference.parameters())
    # the tracker follows the native and eager steps, not a compiled one (no "+compiled" figure)
    scratch = {} if args.no_scratch else {name: step_scratch(spec, args.model, args.device, name.endswith(TORCH_STEP))
                                          for name, (spec, _, _) in ready.items() if not name.endswith(COMPILED)}
    rows = rows_for(ready, times, adds, scratch, n_params, largest)
    bandwidth = add_bytes(BANDWIDTH_NUMEL) / statistics.median(adds)
    header = (f"model {args.model}: {n_params:,} parameters in {len(list(reference.parameters()))} tensors; device "
              f"{args.device}; torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} timed steps "
              f"after {args.warmup} warm-up, interleaved; bandwidth {bandwidth / 1e9:.1f} GB/s (a.add_(b), 64M fp32); "
              f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; baseline: fused torch AdamW")
    print_table(rows, header)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": shlex.join(["python", "-m", "benchmarks.optimizer_ratios", *(argv or sys.argv[1:])]),
            "model": args.model, "params": n_params, "tensors": len(list(reference.parameters())),
            "device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "steps": args.steps, "warmup": args.warmup, "bandwidth_gbs": bandwidth / 1e9,
            "load_average": {"before": load_before[0], "after": load_after[0]},
            "optimizers": rows, "skipped": dict(skipped),
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
