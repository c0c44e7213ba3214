"""optbench.rules: the one reader of rules files (SNR and SlimAdam share it), strict about what it reads."""

from __future__ import annotations

import json

import pytest
from optbench.optimizers import slimadam

from optbench import rules, snr


def test_both_users_read_rules_with_the_one_reader():
    assert slimadam.load_rules is rules.read_rules and snr.load_rules is rules.read_rules


def test_reads_axes_nulls_metadata_and_the_compile_prefix(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"_alpha": 1.0, "a.weight": [1], "_orig_mod.b.weight": [0, 1], "c": None, "d": []}))
    assert rules.read_rules(path) == {"a.weight": (1,), "b.weight": (0, 1), "c": None, "d": None}
    assert rules.read_metadata(path) == {"_alpha": 1.0}


@pytest.mark.parametrize("bad", [[True], [1.0], "1", {"axes": [1]}, [[1]]])
def test_an_entry_that_is_not_integer_dims_names_the_file_and_entry(tmp_path, bad):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"a.weight": bad}))
    with pytest.raises(ValueError, match=rf"{path}: rule for 'a.weight' is .*; accepted: a list of integer dims"):
        rules.read_rules(path)


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"a.weight": [1],}')
    with pytest.raises(ValueError, match=rf"{path}: not valid JSON"):
        rules.read_rules(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{path}: a rules file must be a JSON object"):
        rules.read_rules(path)
    with pytest.raises(ValueError, match="does not exist"):
        rules.read_rules(tmp_path / "missing.json")


def test_written_rules_read_back_one_key_per_line(tmp_path):
    doc = {"a.weight": (1,), "b": None, "_alpha": 2.0}
    path = rules.write_rules(tmp_path / "sub" / "r.json", doc)
    text = path.read_text()
    assert '  "a.weight": [1],' in text.splitlines()
    assert rules.read_rules(path) == {"a.weight": (1,), "b": None}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary left behind


def test_compressed_shape_and_numel():
    assert rules.compressed_shape((4, 3, 2), (0, 2)) == (1, 3, 1)
    assert rules.compressed_numel((4, 3, 2), [0, 2]) == 3
    assert rules.compressed_numel((4, 3), None) == 12
