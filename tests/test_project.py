"""optbench.project: projections on fake tensors against measurements on real ones."""

from __future__ import annotations

import json
import math
import sys
import types
import warnings
from collections import Counter

import pytest
import torch
from optbench.optimizers import microadam, smmf
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import optbench.project as proj
from optbench import registry
from optbench.cli import main
from optbench.fake import fake_copy, fake_world, skip_init
from optbench.memory import measure_training_memory
from optbench.model_info import get_model_info
from optbench.projection_tables import markdown
from optbench.state import optimizer_state_bytes
from optbench.workloads import derive_roles, resolve_workload
from optbench.zoo import SHAPES


def real_measurement(name: str):
    """Part A on real tensors: digits-mlp (cpu preset), the spec's default hyperparameters."""
    inst = registry.get_task("digits-mlp").instantiate("cpu", 0, "cpu")
    spec = registry.get_optimizer(name)
    opt = spec.build(inst.model, spec.default_lr, **spec.resolve_hparams({}))
    report = measure_training_memory(inst.model, opt, inst.batches, inst.loss_fn, steps=proj.DEFAULT_STEPS)
    return report, optimizer_state_bytes(opt)


@pytest.fixture(scope="module")
def digits_workload():
    return resolve_workload("task:digits-mlp", preset="cpu")


@pytest.mark.parametrize("full_steps", [False, True])
def test_adamw_projection_of_a_cpu_task_agrees_with_the_real_measurement(digits_workload, full_steps):
    real, real_state = real_measurement("adamw")
    row = proj.project_optimizer(digits_workload, "adamw", full_steps=full_steps)
    assert row.status == "ok" and row.method.startswith("state: measured")
    assert row.state_bytes == real_state
    assert row.peak_bytes == pytest.approx(real.peak_bytes, rel=0.05)
    assert row.peak_by_category["params"] == real.peak_by_category["params"]


def _projectable() -> list[str]:
    return sorted(registry.optimizers())


@pytest.mark.parametrize("name", _projectable())
def test_every_optimizer_projects_the_real_state_and_peak(digits_workload, name):
    spec = registry.get_optimizer(name)
    if spec.unavailable_reason("cpu"):
        pytest.skip(f"{name} cannot run here: {spec.unavailable_reason('cpu')}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            real, real_state = real_measurement(name)
        except ValueError as exc:
            pytest.skip(f"{name} does not build for digits-mlp: {exc}")
        row = proj.project_optimizer(digits_workload, name)
    assert row.status == "ok", row.note
    assert row.state_bytes == real_state  # measured on fake tensors, or the spec's exact formula
    if row.method == "state: measured; peak: composed":
        assert row.peak_bytes == pytest.approx(real.peak_bytes, rel=0.05)
    else:  # the estimate leaves out the optimizer step's scratch: never above the real peak
        assert row.method == "state: formula; peak: estimate"
        assert row.peak_bytes <= real.peak_bytes * 1.05


def test_formula_fallback_when_the_optimizer_cannot_run_on_fake_tensors(digits_workload, monkeypatch):
    def cannot(*args, **kwargs):
        raise RuntimeError("simulated: kernel needs real memory")

    monkeypatch.setattr(proj, "measure_optimizer_steps", cannot)
    base = proj.stateless_run(digits_workload)
    row = proj.project_optimizer(digits_workload, "adamw", stateless=lambda: base)
    with fake_world(torch.float32):
        formula = registry.get_optimizer("adamw").state_bytes(digits_workload.build_model())
    assert row.method == "state: formula; peak: estimate"
    assert row.state_bytes == formula
    assert row.peak_bytes == base.peak_bytes + formula
    assert "simulated: kernel needs real memory" in row.note


EXPECTED_PARAMS = {
    "gpt2-small": 124_439_808,
    "gpt2-xl": 1_557_611_200,
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "vit-b16": 86_567_656,
    "resnet50": 25_557_032,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_builtin_shapes_have_the_published_sizes_and_declared_roles(name):
    with fake_world(torch.float32), skip_init():
        model = SHAPES[name].build()
        n = sum(p.numel() for p in model.parameters())
        info = get_model_info(model)
    assert n == EXPECTED_PARAMS[name]
    info.check_covers(model)
    if name.startswith("llama2"):
        layers, width = {"llama2-7b": (32, 4096), "llama2-13b": (40, 5120)}[name]
        counts = Counter(info.roles.values())
        assert counts["query"] == counts["key"] == counts["value"] == counts["attn_out"] == layers
        assert counts["mlp_in"] == 2 * layers and counts["mlp_out"] == layers  # SwiGLU gate + up, down
        assert counts["head"] == 1 and "bias" not in counts
        assert info.d_model == width and info.n_heads == width // 128


def test_fake_copy_leaves_the_real_model_alone():
    real = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with fake_world(torch.float32):
        fake = fake_copy(real)
    assert type(real[0].weight.data) is torch.Tensor
    assert "Fake" in type(fake[0].weight).__name__ and isinstance(fake[0].weight, nn.Parameter)
    assert fake[1].running_mean.shape == real[1].running_mean.shape


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.scale = nn.Parameter(torch.ones(8))  # a bare parameter: no role can be read off its module
        self.attn = nn.MultiheadAttention(8, 2)
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 5)


def test_derive_roles_reads_module_types_and_leaves_bare_parameters_unresolved():
    roles, unresolved = derive_roles(_Tokens())
    assert roles["embed.weight"] == "embedding"
    assert roles["attn.in_proj_weight"] == "qkv" and roles["attn.in_proj_bias"] == "bias"
    assert roles["attn.out_proj.weight"] == "linear"
    assert roles["norm.weight"] == roles["norm.bias"] == "norm"
    assert roles["out.weight"] == "linear" and roles["out.bias"] == "bias"
    assert unresolved == ["scale"]


def _install_factory_module(monkeypatch) -> str:
    mod = types.ModuleType("optbench_test_factories")

    def mlp():
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), torch.randn(8, 16)

    mod.mlp = mlp
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    return f"{mod.__name__}:mlp"


