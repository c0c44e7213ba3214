"""``optbench tasks``: every task with its tier, metric and budget per preset."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

HELP = "list tasks with tier, metric and the budget of each preset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def rows() -> list[dict]:
    from optbench import registry

    out = []
    for name, spec in sorted(registry.tasks().items(), key=lambda kv: (kv[1].tier, kv[0])):
        reason = spec.requires.unmet()
        out.append({"name": name, "tier": spec.tier, "description": spec.description,
                    "metric": spec.metric.name, "higher_is_better": spec.metric.higher_is_better,
                    "margin": spec.margin, "board_seeds": spec.board_seeds,
                    "budgets": {p: asdict(b) for p, b in spec.budgets.items()}, "options": list(spec.options),
                    "available": reason is None, "reason": reason})
    return out


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    table = rows()
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    lines = []
    for r in table:
        for preset, b in r["budgets"].items():
            lines.append([r["name"], r["tier"], f"{r['metric']} ({'max' if r['higher_is_better'] else 'min'})",
                          preset, b["steps"], b["batch_size"], b["eval_every"], b["target"]])
    print(tabulate(lines, headers=["task", "tier", "metric", "preset", "steps", "batch", "eval every", "target"]))
    return 0
