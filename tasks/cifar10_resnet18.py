"""cifar10-resnet18 (GPU tier): torchvision's ResNet-18 adapted to 32x32 CIFAR-10 images.

Model: ``torchvision.models.resnet18(num_classes=10)`` with the 7x7 stride-2 stem replaced by
a 3x3 stride-1 conv and the max-pool removed (the usual CIFAR adaptation); 11.2M parameters.
Data: CIFAR-10 from the ``data_dir`` option (default ~/.cache/optbench), random crop + flip
on the device (tasks/cifar10_data.py). Metric: held-out cross-entropy (nats, lower is better) on
all 10,000 test images, with test accuracy as a secondary figure (``metrics.accuracy``), as the
digits tasks report them; the budgets' targets are losses. bf16 autocast on CUDA
(``TaskInstance.autocast_dtype``).

``smoke`` only: a ResNet with one BasicBlock per stage (same architecture, fewer layers), a
32-image test subset, and generated stand-in images when CIFAR-10 is absent; both are said in
``TaskInstance.notes``. ``cpu``/``gpu`` need the real data and raise ``MissingDataError``
naming the download command otherwise; ``gpu_check`` (30 steps at batch 256, for
``optbench.gpu_check``) trains the full model on full-size stand-in images. The ``cpu``
budget (100 steps, batch 32) runs the full model on a CPU, to check a setup; it is not part
of the CPU leaderboard. Figures of GPU runs are published under
results/ with the command that made them.

Verdict margin (``margin=0.02``, fixed before any result of this task): 2% of AdamW's held-out
loss, the widest the protocol allows. The loss is averaged over all 10,000 test images, so the
margin is not an allowance for a small test set; it is the size of difference nobody would act
on: at the losses this budget ends at, 2% of the loss moves test accuracy by a few tenths of a
point, no more than two seeds of one recipe commonly differ by on CIFAR-10.
"""

from __future__ import annotations

import torch
from optbench.tasks import cifar10_data
from torch import nn

from optbench.model_info import ModelInfo, attach_info, roles_by_suffix
from optbench.registry import register_task
from optbench.spec import Budget, Metric, Requirements, TaskInstance, TaskSpec

SMOKE_TEST_IMAGES = 32  # a ResNet forward on 32x32 costs ~0.25 GMAC per image even when shrunk


def build_model(small: bool = False) -> nn.Module:
    # Imported here so that a missing torchvision marks this task unavailable instead of breaking `import tasks`.
    from torchvision.models import resnet18
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10) if small else resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    rules = [
        ("fc.weight", "classifier"),
        ("fc.bias", "bias"),
        ("downsample.0.weight", "conv"),
        ("downsample.1.weight", "norm"),
        ("downsample.1.bias", "norm"),
        *[(f"bn{i}.{p}", "norm") for i in (1, 2) for p in ("weight", "bias")],
        ("conv1.weight", "conv"),
        ("conv2.weight", "conv"),
    ]
    roles = roles_by_suffix(model, rules)
    roles["conv1.weight"] = "conv_in"  # the stem; block convs share its suffix
    return attach_info(model, ModelInfo(roles=roles, d_model=512, n_heads=1, task="cifar10-resnet18"))


def setup(preset: str, seed: int, device: torch.device, data_dir: str | None = None) -> TaskInstance:
    budget = SPEC.budget(preset)
    (x_tr, y_tr, x_te, y_te), notes = cifar10_data.get(preset, data_dir)
    smoke = preset == "smoke"
    if smoke:
        x_te, y_te = x_te[:SMOKE_TEST_IMAGES], y_te[:SMOKE_TEST_IMAGES]
        notes.append(f"smoke: ResNet with one BasicBlock per stage, {len(y_te)} test images")
    torch.manual_seed(seed)
    model = build_model(small=smoke).to(device)
    return cifar10_data.cifar10_instance(model, budget, seed, device, (x_tr, y_tr, x_te, y_te), notes)


SPEC = register_task(
    TaskSpec(
        name="cifar10-resnet18",
        tier="gpu",
        description="ResNet-18 (3x3 stem, no max-pool) on CIFAR-10 with crop+flip, "
                    "held-out loss (accuracy secondary)",
        metric=Metric("loss", higher_is_better=False),
        # Targets are held-out losses (nats; chance is ln 10 = 2.30), set before any run of this task.
        budgets={
            "smoke": Budget(steps=3, batch_size=4, eval_every=3, target=2.2, log_every=1),
            "cpu": Budget(steps=100, batch_size=32, eval_every=50, target=1.9, log_every=10),
            "gpu": Budget(steps=2000, batch_size=256, eval_every=250, target=0.5, log_every=20),
            # A systems check of a lent GPU (optbench.gpu_check), on full-size stand-in data: no target.
            "gpu_check": Budget(steps=30, batch_size=256, eval_every=30, log_every=5, warmup_steps=5),
        },
        setup=setup,
        margin=0.02,
        default_lrs={"adamw": 1e-3, "sgd": 0.05},
        requires=Requirements(packages=("torchvision",)),
        options=("data_dir",),
    )
)
