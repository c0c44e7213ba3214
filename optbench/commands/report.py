"""``optbench report``: turn a runs dir into LEADERBOARD.md, leaderboard.csv, runs.csv, plots and (--html) a site."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from optbench.commands._common import DEFAULT_RUNS_DIR

HELP = "write the leaderboard (markdown, CSV, plots) from the run records of one preset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR,
                        help=f"where run records are (default: {DEFAULT_RUNS_DIR})")
    parser.add_argument("--out", default="results",
                        help="where LEADERBOARD.md, the CSVs and plots/ go (default: results)")
    parser.add_argument("--preset", default="cpu",
                        help="which preset's runs to report: smoke | cpu | gpu (default: cpu)")
    parser.add_argument("--command", default=None, metavar="TEXT",
                        help="the command that produced the runs, quoted in the leaderboard's header")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--html", action="store_true",
                        help="also write the leaderboard as a static site, OUT/site/index.html (opens from disk)")
    parser.add_argument("--screenshots", action="store_true",
                        help="with --html: PNGs of the overview and one task page, taken in headless Chromium, "
                             "under OUT/site/screenshots/ (needs Debian's chromium and playwright)")
    parser.add_argument("--sweeps-dir", default=None, metavar="DIR",
                        help="where the site reads the lr sweeps, DIR/<preset>/<task>.csv (default: OUT/sweeps)")


def run(args: argparse.Namespace) -> int:
    from optbench import registry
    from optbench.atomic import writable_dir
    from optbench.report import write_report

    registry.check_preset(args.preset)
    writable_dir(args.out, "--out")
    if args.screenshots:
        check_screenshots(args.html)
    report_command = shlex.join(["optbench", "report", "--runs-dir", str(args.runs_dir), "--out", str(args.out),
                                 "--preset", args.preset, *(["--html"] if args.html else [])])
    files = write_report(args.runs_dir, args.out, args.preset, produced_by=args.command,
                         report_command=report_command, plots=not args.no_plots, html=args.html,
                         sweeps_dir=args.sweeps_dir)
    print(f"optbench report: {files.n_runs} run(s) of preset {args.preset} from {args.runs_dir}: "
          f"{files.n_failed} not ok, {files.n_corrupt} corrupt file(s) skipped (listed in the leaderboard)")
    for path in (files.leaderboard_md, files.leaderboard_csv, files.runs_csv, *files.plots):
        print(f"  wrote {path}")
    if files.site:
        print(f"  wrote the site: {Path(args.out) / 'site' / 'index.html'} and {len(files.site) - 1} more files "
              "(opens from disk)")
    if args.screenshots:
        from optbench.browser import screenshots

        for path in screenshots(Path(args.out) / "site"):
            print(f"  wrote {path}")
    return 0


def check_screenshots(html: bool) -> None:
    """--screenshots needs the site and a browser: say which is missing before anything is written."""
    import importlib.util

    from optbench.browser import chromium
    from optbench.errors import UsageError

    if not html:
        raise UsageError("--screenshots needs --html (they are taken of the site)")
    if chromium() is None:
        raise UsageError("--screenshots needs Chromium: none found on PATH (Debian: apt-get install chromium; "
                         "or set OPTBENCH_CHROMIUM)")
    if importlib.util.find_spec("playwright") is None:
        raise UsageError("--screenshots needs playwright (pip install playwright; it drives the system Chromium)")
