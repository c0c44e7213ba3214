"""Built-in tasks: importing this package registers every module listed here."""

import importlib

MODULES = ("digits_mlp",)

for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")
