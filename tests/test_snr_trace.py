"""`optbench snr --from-trace`: rules from a recorded trace, ours or in the reference code's log format.

The reference-format log below is written here for the test (not taken from the reference repo):
the columns of dayal-kalra/low-memory-adam's ``snr_data/*.csv`` (step, key, shape, compress_dims,
snr, mean_sqr, var), shapes and dims as Python tuples, one row per non-empty subset of dims, two
recorded steps, a blank SNR where a slice was all zero.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest

from optbench import snr, snr_trace
from optbench.cli import main

# parameter -> (shape, {dims: (snr at step 1, snr at step 100)}); unlisted subsets get SNR 0.1
REFERENCE_LOG = {
    "transformer.wte.weight": ((16, 4), {(1,): (3.0, 1.5), (0,): (0.2, 0.4)}),  # fan-in, mean 2.25
    "transformer.h.0.ln_1.weight": ((4,), {(0,): (50.0, 50.0)}),  # a norm: never compressed
    "transformer.h.0.attn.q_proj.weight": ((4, 4), {(0,): (0.9, 1.2), (1,): (2.0, None)}),  # blank dropped: 2.0
    "transformer.h.0.attn.output_proj.weight": ((4, 4), {(0,): (4.0, 2.0), (0, 1): (1.5, 1.5)}),
    "transformer.h.0.mlp.mlp_up.weight": ((8, 4), {(0,): (1.0, 1.0)}),  # exactly alpha: not above it
    "transformer.h.0.mlp.mlp_proj.weight": ((4, 8), {(0,): (1.5, 1.5), (1,): (2.0, 2.0), (0, 1): (2.5, 2.5)}),
    "features.0.weight": ((3, 2, 3, 3), {(1, 2, 3): (2.0, 2.0), (2, 3): (5.0, 5.0)}),  # a subset only 15 find
}
EXPECTED = {
    "transformer.wte.weight": [1],
    "transformer.h.0.ln_1.weight": None,
    "transformer.h.0.attn.q_proj.weight": [1],
    "transformer.h.0.attn.output_proj.weight": [0],
    "transformer.h.0.mlp.mlp_up.weight": None,
    "transformer.h.0.mlp.mlp_proj.weight": [0, 1],
    "features.0.weight": [2, 3],
}


def write_reference_log(path: Path) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "key", "shape", "compress_dims", "snr", "mean_sqr", "var"])
        for step_index, step in enumerate((1, 100)):
            for name, (shape, snrs) in REFERENCE_LOG.items():
                dims = range(len(shape))
                for dims_subset in (c for r in range(1, len(shape) + 1) for c in itertools.combinations(dims, r)):
                    value = snrs.get(dims_subset, (0.1, 0.1))[step_index]
                    writer.writerow([step, name, str(shape), str(dims_subset), "" if value is None else value,
                                     1e-20, 1e-20 / value if value else ""])
    return path


def rules_of(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def test_reference_format_log_gives_the_expected_rules(tmp_path, capsys):
    log = write_reference_log(tmp_path / "snr_gpt_full_adam.csv")
    out = tmp_path / "out"
    assert main(["snr", "--from-trace", str(log), "--out", str(out), "--rules-out", str(tmp_path / "r.json")]) == 0
    assert rules_of(out / "rules.json") == EXPECTED
    doc = json.loads((out / "rules.json").read_text())
    assert doc["_trace_format"] == "reference" and doc["_recorded_steps"] == [1, 100] and doc["_alpha"] == 1.0
    assert doc["_command"] == f"optbench snr --from-trace {log} --alpha 1 --criterion snr --out {out} " \
                              f"--rules-out {tmp_path / 'r.json'}"
    assert json.loads((tmp_path / "r.json").read_text()) == doc
    assert not (out / "trace.csv").exists()  # the trace is the input: not written again
    summary = (out / "summary.md").read_text()
    assert "## Memory" in summary and "reference format" in summary
    assert "second moment saved" in capsys.readouterr().out


def test_reference_columns_map_to_ours_and_roles_come_from_names(tmp_path):
    trace = snr_trace.read_trace(write_reference_log(tmp_path / "log.csv"))
    roles = {p.name: p.role for p in trace.params}
    assert roles == {"transformer.wte.weight": "embedding", "transformer.h.0.ln_1.weight": "norm",
                     "transformer.h.0.attn.q_proj.weight": "query",
                     "transformer.h.0.attn.output_proj.weight": "attn_out",
                     "transformer.h.0.mlp.mlp_up.weight": "mlp_in", "transformer.h.0.mlp.mlp_proj.weight": "mlp_out",
                     "features.0.weight": "conv"}
    conv_rows = [r for r in trace.rows if r["parameter"] == "features.0.weight" and r["step"] == 1]
    assert len(conv_rows) == 15 and {"fan_in", "axes_2_3", "both"} <= {r["option"] for r in conv_rows}
    row = next(r for r in conv_rows if r["option"] == "axes_2_3")
    assert row["axes"] == "2 3" and row["shape"] == "3x2x3x3" and row["mean_sq"] == 1e-20 and row["snr"] == 5.0
    assert trace.source["statistics"] == ["snr", "mean_sq", "variance"]


def test_alpha_moves_the_threshold(tmp_path):
    trace = snr_trace.read_trace(write_reference_log(tmp_path / "log.csv"))
    rules = snr.derive_rules(trace, "snr", alpha=2.4)
    assert rules["transformer.wte.weight"] is None  # 2.25
    assert rules["transformer.h.0.mlp.mlp_proj.weight"] == [0, 1]  # 2.5
    assert rules["features.0.weight"] == [2, 3]


def test_criteria_the_reference_log_cannot_serve_are_refused(tmp_path, capsys):
    log = write_reference_log(tmp_path / "log.csv")
    assert main(["snr", "--from-trace", str(log), "--criterion", "relerr", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "relerr" in err and "usable here: snr" in err


def test_proxy_options_with_a_trace_are_a_usage_error(tmp_path, capsys):
    log = write_reference_log(tmp_path / "log.csv")
    assert main(["snr", "--from-trace", str(log), "--lr-scale", "0.5", "--every", "5"]) == 2
    assert "--lr-scale, --every" in capsys.readouterr().err
    assert main(["snr", "--alpha", "1"]) == 2
    err = capsys.readouterr().err
    assert "--task T" in err and "--from-trace FILE" in err


def test_a_file_that_is_no_trace_names_the_accepted_columns(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("step,name,value\n1,a,2\n")
    assert main(["snr", "--from-trace", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "compress_dims" in err and "parameter" in err


def test_our_own_trace_gives_back_the_rules_of_its_run(tmp_path):
    threads_args = ["--threads", "1"]
    run_out = tmp_path / "run"
    assert main(["snr", "--task", "digits-mlp", "--preset", "smoke", "--steps", "8", "--every", "4", *threads_args,
                 "--alpha", "0.5", "--out", str(run_out)]) == 0
    again = tmp_path / "again"
    assert main(["snr", "--task", "digits-mlp", "--preset", "smoke", "--from-trace", str(run_out / "trace.csv"),
                 "--alpha", "0.5", "--out", str(again)]) == 0
    assert rules_of(again / "rules.json") == rules_of(run_out / "rules.json")
    assert set(rules_of(again / "rules.json")) == {"1.weight", "1.bias", "3.weight", "3.bias", "5.weight", "5.bias"}


def test_a_trace_of_another_model_is_refused(tmp_path, capsys):
    log = write_reference_log(tmp_path / "log.csv")
    assert main(["snr", "--task", "digits-mlp", "--preset", "smoke", "--from-trace", str(log),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not match task 'digits-mlp'" in err and "not in the trace: 1.weight" in err


@pytest.mark.parametrize(("name", "shape", "role"), [
    ("model.layers.0.self_attn.k_proj.weight", (8, 8), "key"),
    ("h.3.attn.c_attn.weight", (8, 24), "qkv"),
    ("h.3.attn.c_proj.weight", (8, 8), "attn_out"),
    ("h.3.mlp.c_proj.weight", (32, 8), "mlp_out"),
    ("h.3.mlp.c_fc.bias", (32,), "bias"),
    ("model.norm.weight", (8,), "norm"),
    ("lm_head.weight", (100, 8), "head"),
    ("fc.weight", (10, 8), "classifier"),
    ("conv1.weight", (8, 3, 7, 7), "conv_in"),
    ("layer1.0.conv2.weight", (8, 8, 3, 3), "conv"),
    ("blocks.0.something.weight", (8, 8), "linear"),
])
def test_roles_from_names(name, shape, role):
    assert snr_trace.role_from_name(name, shape) == role
