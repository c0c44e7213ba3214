"""`optbench check --tune`: the candidate's lr is tuned by the sweep protocol before the verdict."""

import json
import textwrap

from optbench import registry
from optbench.check import run_check
from optbench.check_output import format_report
from optbench.cli import main
from optbench.sweep import Protocol

# A new user's plugin: name, build and defaults only, plus a state formula that lies.
PLUGIN = """
import torch
from optbench.param_groups import decay_groups
from optbench.registry import register_optimizer
from optbench.spec import OptimizerSpec

def build(model, lr, *, weight_decay=0.01):
    return torch.optim.AdamW(decay_groups(model, weight_decay), lr=lr, foreach=False)

register_optimizer(OptimizerSpec(name="tune-me", build=build, defaults={"weight_decay": 0.01},
                                 state_bytes=lambda model, **_: 0))
"""


def test_tune_chooses_the_candidate_lr_by_the_protocol_and_flags_a_wrong_state_formula(tmp_path):
    path = tmp_path / "tune_me.py"
    path.write_text(textwrap.dedent(PLUGIN))
    registry.load_plugin(path)
    lines = []
    # A small protocol keeps the test quick; the CLI's --tune runs the published one (Protocol()).
    protocol = Protocol(points=2, max_extensions=0)
    report = run_check("tune-me", tasks=["digits-mlp"], seeds=[0, 1], preset="smoke", runs_dir=tmp_path / "runs",
                       tune=protocol, measure_memory_pass=False, progress=False, log=lines.append)
    tuned = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "tune").rglob("*.json")]
    assert {r["seed"] for r in tuned} == set(protocol.seeds)  # tuning seeds, apart from the check's 0,1
    chosen = min({r["hparams"]["lr"] for r in tuned},
                 key=lambda lr: sum(r["metrics"]["eval_loss"] for r in tuned if r["hparams"]["lr"] == lr))
    checked = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("smoke/**/*.json")
               if json.loads(p.read_text())["optimizer"] == "tune-me"]
    assert sorted(r["seed"] for r in checked) == [0, 1] and {r["hparams"]["lr"] for r in checked} == {chosen}
    assert any("tuned tune-me: lr" in line for line in lines)
    # smoke has no published sweep: the check says the baseline's lr was not tuned
    assert any("not a published sweep" in line for line in lines)
    verdict = report.verdicts[0]
    assert "tuned by the sweep protocol" in verdict.lrs[0]
    assert verdict.flags and "state_bytes formula" in verdict.flags[0]
    assert "FLAG: candidate's state_bytes formula" in format_report(report)


def test_tune_with_another_lr_choice_is_a_usage_error_before_any_run(tmp_path, capsys):
    code = main(["check", "--candidate", "sgd", "--tasks", "digits-mlp", "--preset", "smoke", "--tune",
                 "--lr-from-baseline", "--runs-dir", str(tmp_path / "runs"), "--no-progress"])
    assert code == 2
    assert "--tune chooses the candidate's lr" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.json"))
