import json

import pytest

from optbench import cli


@pytest.mark.parametrize("verb", cli.VERBS)
def test_every_verb_answers_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([verb, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: optbench {verb}" in capsys.readouterr().out


def test_list_json_marks_availability(capsys):
    assert cli.main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["adamw"]["available"] is True
    assert all(r["available"] or r["reason"] for r in rows.values())


def test_tasks_json_has_budgets(capsys):
    assert cli.main(["tasks", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"smoke", "cpu", "gpu"} <= set(rows["digits-mlp"]["budgets"])


def test_unknown_optimizer_exits_2_with_known_names(capsys, tmp_path):
    code = cli.main(["run", "--tasks", "digits-mlp", "--optimizers", "adamx", "--preset", "smoke",
                     "--runs-dir", str(tmp_path)])
    assert code == 2
    assert "unknown optimizer 'adamx'; known:" in capsys.readouterr().err


def test_run_writes_records(tmp_path, capsys):
    code = cli.main(["run", "--tasks", "digits-mlp", "--optimizers", "adamw", "--preset", "smoke",
                     "--runs-dir", str(tmp_path), "--no-progress", "--no-memory-pass"])
    assert code == 0
    assert len(list(tmp_path.rglob("*.json"))) == 1
