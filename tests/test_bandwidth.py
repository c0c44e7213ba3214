"""Step time against the bandwidth bound, and the ratio benchmark's JSON and median table."""

from __future__ import annotations

import json

import pytest

from optbench.bandwidth import add_bytes, bound_seconds, measure_bandwidth, over_bound
from optbench.registry import optimizers


def test_bound_is_bytes_over_bandwidth() -> None:
    # 1M parameters at 28 bytes each, at 28 GB/s: 1 ms; a 2 ms step runs at twice its bound
    assert bound_seconds(28, 1_000_000, 28e9) == pytest.approx(1e-3)
    assert over_bound(2e-3, 28, 1_000_000, 28e9) == pytest.approx(2.0)
    assert over_bound(2e-3, None, 1_000_000, 28e9) is None  # a spec that declares no bound
    assert over_bound(None, 28, 1_000_000, 28e9) is None
    assert add_bytes(10) == 120


def test_measured_bandwidth_is_plausible() -> None:
    bandwidth = measure_bandwidth(numel=1 << 20, repeats=3)
    assert 1e8 < bandwidth < 1e13


def test_every_registered_optimizer_declares_its_bound() -> None:
    missing = [name for name, spec in optimizers().items() if not spec.bound_bytes_per_param]
    assert not missing, f"no bound_bytes_per_param on {missing}"
    assert optimizers()["adamw"].bound_bytes_per_param == 28


