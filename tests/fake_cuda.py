"""Fake CUDA for tests: run optbench's CUDA path with no GPU, and count host-device syncs.

torch's ``FakeTensorMode`` gives tensors a device, a shape and a dtype but no storage, so a
training step "on cuda" runs without a GPU: every op checks its devices (a CPU tensor mixed
into a CUDA op raises, as on a GPU) and nothing is computed. Four things in torch assume a
real device, and :func:`fake_cuda` patches each of them for the duration of the context,
here and nowhere else:

- autocast refuses ``device_type="cuda"`` when CUDA is not available (it warns and runs in
  float32): the "definitely not available" check and the bf16-support query are answered yes;
- ``FakeTensorMode.avoid_device_init`` stays on (it would turn off if anything answered "CUDA
  is available"), so the mode never touches a driver;
- ``Module.to``/``_apply`` swaps tensors in place, which fake tensors refuse: parameters and
  buffers are rebuilt instead (same names, same ``requires_grad``);
- ``Tensor.backward`` needs the autograd engine's device threads: it is replaced by a walk
  of the graph that gives every leaf reached a random gradient of its own shape, dtype and
  device (the leaves a real backward would reach);
- ``torch.Generator(device="cuda")`` would initialise CUDA: it makes a CPU generator instead.
  So fake tensors cannot tell a CPU generator used for CUDA tensors (an error on a GPU) from a
  CUDA one; :func:`cpu_generators_for_device_tensors` checks our source for that statically.
- ``torch.compile`` returns the function it is given, and dynamo is disabled for functions
  compiled before the context: a compiled optimizer step runs its eager math (Inductor's
  kernels need a real device; the math and its devices are the same).

Host-device syncs are counted by :class:`SyncLog`, a dispatch mode above the fake mode that
sees every op with its (fake) arguments: a value read of a CUDA tensor (``.item()``,
``bool()``, ``.tolist()``), a blocking copy between the host and the device (``.cpu()``,
``torch.tensor(list, device="cuda")``, ``.to("cuda")`` of a host tensor), an op whose output
shape depends on CUDA values (``nonzero``, boolean-mask indexing), and an explicit
``torch.cuda.synchronize()`` (or a stream's or an event's). A value read returns a stand-in
(1, 1.0 or True), since fake tensors hold no values. Counting is on only inside
:meth:`SyncLog.recording`; the events are kept with the op's name.
"""

from __future__ import annotations

import ast
import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops whose output shape depends on values: on CUDA each one waits for the device.
_DATA_DEPENDENT_SHAPE = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
                         aten.unique_consecutive.default, aten.unique_dim.default}
_REAL_GENERATOR = torch.Generator


def _device_type(x: Any) -> str | None:
    return x.device.type if isinstance(x, torch.Tensor) else None


class SyncLog(TorchDispatchMode):
    """Counts host-device syncs while :meth:`recording`; answers value reads with stand-ins always."""

    def __init__(self) -> None:
        super().__init__()
        self.events: Counter[str] = Counter()
        self._on = False

    @contextlib.contextmanager
    def recording(self) -> Iterator[Counter[str]]:
        """Count the syncs made inside the block into a fresh Counter (event name -> count)."""
        before, self.events, self._on = self.events, Counter(), True
        try:
            yield self.events
        finally:
            self._on = False
            before.update(self.events)
            self.events = before

    def note(self, event: str) -> None:
        if self._on:
            self.events[event] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            if _device_type(args[0]) == "cuda":
                self.note("value read (.item/bool/tolist)")
            return _stand_in_value(args[0])
        if func is aten._to_copy.default and not kwargs.get("non_blocking", False):
            src = _device_type(args[0])
            dst = torch.device(kwargs["device"]).type if kwargs.get("device") is not None else src
            if src != dst and "cuda" in (src, dst) and args[0].numel() > 0:
                self.note(f"blocking copy {src}->{dst}")
        if func is aten.copy_.default and not (len(args) > 2 and args[2]) and not kwargs.get("non_blocking", False):
            dst, src = _device_type(args[0]), _device_type(args[1])
            if src != dst and "cuda" in (src, dst) and args[1].dim() > 0:
                self.note(f"blocking copy {src}->{dst}")
        if func in _DATA_DEPENDENT_SHAPE and any(_device_type(a) == "cuda" for a in args):
            self.note(f"data-dependent shape ({func.overloadpacket.__name__})")
            raise DataDependentShapeError(f"{func} needs the values of a CUDA tensor to know its output shape "
                                          "(a sync on a GPU); fake tensors cannot go on from here")
        return func(*args, **kwargs)