def test_user_model_without_metadata_marks_optimizers_that_need_it(monkeypatch):
    target = _install_factory_module(monkeypatch)
    needing = sorted(n for n, s in registry.optimizers().items() if s.needs_model_info)
    if not needing:
        pytest.skip("no registered optimizer declares needs_model_info")
    workload = resolve_workload(target)
    result = proj.project(workload, ["sgd", needing[0]])
    rows = {r.optimizer: r for r in result.rows}
    assert rows[needing[0]].status == "needs model metadata"
    assert rows[needing[0]].state_bytes is None
    assert rows["sgd"].status == "ok" and rows["adamw"].status == "ok"  # adamw joins as the baseline
    assert rows["sgd"].state_ratio == pytest.approx(0.5, rel=0.01)  # one momentum vs two moments (+ steps)
    assert result.roles["source"] == "derived from module types"


def test_bf16_parameters_halve_the_projected_state(monkeypatch):
    target = _install_factory_module(monkeypatch)
    rows = {}
    for dtype in ("fp32", "bf16"):
        result = proj.project(resolve_workload(target, dtype=dtype), ["adamw"])
        rows[dtype] = result.rows[0]
        n_params, n_tensors = result.n_params, 4
    assert rows["fp32"].state_bytes == 8 * n_params + 4 * n_tensors
    assert rows["bf16"].state_bytes == 4 * n_params + 4 * n_tensors  # moments in bf16, float32 steps


def test_bad_inputs_name_the_accepted_values():
    with pytest.raises(ValueError, match="unknown model 'gpt5'.*llama2-7b"):
        resolve_workload("gpt5")
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_workload("gpt2-small", dtype="fp8")
    with pytest.raises(ValueError, match="--seq-len applies to language models"):
        resolve_workload("resnet50", seq_len=128)
    with pytest.raises(ValueError, match="exceeds gpt2-small's context of 1024"):
        resolve_workload("gpt2-small", seq_len=2048)
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        resolve_workload("gpt2-small", batch_size=0)


def test_cli_json_and_usage_errors(capsys, tmp_path):
    out = tmp_path / "P.md"
    assert main(["project", "--model", "task:digits-mlp", "--optimizers", "sgd", "--json", "--out", str(out),
                 "--command", "nox -s projection"]) == 0
    data = json.loads(capsys.readouterr().out)
    (projection,) = data["projections"]
    assert [r["optimizer"] for r in projection["rows"]] == ["adamw", "sgd"]
    assert projection["n_params"] == 85_002
    text = out.read_text()
    assert ("Written by `nox -s projection`, which runs `optbench project --model task:digits-mlp --optimizers sgd "
            f"--preset smoke --out {out}`") in text
    assert "--command" not in text and "| optimizer" in text
    assert main(["project", "--model", "nosuchmodel"]) == 2
    assert "unknown model 'nosuchmodel'" in capsys.readouterr().err