def test_ratio_benchmark_writes_the_json_the_issue_names(tmp_path, capsys) -> None:
    from benchmarks import optimizer_ratios, ratio_table

    out = tmp_path / "run.json"
    assert optimizer_ratios.main(["--model", "topics", "--steps", "2", "--warmup", "1", "--optimizers", "sgd",
                                  "--no-scratch", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {r["optimizer"] for r in data["optimizers"]} == {"adamw", "sgd"}
    row = next(r for r in data["optimizers"] if r["optimizer"] == "sgd")
    assert {"optimizer", "step_ms", "step_ratio", "bound_bytes_per_param", "bound_ratio", "state_ratio"} <= set(row)
    assert row["bound_bytes_per_param"] == 20 and row["bound_ratio"] > 0
    assert row["state_ratio"] == pytest.approx(0.5, rel=1e-3)  # one momentum buffer against two moments
    assert data["model"] == "topics" and data["params"] > 800_000 and data["bandwidth_gbs"] > 0
    table = tmp_path / "table.md"
    assert ratio_table.main([str(out), str(out), "--out", str(table)]) == 0
    assert "| sgd | package |" in table.read_text() and "median of 2 runs" in table.read_text()


def test_ratio_benchmark_refuses_an_unknown_model() -> None:
    from benchmarks import optimizer_ratios

    with pytest.raises(SystemExit) as exc:
        optimizer_ratios.main(["--model", "70b"])
    assert exc.value.code == 2


def test_a_board_run_puts_its_step_against_its_bound_and_the_board_shows_it(tmp_path, monkeypatch) -> None:
    from optbench import runner
    from optbench.board import aggregate, runs_frame

    # A fixed bandwidth: the test checks the arithmetic, not this machine's memory system
    monkeypatch.setattr(runner, "machine_bandwidth", lambda device: 1e10)
    record = runner.run_one("digits-mlp", "adamw", preset="smoke")
    timing = record["timing"]
    model = runner.resolve_run("digits-mlp", "adamw", preset="smoke").task.instantiate("smoke", 0, "cpu").model
    assert timing["params"] == sum(p.numel() for p in model.parameters())
    assert timing["bandwidth_bytes_s"] == 1e10
    assert timing["step_bound_ratio"] == pytest.approx(
        over_bound(timing["optimizer_step_s_median"], 28, timing["params"], 1e10))
    # a sweep run (no memory pass) measures no bandwidth and states no bound
    sweep = runner.run_one("digits-mlp", "adamw", preset="smoke", measure_memory_pass=False)
    assert "step_bound_ratio" not in sweep["timing"] and sweep["timing"]["params"] == timing["params"]
    board = aggregate(runs_frame([(tmp_path / "a.json", record)]))
    assert board["step_bound_ratio"].iloc[0] == pytest.approx(timing["step_bound_ratio"])


def test_ratio_benchmark_can_add_the_compiled_step_of_our_own_optimizers(monkeypatch) -> None:
    from benchmarks import optimizer_ratios

    monkeypatch.setenv("OPTBENCH_COMPILE", "1")  # the suite turns compiling off (conftest); building compiles nothing

    ready, skipped = optimizer_ratios.prepare(["adamw", "smmf"], "topics", "cpu", compiled=True)
    assert not skipped
    # adamw has no compile switch: no compiled row; smmf gets one, built to compile, beside its default
    # (the C kernel) one
    assert set(ready) == {"adamw", "smmf", "smmf+compiled"}
    from optbench.optimizers._native import compiler

    assert ready["smmf"][2].optbench_impl == ("native" if compiler() else "eager")  # its kernel, where one builds
    assert ready["smmf+compiled"][2].optbench_impl == "compiled"


@pytest.mark.native
def test_ratio_benchmark_can_add_the_torch_step_beside_each_kernel() -> None:
    import os

    from benchmarks import optimizer_ratios

    before = os.environ.get("OPTBENCH_NATIVE")
    ready, skipped = optimizer_ratios.prepare(["adamw", "smmf", "lion"], "topics", "cpu", torch_step=True)
    assert not skipped
    # only smmf steps through a C kernel: it alone gets a torch-step row, built with the kernels off
    assert set(ready) == {"adamw", "smmf", "smmf+torch", "lion"}
    assert (ready["smmf"][2].optbench_impl, ready["smmf+torch"][2].optbench_impl) == ("native", "eager")
    assert os.environ.get("OPTBENCH_NATIVE") == before  # the kernels are back on after the build


def test_microadam_floor_times_the_steps_library_calls_on_its_own_layout(tmp_path) -> None:
    import torch

    from benchmarks import microadam_floor
    from benchmarks.optimizer_ratios import build, fill_gradients
    from optbench.registry import optimizers as registered

    out = tmp_path / "floor.json"
    assert microadam_floor.main(["--model", "topics", "--rounds", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    parts = {p["part"]: p for p in data["parts"]}
    assert list(parts) == ["fused AdamW step", "topk", "window sums", "topk + window sums"]
    assert parts["fused AdamW step"]["ratio_to_fused_adamw"] == 1.0
    assert parts["topk + window sums"]["ms"] == pytest.approx(parts["topk"]["ms"] + parts["window sums"]["ms"])
    assert all(p["ms"] > 0 for p in data["parts"]) and data["model"] == "topics"
    # The windows it sums are as wide as the ones MicroAdam keeps for this model, slot for slot.
    model = build("topics", "cpu")
    fill_gradients(model)
    optimizer = registered()["microadam"].build(model, 1e-3)
    optimizer.step()
    params = [p for p in model.parameters() if p.requires_grad]
    windows = microadam_floor.windows(params, torch.Generator().manual_seed(0))
    assert [support.numel() for support, _ in windows] == [optimizer.state[p]["indices"].numel() for p in params]
    table = tmp_path / "floor.md"
    assert microadam_floor.main(["--merge", str(out), str(out), "--out", str(table)]) == 0
    assert "median of 2 runs" in table.read_text() and "| topk |" in table.read_text()


def test_microadam_floor_refuses_bad_input_before_measuring(tmp_path, capsys) -> None:
    from benchmarks import microadam_floor

    for argv in (["--model", "70b"], ["--rounds", "0"], ["--merge", str(tmp_path / "missing.json")],
                 ["--out", str(tmp_path / "floor.md")]):
        with pytest.raises(SystemExit) as exc:
            microadam_floor.main(argv)
        assert exc.value.code == 2
    assert "missing.json" in capsys.readouterr().err


def test_compile_cost_refuses_bad_input_before_compiling() -> None:
    from benchmarks import compile_cost

    for argv in (["--model", "70b"], ["--optimizers", "adamw"], ["--optimizers", "slimadam,lion"],
                 ["--out", "cost.md"]):
        with pytest.raises(SystemExit) as exc:
            compile_cost.main(argv)
        assert exc.value.code == 2


@pytest.mark.slow
def test_compile_cost_times_a_cold_and_a_warm_first_step_of_the_compiled_step(tmp_path) -> None:
    from benchmarks import compile_cost

    out = tmp_path / "cost.json"
    assert compile_cost.main(["--model", "topics", "--optimizers", "slimadam", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    for run in (row["cold"], row["warm"]):
        assert run["impl"] == "compiled", run  # not a fallback to the eager step
        assert run["first_s"] > 0 and run["step_ms"] > 0
    table = tmp_path / "cost.md"
    assert compile_cost.main(["--render", str(out), "--out", str(table)]) == 0
    assert "| slimadam " in table.read_text() and "--optimizers slimadam" in table.read_text()


def test_compile_cost_table_says_which_runs_failed() -> None:
    from benchmarks import compile_cost

    ok = {"first_s": 30.0, "step_ms": 1.5, "impl": "compiled"}
    data = {"command": "python -m benchmarks.compile_cost", "model": "topics", "load_average": 1.0,
            "rows": [{"optimizer": "smmf", "cold": {"error": "RuntimeError: boom"}, "warm": ok}]}
    text = compile_cost.markdown(data)
    row = next(line for line in text.splitlines() if line.startswith("| smmf"))
    assert [cell.strip() for cell in row.strip("|").split("|")] == ["smmf", "error: RuntimeError: boom", "30.0",
                                                                     "1.50", "compiled"]
