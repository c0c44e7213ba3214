"""Built-in tasks: importing this package registers every module listed here."""

import importlib

MODULES = (
    "digits_mlp",
    "digits_cnn",
    "digits_vit",
    "topics_gpt",
    "topics_lstm",
    "cifar10_resnet18",
    "vit_s_cifar10",
    "gpt2_small",
)

for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")
