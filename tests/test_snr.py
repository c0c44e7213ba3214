"""SlimAdam's SNR analysis: the formula on tensors with known answers, the rule, and `optbench snr`."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch

from optbench import snr
from optbench.cli import main


def test_snr_of_constant_rows_is_high_along_the_constant_axis():
    gen = torch.Generator().manual_seed(0)
    rows = torch.rand(16, 1, generator=gen) * 10 + 1  # each row its own value, constant along dim 1
    v = rows.expand(16, 32) * (1 + 1e-3 * torch.randn(16, 32, generator=gen))
    assert snr.snr_along(v, (1,)) > 1e4
    assert snr.snr_along(v, (0,)) < 10  # rows differ by up to 11x: much lower along dim 0
    assert snr.choose_axes({"fan_in": snr.snr_along(v, (1,)), "fan_out": snr.snr_along(v, (0,))},
                           {"fan_in": (1,), "fan_out": (0,)}) == (1,)


def test_snr_formula_matches_hand_computation():
    v = torch.tensor([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]])
    # along dim 1: means 2, 2, 2; population variances 1, 0, 4 -> ratios 4, inf (dropped), 1
    assert snr.snr_along(v, (1,)) == pytest.approx((4 + 1) / 2)
    assert snr.variance_along(v, (1,)) == pytest.approx((1 + 0 + 4) / 3)
    expected = math.sqrt((1 + 1 + 0 + 0 + 4 + 4) / (1 + 9 + 4 + 4 + 0 + 16))
    assert snr.relerr_along(v, (1,)) == pytest.approx(expected)
    stats = snr.moment_stats(v, (1,))
    assert stats["snr"] == pytest.approx(2.5) and stats["relerr"] == pytest.approx(expected)
    assert stats["mean"] == pytest.approx(2.0) and stats["variance"] == pytest.approx(5 / 3)


def test_exactly_constant_is_infinite_and_all_zero_is_nan():
    assert snr.snr_along(torch.full((3, 4), 2.0), (0, 1)) == math.inf
    assert math.isnan(snr.snr_along(torch.zeros(3, 4), (1,)))


def test_iid_noise_with_big_variance_is_not_chosen():
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(64, 64, generator=gen).square() * 100  # chi-square(1): SNR = 1/2 along any axis
    opts = snr.axis_options(v.shape, "mlp_in")
    scores = {name: snr.snr_along(v, axes) for name, axes in opts.items()}
    assert all(s < 1 for s in scores.values()), scores
    assert snr.choose_axes(scores, opts, "snr", alpha=1.0) is None
    rel = {name: snr.relerr_along(v, axes) for name, axes in opts.items()}
    assert snr.choose_axes(rel, opts, "relerr", alpha=1.0) is None


def test_threshold_is_strict_and_highest_passing_option_wins():
    opts = {"fan_in": (1,), "fan_out": (0,), "both": (0, 1)}
    assert snr.choose_axes({"fan_in": 1.0, "fan_out": 0.5, "both": 0.2}, opts, "snr", 1.0) is None
    assert snr.choose_axes({"fan_in": 3.0, "fan_out": 5.0, "both": 2.0}, opts, "snr", 1.0) == (0,)
    assert snr.choose_axes({"fan_in": 0.4, "fan_out": 0.3, "both": 0.9}, opts, "relerr", 1.0) == (0,)
    assert snr.choose_axes({"fan_in": math.nan}, opts, "snr", 1.0) is None


def test_criteria_agree_on_uniform_slices_at_the_threshold():
    # every slice has SNR s and the same mean: all three criteria pass exactly when s > alpha
    for s, alpha in ((2.0, 1.0), (0.5, 1.0), (3.0, 4.0)):
        mean, var = 2.0, 4.0 / s
        row = {"snr": s, "mean": mean, "variance": var, "relerr": math.sqrt(var / (var + mean**2))}
        decisions = {c: snr.CRITERIA[c].passes(snr.CRITERIA[c].score(row), alpha) for c in snr.CRITERIA}
        assert set(decisions.values()) == {s > alpha}, (s, alpha, decisions)


def test_axis_options_for_linear_conv_and_never_compressed():
    assert snr.axis_options((10, 5), "mlp_in") == {"fan_in": (1,), "fan_out": (0,), "both": (0, 1)}
    conv = snr.axis_options((8, 3, 3, 3), "conv_in")  # every non-empty subset of 4 dims, as the reference
    assert len(conv) == 15 and len(set(conv.values())) == 15
    assert list(conv.items())[:3] == [("fan_in", (1, 2, 3)), ("fan_out", (0,)), ("both", (0, 1, 2, 3))]
    assert conv["axes_2_3"] == (2, 3) and conv["axes_1"] == (1,) and conv["axes_0_1_3"] == (0, 1, 3)
    assert snr.axis_options((10, 5), "norm") == {}
    assert snr.axis_options((10,), "mlp_in") == {}
    assert snr.axis_options((5, 7), "bias") == {}
    # dim 0 is 1: averaging over it alone saves nothing, so fan_out is left out
    assert snr.axis_options((1, 16, 8), "pos_embedding") == {"fan_in": (1, 2), "both": (0, 1, 2), "axes_1": (1,),
                                                             "axes_2": (2,), "axes_0_1": (0, 1), "axes_0_2": (0, 2)}


def test_bad_values_name_the_accepted_ones():
    with pytest.raises(ValueError, match="known: snr, variance, relerr"):
        snr.get_criterion("entropy")
    with pytest.raises(ValueError, match="alpha"):
        snr.choose_axes({}, {}, "snr", alpha=0)
    with pytest.raises(ValueError, match="axes"):
        snr.snr_along(torch.ones(2, 2), (2,))


def test_memory_saving_counts_entries():
    params = [snr.ParamInfo("w", (10, 4), "mlp_in"), snr.ParamInfo("b", (10,), "bias"),
              snr.ParamInfo("c", (6, 2, 3, 3), "conv")]
    saving = snr.memory_saving(params, {"w": [1], "b": None, "c": [1, 2, 3]})
    assert saving["v_entries_full"] == 40 + 10 + 108
    assert saving["v_entries_kept"] == 10 + 10 + 6
    assert saving["state_saved_share"] == pytest.approx(saving["v_saved_share"] / 2)


def _fake_trace() -> snr.ProxyTrace:
    params = [snr.ParamInfo("a.weight", (4, 3), "mlp_in"), snr.ParamInfo("a.bias", (4,), "bias"),
              snr.ParamInfo("n.weight", (4, 3), "norm")]
    rows = []
    for step, (fi, fo) in ((1, (5.0, 0.5)), (10, (1.5, 0.9))):
        for opt, value in (("fan_in", fi), ("fan_out", fo), ("both", 0.1)):
            rows.append({"step": step, "parameter": "a.weight", "option": opt, "snr": value, "mean": 1.0,
                         "variance": 1.0 / value, "relerr": math.sqrt(1 / (1 + value))})
    return snr.ProxyTrace("t", "smoke", 1e-4, 10, 10, 0, params, rows)


def test_derive_rules_averages_over_steps_and_never_compresses_norms():
    trace = _fake_trace()
    assert snr.derive_rules(trace, "snr", 1.0) == {"a.weight": [1], "a.bias": None, "n.weight": None}
    assert snr.derive_rules(trace, "snr", 3.5) == {"a.weight": None, "a.bias": None, "n.weight": None}  # mean 3.25
    summary = snr.role_summary(trace, snr.derive_rules(trace))
    assert {r["role"]: r["modal"] for r in summary} == {"bias": "none", "mlp_in": "fan_in", "norm": "none"}


@pytest.fixture(scope="module")
def smoke_outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("snr")
    threads = torch.get_num_threads()  # --threads sets it process-wide; restore it for other tests
    code = main(["snr", "--task", "digits-mlp", "--preset", "smoke", "--steps", "12", "--every", "5", "--threads", "1",
                 "--out", str(out), "--rules-out", str(out / "rules" / "digits-mlp.json")])
    torch.set_num_threads(threads)
    return code, out


def test_cli_snr_smoke_writes_three_outputs(smoke_outputs):
    code, out = smoke_outputs
    assert code == 0
    rules = json.loads((out / "rules.json").read_text())
    assert rules["_task"] == "digits-mlp" and rules["_criterion"] == "snr" and rules["_alpha"] == 1.0
    assert rules["_command"].startswith("optbench snr --task digits-mlp --preset smoke")
    assert rules["1.bias"] is None and rules["3.bias"] is None
    assert all(v is None or set(v) <= {0, 1} for k, v in rules.items() if not k.startswith("_"))
    assert json.loads((out / "rules" / "digits-mlp.json").read_text()) == rules
    trace = snr.read_trace_rows(out / "trace.csv")
    assert {r["step"] for r in trace} == {1, 5, 10, 12}
    assert {r["option"] for r in trace} == {"fan_in", "fan_out", "both"}
    assert "## Memory" in (out / "summary.md").read_text()


def test_rules_json_round_trip_into_slimadam(smoke_outputs):
    slimadam = pytest.importorskip("optbench.optimizers.slimadam")
    from optbench.tasks.digits_mlp import build_model

    _, out = smoke_outputs
    rules = snr.load_rules(out / "rules.json")
    # force one compressed tensor of each kind so the check cannot pass vacuously
    rules.update({"1.weight": [1], "3.weight": [0], "5.weight": [0, 1]})
    path = out / "forced.json"
    path.write_text(snr.dump_rules({**rules, "_criterion": "snr"}))
    model = build_model()
    opt = slimadam.build_slimadam(model, 1e-3, rules=str(path))
    name_of = {id(p): n for n, p in model.named_parameters()}
    axes = {name_of[id(p)]: a for g in opt.param_groups for p, a in zip(g["params"], g["compress_axes"], strict=True)}
    assert axes == {"1.weight": (1,), "1.bias": None, "3.weight": (0,), "3.bias": None, "5.weight": (0, 1),
                    "5.bias": None}
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    opt.step()
    shapes = {n: tuple(opt.state[p]["exp_avg_sq"].shape) for n, p in model.named_parameters()}
    assert shapes["1.weight"] == (256, 1) and shapes["3.weight"] == (1, 256) and shapes["5.weight"] == (1, 1)
    kept = sum(math.prod(s) for s in shapes.values())
    params = [snr.ParamInfo(n, tuple(p.shape), "mlp_in") for n, p in model.named_parameters()]
    assert kept == snr.memory_saving(params, rules)["v_entries_kept"]


def test_default_trace_cadence_gives_a_short_proxy_about_ten_points():
    assert [snr.default_every(n) for n in (5, 20, 100, 600)] == [1, 2, 10, 10]


def test_proxy_run_without_every_traces_a_short_proxy_at_every_step():
    from optbench.registry import get_task

    trace = snr.proxy_run(get_task("digits-mlp"), "smoke", steps=4)
    assert trace.every == 1 and {r["step"] for r in trace.rows} == {1, 2, 3, 4}


def test_cli_snr_without_every_traces_a_short_proxy_densely(tmp_path):
    threads = torch.get_num_threads()
    code = main(["snr", "--task", "digits-mlp", "--preset", "smoke", "--steps", "6", "--threads", "1",
                 "--out", str(tmp_path)])
    torch.set_num_threads(threads)
    assert code == 0
    assert {r["step"] for r in snr.read_trace_rows(tmp_path / "trace.csv")} == {1, 2, 3, 4, 5, 6}
    assert "--every 1" in json.loads((tmp_path / "rules.json").read_text())["_command"]


def test_cli_snr_rejects_bad_criterion_and_preset(tmp_path, capsys):
    assert main(["snr", "--task", "digits-mlp", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "known: smoke, cpu, gpu" in capsys.readouterr().err


def test_rules_agreement_by_role():
    roles = {"q": "query", "k": "key", "b": "bias"}
    agree = snr.rules_agreement({"q": [1], "k": [1], "b": None}, {"q": [1], "k": [0], "b": None, "_alpha": 1}, roles)
    assert agree == {"query": 1.0, "key": 0.0, "bias": 1.0, "_all": pytest.approx(2 / 3)}


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "optimizers" / "rules").glob("*.json")),
                         ids=lambda p: p.stem)
def test_committed_rules_match_the_current_task_model(path):
    """A rules file derived on an older version of the model is stale: regenerate it with its _command."""
    from optbench.registry import get_task

    doc = json.loads(path.read_text())
    inst = get_task(doc["_task"]).instantiate(doc.get("_preset", "smoke") if "_trace" in doc else "smoke", 0, "cpu")
    shapes = {n: list(p.shape) for n, p in inst.model.named_parameters() if p.requires_grad}
    assert doc["_task"] == path.stem
    assert doc["_shapes"] == shapes, f"stale rules: regenerate with `{doc['_command']}`"
    assert set(snr.load_rules(doc)) == set(shapes)
    assert doc["_command"].startswith(f"optbench snr --task {path.stem} ")
    if "_trace" in doc:  # derived from a recorded trace (--from-trace): no proxy settings to check
        assert Path(doc["_trace"]).is_file(), f"the trace these rules came from is gone: {doc['_trace']}"
        return
    task = get_task(doc["_task"])
    if "--steps" not in doc["_command"]:  # the proxy ran the whole budget of its preset
        assert doc["_proxy_steps"] == task.budget(doc["_preset"]).steps, f"stale: rerun `{doc['_command']}`"
    argv = shlex.split(doc["_command"])
    if "--lr" not in argv:
        scale = float(argv[argv.index("--lr-scale") + 1]) if "--lr-scale" in argv else 0.1
        assert doc["_proxy_lr"] == pytest.approx(snr.proxy_lr(task, scale)), f"stale: rerun `{doc['_command']}`"
