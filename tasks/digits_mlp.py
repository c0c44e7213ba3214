"""digits-mlp: a two-hidden-layer MLP on scikit-learn's 8x8 handwritten digits.

Model: 64 -> 256 -> 256 -> 10 with GELU (83k parameters). Data, split and metrics:
tasks/_digits.py. What optimizers reach on it: results/LEADERBOARD.md (``nox -s bench``); a
single run to check the budget by hand: ``python -m optbench.tasks.quick_train digits-mlp``.
Verdict margin (``margin=0.02``, fixed before any board result): 2% of AdamW's held-out loss,
the widest the protocol allows. The loss here sits near its floor after the budget, where a
2% difference is a fraction of one misclassified image's loss; a practitioner would not pick
an optimizer on less.
Board seeds (``board_seeds=40``): why more than 10, in tasks/_digits.py.
"""

from __future__ import annotations

import torch
from optbench.tasks._digits import digits_instance
from torch import nn

from optbench.model_info import ModelInfo, attach_info
from optbench.registry import register_task
from optbench.spec import Budget, Metric, TaskInstance, TaskSpec

HIDDEN = 256


def build_model(hidden: int = HIDDEN) -> nn.Module:
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, hidden),
        nn.GELU(),
        nn.Linear(hidden, hidden),
        nn.GELU(),
        nn.Linear(hidden, 10),
    )
    roles = {"1.weight": "mlp_in", "3.weight": "mlp_in", "5.weight": "classifier"}
    roles.update({name: "bias" for name, _ in model.named_parameters() if name.endswith("bias")})
    return attach_info(model, ModelInfo(roles=roles, d_model=hidden, n_heads=1, task="digits-mlp"))


def setup(preset: str, seed: int, device: torch.device) -> TaskInstance:
    budget = SPEC.budget(preset)
    torch.manual_seed(seed)
    model = build_model().to(device)
    return digits_instance(model, budget, seed, device)


SPEC = register_task(
    TaskSpec(
        name="digits-mlp",
        tier="cpu",
        description="MLP 64-256-256-10 on sklearn digits (8x8), held-out loss (accuracy secondary)",
        metric=Metric("loss", higher_is_better=False),
        budgets={
            "smoke": Budget(steps=30, batch_size=32, eval_every=15, target=1.0, log_every=5),
            "cpu": Budget(steps=600, batch_size=64, eval_every=100, target=0.15, log_every=10),
            "gpu": Budget(steps=600, batch_size=64, eval_every=100, target=0.15, log_every=10),
        },
        setup=setup,
        margin=0.02,
        board_seeds=40,
        default_lrs={"adamw": 1e-3, "sgd": 0.05},
    )
)