def test_markdown_names_the_command_and_every_model(digits_workload):
    result = proj.project(digits_workload, ["sgd"])
    text = markdown([result, result], "optbench project --model task:digits-mlp", 1.0)
    assert text.count("## task:digits-mlp") == 2
    assert "`optbench project --model task:digits-mlp`" in text


@pytest.mark.slow
def test_llama2_7b_adamw_state_is_two_moments_and_a_step_per_tensor():
    result = proj.project(resolve_workload("llama2-7b"), ["adamw"])
    (row,) = result.rows
    assert row.method == "state: measured; peak: composed"
    assert row.state_bytes == 8 * result.n_params + 4 * (32 * 9 + 2 + 1)
    assert row.peak_bytes >= 2 * result.param_bytes + row.state_bytes
    assert result.param_bytes == 4 * EXPECTED_PARAMS["llama2-7b"]


# ----------------------------------------------------------------------------- the eager steps a projection runs
# A projection runs each optimizer's eager step op by op on fake tensors, every op paying a fake-tensor and
# a tracker dispatch: an eager step whose op count per tensor grows with the tensor's size (pieces of a fixed
# size) makes a large model's projection run for hours. The pieces are a pure function of the tensor's size,
# so the real step and its projection cut a tensor alike and the projected scratch is the real one.


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def eager_step_ops(name: str, rows: int, cols: int) -> int:
    """Aten ops of the second eager step of ``name`` (registered defaults, the torch step) on one fake
    (rows, cols) weight."""
    spec = registry.get_optimizer(name)
    with fake_world(torch.float32), skip_init():
        model = nn.Linear(cols, rows, bias=False)
        model.weight.grad = torch.zeros_like(model.weight)
        # native=False: the eager torch step (on fake tensors the C kernel's step only allocates)
        opt = spec.build(model, spec.default_lr, **spec.resolve_hparams({}), native=False)
        opt.step()  # the first step makes the state
        with _OpCounter() as counter:
            opt.step()
    return counter.ops


@pytest.mark.parametrize(("name", "max_pieces"), [("microadam", microadam.MAX_PIECES), ("smmf", smmf.MAX_BLOCKS)])
def test_eager_step_ops_per_tensor_do_not_grow_with_its_size(name, max_pieces):
    one_piece = eager_step_ops(name, 256, 256)  # 65,536 elements: one piece
    capped = eager_step_ops(name, 4096, 4096)  # 16.8M elements: already cut into the most pieces
    # 268M elements, more than any built-in shape's largest tensor (fake tensors: no memory); with pieces of
    # a fixed size this would be over 1,000 pieces and 100,000s of ops
    huge = eager_step_ops(name, 16384, 16384)
    assert huge == capped
    # 262,144 elements: MicroAdam's two pieces (a tensor of one piece takes a shorter path, with
    # a = g + e kept whole), still one block of SMMF's
    assert one_piece < capped <= max_pieces * eager_step_ops(name, 512, 512)


HUGE_NUMELS = [1, 4095, 99_999, 200_000, 1_600_000, 1_600_001, 2_097_153, 10**8, 13_015_864_321]


@pytest.mark.parametrize("numel", HUGE_NUMELS)
def test_microadam_pieces_are_bounded_in_count_and_in_size(numel):
    qbs, topk = 100_000, microadam.INT16_BLOCK_LIMIT
    step = microadam.piece_elements(numel, qbs)
    assert step % qbs == 0 and step % 2 == 0  # whole quantization blocks, whole bytes of codes
    assert len(microadam._pieces(numel, qbs, whole=False)) <= microadam.MAX_PIECES
    # the scratch bound of the docstring: about CHUNK_ELEMENTS, or numel / MAX_PIECES plus two blocks
    assert step <= max(microadam.CHUNK_ELEMENTS + qbs, numel / microadam.MAX_PIECES + 2 * qbs)
    full, size, _, _, _ = microadam.topk_layout(numel, topk, 0.01)
    per_piece = microadam.topk_blocks_per_piece(full, size)
    assert math.ceil(full / per_piece) <= microadam.MAX_PIECES
    assert per_piece * size <= max(microadam.CHUNK_ELEMENTS, numel / microadam.MAX_PIECES + size)