class DataDependentShapeError(RuntimeError):
    """An op whose output shape needs device values: a sync on a GPU, and a dead end for fake tensors."""


def _stand_in_value(t: torch.Tensor) -> bool | int | float:
    if t.dtype == torch.bool:
        return True
    return 1.0 if t.is_floating_point() else 1


def _rebuild_apply(self: nn.Module, fn, recurse: bool = True) -> nn.Module:  # noqa: ANN001
    """``Module._apply`` for fake tensors: new Parameter and buffer objects instead of in-place swaps."""
    if recurse:
        for child in self.children():
            child._apply(fn)
    with torch.no_grad():
        for name, param in self._parameters.items():
            if param is not None:
                self._parameters[name] = nn.Parameter(fn(param), requires_grad=param.requires_grad)
        for name, buf in self._buffers.items():
            if buf is not None:
                self._buffers[name] = fn(buf)
    return self


def _graph_walk_backward(self: torch.Tensor, gradient=None, retain_graph=None, create_graph=False,  # noqa: ANN001
                         inputs=None) -> None:
    """A stand-in for backward: every leaf the graph reaches gets a random gradient like itself."""
    seen: set[Any] = set()
    todo = [self.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)  # AccumulateGrad nodes hold their leaf
        if leaf is not None:
            with torch.no_grad():
                grad = torch.randn_like(leaf)
                leaf.grad = grad if leaf.grad is None else leaf.grad + grad
        todo.extend(next_node for next_node, _ in node.next_functions)


class _GeneratorMeta(type(_REAL_GENERATOR)):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, _REAL_GENERATOR)


class _HostGenerator(_REAL_GENERATOR, metaclass=_GeneratorMeta):
    """``torch.Generator`` inside the fake context: a CPU generator where a CUDA one is asked for
    (a class, not a function, so ``torch.Generator | None`` annotations and isinstance still work)."""

    def __new__(cls, device: Any = "cpu") -> torch.Generator:  # noqa: D102
        return _REAL_GENERATOR("cpu" if torch.device(device).type == "cuda" else device)


def _no_compile(model: Any = None, **_: Any) -> Any:
    return model if model is not None else (lambda fn: fn)


def _counting(log: SyncLog, what: str):
    def sync(*args: Any, **kwargs: Any) -> None:
        log.note(what)

    return sync


@dataclass
class FakeCuda:
    """What :func:`fake_cuda` hands out: the fake mode and the sync log."""

    mode: FakeTensorMode
    syncs: SyncLog


