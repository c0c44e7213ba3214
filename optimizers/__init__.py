"""Built-in optimizers: importing this package registers every module listed here."""

import importlib

MODULES = (
    "adamw", "adam", "sgd",  # torch.optim
    "adafactor", "adam8bit", "galore", "adam_mini", "lion", "apollo", "apollo_mini",  # wrapped packages
    "fira",  # wrapped package (imports transformers when built)
    "muon",  # torch.optim.Muon with AdamW
    "ao_adamw",  # torchao's low-bit AdamW
    "slimadam", "smmf", "microadam",  # implemented here
)

for _name in MODULES:
    importlib.import_module(f"{__name__}.{_name}")
