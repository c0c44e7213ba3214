"""A plugin needs only name, build and defaults; a state formula, when declared, is checked against the count."""

import textwrap

import pytest
import torch
from torch import nn

from optbench import registry
from optbench.runner import run_one
from optbench.spec import OptimizerSpec
from optbench.state import optimizer_state_bytes
from optbench.state_check import check_state_formula, state_formula_issue

PLUGIN = """
import torch
from optbench.param_groups import decay_groups
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec

def build(model, lr, *, weight_decay=0.01):
    return torch.optim.AdamW(decay_groups(model, weight_decay), lr=lr, foreach=False)

register_optimizer(OptimizerSpec(name={name!r}, build=build, defaults={{"weight_decay": 0.01}}{formula}))
"""


def load_plugin(tmp_path, name: str, formula: str = "") -> OptimizerSpec:
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(textwrap.dedent(PLUGIN.format(name=name, formula=formula)))
    registry.load_plugin(path)
    return registry.get_optimizer(name)


def adamw_after_one_step(model: nn.Module) -> torch.optim.Optimizer:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    return optimizer


@pytest.mark.parametrize(("formula", "source", "issue"), [
    (None, "measured", None),
    (lambda model, **_: sum(2 * p.numel() * 4 + 4 for p in model.parameters()), "formula", None),
    (lambda model, **_: 0, "measured", "gives 0 B but the optimizer holds"),
    (lambda model, **_: 1 // 0, "measured", "raised ZeroDivisionError"),
])
def test_the_formula_is_compared_with_the_measured_state(formula, source, issue):
    model = nn.Linear(8, 3)
    measured = optimizer_state_bytes(adamw_after_one_step(model))
    spec = OptimizerSpec(name="probe", build=lambda m, lr: None, state_bytes=formula)
    result = check_state_formula(spec, model, {}, measured)
    assert result.source == source
    assert (result.note is None) if issue is None else (issue in result.note)
    assert result.memory_fields()["state_bytes_source"] == source


def test_a_minimal_plugin_runs_and_its_record_says_the_state_was_measured(tmp_path):
    spec = load_plugin(tmp_path, "minimal-adamw")
    assert spec.state_bytes is None
    record = run_one("digits-mlp", "minimal-adamw", preset="smoke", measure_memory_pass=False)
    assert record["status"] == "ok"
    memory = record["memory"]
    assert memory["state_bytes_source"] == "measured" and memory["state_bytes_formula"] is None
    assert memory["optimizer_state_bytes"] > 0 and state_formula_issue(record) is None


def test_a_formula_returning_zero_is_flagged_in_the_record(tmp_path):
    load_plugin(tmp_path, "zero-formula-adamw", formula=", state_bytes=lambda model, **_: 0")
    record = run_one("digits-mlp", "zero-formula-adamw", preset="smoke", measure_memory_pass=False)
    memory = record["memory"]
    assert memory["state_bytes_source"] == "measured" and memory["state_bytes_formula"] == 0
    issue = state_formula_issue(record)
    assert issue and f"holds {memory['optimizer_state_bytes']} B" in issue
    assert any("state_bytes formula" in note for note in record["notes"])


def test_a_right_formula_is_the_record_s_source(tmp_path):
    load_plugin(tmp_path, "exact-formula-adamw",
                formula=", state_bytes=lambda model, **_: sum(2 * p.numel() * p.element_size() + 4 "
                        "for p in model.parameters())")
    record = run_one("digits-mlp", "exact-formula-adamw", preset="smoke", measure_memory_pass=False)
    assert record["memory"]["state_bytes_source"] == "formula"
    assert record["memory"]["state_bytes_formula"] == record["memory"]["optimizer_state_bytes"]