@contextlib.contextmanager
def fake_cuda() -> Iterator[FakeCuda]:
    """Inside: tensors made or moved to ``"cuda"`` are fake CUDA tensors; see the module docstring."""
    log = SyncLog()
    mode = FakeTensorMode(allow_non_fake_inputs=True)  # real CPU data (a corpus, a template) may flow in
    patches = [
        mock.patch("torch.cuda.amp.common.amp_definitely_not_available", return_value=False),
        mock.patch("torch.cuda.is_bf16_supported", return_value=True),
        mock.patch.object(FakeTensorMode, "avoid_device_init", new=property(lambda self: True)),
        mock.patch.object(nn.Module, "_apply", _rebuild_apply),
        mock.patch.object(torch.Tensor, "backward", _graph_walk_backward),
        mock.patch("torch.Generator", _HostGenerator),
        mock.patch("torch.cuda.synchronize", _counting(log, "torch.cuda.synchronize")),
        mock.patch("torch.cuda.Stream.synchronize", _counting(log, "stream.synchronize")),
        mock.patch("torch.cuda.Event.synchronize", _counting(log, "event.synchronize")),
        mock.patch("torch.compile", _no_compile),
        mock.patch.object(torch._dynamo.config, "disable", True),
    ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        stack.enter_context(mode)
        stack.enter_context(log)  # above the fake mode: it sees each op first, with fake arguments
        yield FakeCuda(mode, log)


# ----------------------------------------------------------------------------- static check

RANDOM_METHODS_IN_PLACE = {"normal_", "uniform_", "random_", "bernoulli_", "exponential_", "geometric_",
                           "cauchy_", "log_normal_"}


@dataclass
class GeneratorUse:
    path: str
    line: int
    call: str
    why: str = field(default="")


def cpu_generators_for_device_tensors(paths: list[Path]) -> list[GeneratorUse]:
    """Calls in ``paths`` that may draw CUDA tensors from a CPU generator (an error on a GPU only).

    optbench's convention: every generator is a CPU ``torch.Generator()`` and every draw that
    passes ``generator=`` makes a CPU tensor, which is then moved. So a call that passes
    ``generator=`` is flagged when it also names a ``device=`` other than a "cpu" literal, or
    when its output's device follows another tensor (``*_like`` functions, in-place random
    methods such as ``x.normal_(generator=g)``); and ``torch.Generator(device=...)`` other than
    "cpu" is flagged too. Fake tensors cannot see any of these (their generator is never run).
    """
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            kwargs = {k.arg: k.value for k in node.keywords if k.arg}
            name = ast.unparse(node.func)
            device = kwargs.get("device")
            device_is_cpu = isinstance(device, ast.Constant) and device.value == "cpu"
            why = ""
            if name.endswith("Generator") and (node.args or (device is not None and not device_is_cpu)):
                why = "a generator not on the CPU"
            elif "generator" in kwargs:
                if device is not None and not device_is_cpu:
                    why = "draws on a device that is not a 'cpu' literal"
                elif name.split(".")[-1].endswith("_like") or name.split(".")[-1] in RANDOM_METHODS_IN_PLACE:
                    why = "draws on the device of another tensor"
            if why:
                found.append(GeneratorUse(str(path), node.lineno, ast.unparse(node), why))
    return found


# ----------------------------------------------------------------------------- one training step


@dataclass
class FakeSteps:
    """What :func:`fake_training_steps` leaves: the model and optimizer (fake), syncs per step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    syncs_per_step: list[Counter[str]]


def fake_training_steps(task_name: str, build, preset: str = "smoke", steps: int = 2) -> FakeSteps:  # noqa: ANN001
    """``steps`` training steps of ``task_name`` on fake CUDA through optbench's one training step.

    ``build(model) -> optimizer``. Syncs are counted inside ``optimizer.step()`` only (from
    "gradients ready" to "step returned"), one Counter per step. A device mismatch anywhere
    in the step (data, forward, loss, optimizer) raises.
    """
    from optbench.loop import StepWatch, TrainingStep
    from optbench.registry import get_task

    task = get_task(task_name)

    class CountInsideStep(StepWatch):
        def __init__(self, log: SyncLog) -> None:
            self.log, self.per_step, self._window = log, [], None

        def grads_ready(self) -> None:
            self._window = self.log.recording()
            self.per_step.append(self._window.__enter__())

        def stepped(self) -> None:
            self._window.__exit__(None, None, None)

    with fake_cuda() as fake:
        instance = task.instantiate(preset, 0, "cuda")
        optimizer = build(instance.model)
        train_step = TrainingStep.for_task(instance, task.budget(preset))
        watch = CountInsideStep(fake.syncs)
        for k in range(1, steps + 1):
            train_step(instance.model, optimizer, next(instance.batches), k, watch)
    return FakeSteps(instance.model, optimizer, watch.per_step)
