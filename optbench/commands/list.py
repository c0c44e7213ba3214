"""``optbench list``: every registered optimizer, its family and whether it can run here."""

from __future__ import annotations

import argparse
import json

from optbench.commands._common import add_plugin_argument, load_plugins

HELP = "list optimizers with family, paper and availability (with the reason when unavailable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--device", default="cpu", help="device to check availability for (default: cpu)")
    add_plugin_argument(parser)


def rows(device: str) -> list[dict]:
    from optbench import registry

    out = []
    for name, spec in sorted(registry.optimizers().items()):
        reason = spec.unavailable_reason(device)
        out.append({"name": name, "family": spec.family, "available": reason is None, "reason": reason,
                    "paper": spec.paper, "description": spec.description,
                    "defaults": {k: v for k, v in spec.defaults.items()}, "default_lr": spec.default_lr,
                    "needs_model_info": spec.needs_model_info})
    return out


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    load_plugins(args)
    table = rows(args.device)
    if args.json:
        print(json.dumps(table, indent=1, default=str))
        return 0
    print(tabulate(
        [[r["name"], r["family"], "yes" if r["available"] else f"no: {r['reason']}", r["paper"]] for r in table],
        headers=["optimizer", "family", f"available ({args.device})", "paper"],
    ))
    return 0
