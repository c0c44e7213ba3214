"""optbench.lrs: the one place learning rates are resolved, and the lrs published runs used."""

from __future__ import annotations

import json

import pytest
import torch

from optbench import lrs, registry
from optbench.spec import OptimizerSpec

# What each task declared before specs carried lr_vs_adamw (tasks/_defaults.py): (AdamW lr, SGD lr).
# Published records ran at these starting lrs; the declarations must keep giving them.
PUBLISHED_TASK_LRS = {
    "digits-mlp": (1e-3, 0.05), "digits-cnn": (1e-3, 0.05), "digits-vit": (1e-3, 0.05),
    "topics-gpt": (1e-3, 0.3), "topics-lstm": (1e-2, 1.0),
    "cifar10-resnet18": (1e-3, 0.05), "vit-s-cifar10": (5e-4, 0.05), "gpt2-small": (6e-4, 0.1),
}
ADAM_LIKE = ("adamw", "adam", "slimadam", "slimadam-snr", "adam-mini", "adam8bit", "galore", "apollo",
             "apollo-mini", "smmf", "microadam")


def published_starting_lr(task: str, optimizer: str) -> float:
    """The former rule, written out: Adam-like optimizers at AdamW's lr, Lion at a third of it
    (two significant figures), Adafactor at 1e-2, SGD at the task's SGD lr."""
    adamw, sgd = PUBLISHED_TASK_LRS[task]
    if optimizer in ADAM_LIKE:
        return adamw
    return {"lion": float(f"{adamw / 3:.2g}"), "adafactor": 1e-2, "sgd": sgd}[optimizer]


@pytest.mark.parametrize("task", sorted(PUBLISHED_TASK_LRS))
def test_starting_lrs_of_existing_optimizers_are_unchanged(task, tmp_path):
    spec = registry.get_task(task)
    no_table = tmp_path / "none.json"
    for optimizer in (*ADAM_LIKE, "lion", "adafactor", "sgd"):
        for preset in spec.budgets:
            lr, source = lrs.resolve_lr(spec, registry.get_optimizer(optimizer), preset, path=no_table)
            assert lr == published_starting_lr(task, optimizer), (task, optimizer, preset)
            # Adafactor's 1e-2 was written in the task's table; it is its own default, and now says so
            assert source == ("optimizer" if optimizer == "adafactor" else "task")


def test_resolution_order(tmp_path):
    task, lion = registry.get_task("topics-gpt"), registry.get_optimizer("lion")
    table = tmp_path / "tuned.json"
    table.write_text(json.dumps({"cpu": {"topics-gpt": {"lion": 2e-4}}}))
    assert lrs.resolve_lr(task, lion, "cpu", 5e-5, path=table) == (5e-5, "explicit")
    assert lrs.resolve_lr(task, lion, "cpu", path=table) == (2e-4, "sweep")
    assert lrs.resolve_lr(task, lion, "smoke", path=table) == (3.3e-4, "task")  # another preset's sweep is not read


def test_a_plugin_gets_a_task_lr_through_its_relation_to_adamw():
    task = registry.get_task("topics-lstm")  # AdamW lr 1e-2

    def build(model, lr):
        return torch.optim.SGD(model.parameters(), lr=lr)

    related = OptimizerSpec(name="plugin-half", build=build, default_lr=0.123, lr_vs_adamw=0.5)
    unrelated = OptimizerSpec(name="plugin-own", build=build, default_lr=0.123, lr_vs_adamw=None)
    assert lrs.starting_lr(task, related) == (5e-3, "task")
    assert lrs.starting_lr(task, unrelated) == (0.123, "optimizer")