@pytest.mark.parametrize("numel", HUGE_NUMELS)
def test_smmf_blocks_are_bounded_in_count_and_in_size(numel):
    rows, cols = smmf.square_matricize(numel)
    block = smmf.block_rows(rows, cols)
    assert block % smmf.SIGN_BITS == 0  # each block's signs are whole int32 words
    assert math.ceil(rows / block) <= smmf.MAX_BLOCKS
    assert block * cols <= max(smmf.CHUNK_ELEMENTS, numel / smmf.MAX_BLOCKS) + smmf.SIGN_BITS * cols


def _microadam_after_steps(monkeypatch, max_pieces: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    monkeypatch.setattr(microadam, "CHUNK_ELEMENTS", 9)  # pieces of 2 quantization blocks of 5, 1 top-k block
    monkeypatch.setattr(microadam, "MAX_PIECES", max_pieces)
    p = nn.Parameter(torch.randn(60, 7, generator=torch.Generator().manual_seed(0)))
    opt = microadam.MicroAdam([p], lr=1e-2, k_init=0.2, quant_block_size=5, topk_block_size=8, weight_decay=0.1,
                              alpha=0.2, compile=False)
    for step in range(4):
        p.grad = torch.randn(60, 7, generator=torch.Generator().manual_seed(step + 1))
        opt.step()
    return p.detach(), opt.state[p]["error_codes"], len(microadam._pieces(p.numel(), 5, whole=False))


def test_bounded_pieces_leave_the_microadam_step_unchanged(monkeypatch):
    capped, capped_codes, few = _microadam_after_steps(monkeypatch, 3)
    fixed, fixed_codes, many = _microadam_after_steps(monkeypatch, 10**9)  # pieces of CHUNK_ELEMENTS only
    assert (few, many) == (3, 42)
    assert torch.allclose(capped, fixed, rtol=1e-6, atol=1e-8)
    assert torch.equal(capped_codes, fixed_codes)


def _smmf_after_steps(monkeypatch, max_blocks: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    monkeypatch.setattr(smmf, "CHUNK_ELEMENTS", 8)  # blocks of 32 rows
    monkeypatch.setattr(smmf, "MAX_BLOCKS", max_blocks)
    p = nn.Parameter(torch.randn(300, 40, generator=torch.Generator().manual_seed(0)))  # matricized (120, 100)
    opt = smmf.SMMF([p], lr=1e-2, weight_decay=0.05, compile=False)
    for step in range(4):
        p.grad = torch.randn(300, 40, generator=torch.Generator().manual_seed(step + 1))
        opt.step()
    return p.detach(), opt.state[p]["sign"], math.ceil(120 / smmf.block_rows(120, 100))


def test_bounded_blocks_leave_the_smmf_step_unchanged(monkeypatch):
    capped, capped_sign, few = _smmf_after_steps(monkeypatch, 2)
    fixed, fixed_sign, many = _smmf_after_steps(monkeypatch, 10**9)  # blocks of CHUNK_ELEMENTS only
    assert (few, many) == (2, 4)
    assert torch.allclose(capped, fixed, rtol=1e-6, atol=1e-8)
    assert torch.equal(capped_sign, fixed_sign)


def test_a_step_that_only_runs_compiled_falls_back_with_the_reason(digits_workload, monkeypatch):
    """torchao compiles its step with fullgraph=True; under the tracker torch.compile skips every frame, and the
    first line of its error ("found no compiled frames. Skipped frames:") does not say why."""

    def compiled_only(*args, **kwargs):
        raise RuntimeError("torch.compile with fullgraph=True found no compiled frames. Skipped frames:\n"
                           "  - single_param_adam (adam.py:163): non-infra torch dispatch mode present, this is not "
                           "supported today in torch.compile")

    monkeypatch.setattr(proj, "measure_optimizer_steps", compiled_only)
    row = proj.project_optimizer(digits_workload, "adamw")
    assert row.method == "state: formula; peak: estimate"
    assert row.note == ("did not run on fake tensors: its step runs through torch.compile, which does not trace "
                        "under the memory tracker's dispatch mode")
