"""Built-in optimizers: importing this package registers every module listed here."""

import importlib

MODULES = ("adamw", "adam", "sgd")

for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")
