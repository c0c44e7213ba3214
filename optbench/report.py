"""``optbench report``: run records in; LEADERBOARD.md, two CSVs, plots and (``html``) the site out.

One job per module, data flowing one way:

- here: ``load_runs`` reads every record of one preset (corrupt files kept by name), and
  ``write_report`` writes what the modules below make;
- ``optbench.board``: the numbers, pure functions over records (``build_board``);
- ``optbench.tables``: which columns and how each figure is written (markdown and site share it);
- ``optbench.markdown``: LEADERBOARD.md; ``optbench.plots``: its PNGs;
- ``optbench.site``: the static site (``results/site/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from optbench.store import RunStore

# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class Loaded:
    runs_dir: Path
    preset: str
    records: list[tuple[Path, dict]] = field(default_factory=list)
    corrupt: list[tuple[Path, str]] = field(default_factory=list)
    presets_found: list[str] = field(default_factory=list)
    newer: list[tuple[Path, str]] = field(default_factory=list)  # records from a newer optbench, not read
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # copies off the store's layout, not counted


def load_runs(runs_dir: str | Path, preset: str) -> Loaded:
    """Every run record of ``preset``, read through the run store (``optbench.store.RunStore.scan``).

    Only files in the store's layout count, each run once: a copy elsewhere (``archive/``,
    ``x (copy).json``) is listed as ignored. Corrupt files and records from a newer optbench
    under the preset's folder are kept by name.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs dir {runs_dir} does not exist "
                                f"(make runs with `optbench run --runs-dir {runs_dir}`)")
    scan = RunStore(runs_dir).scan()

    def of_preset(entries: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
        return [(path, why) for path, why in entries if path.relative_to(runs_dir).parts[0] == preset]

    loaded = Loaded(runs_dir, preset, [(path, r) for path, r in scan.records if r["preset"] == preset],
                    of_preset(scan.corrupt), sorted({r["preset"] for _, r in scan.records}),
                    of_preset(scan.newer), of_preset(scan.ignored))
    if not loaded.records:
        found = ", ".join(loaded.presets_found) or "none"
        raise ValueError(f"no run records for preset {preset!r} in {runs_dir}; presets found there: {found}")
    return loaded


# ---------------------------------------------------------------------------------------------
# Everything


@dataclass
class ReportFiles:
    leaderboard_md: Path
    leaderboard_csv: Path
    runs_csv: Path
    plots: list[Path]
    n_runs: int
    n_corrupt: int
    n_failed: int
    site: list[Path] = field(default_factory=list)


def write_report(runs_dir: str | Path = "results/runs", out: str | Path = "results", preset: str = "cpu",
                 produced_by: str | None = None, report_command: str = "optbench report",
                 plots: bool = True, html: bool = False, sweeps_dir: str | Path | None = None) -> ReportFiles:
    """Read the runs of ``preset`` and write LEADERBOARD.md, leaderboard.csv, runs.csv and plots under ``out``;
    with ``html``, also the site under ``out/site`` (its lr-sensitivity curves read ``sweeps_dir``, by default
    ``out/sweeps``)."""
    from optbench.board import build_board
    from optbench.markdown import ReportContext, render_markdown

    loaded = load_runs(runs_dir, preset)
    board = build_board(loaded.records)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    links = {}
    if plots:
        from optbench.plots import make_plots

        links = make_plots(board, out / "plots", out)
    ctx = ReportContext(preset, Path(runs_dir), produced_by, report_command)
    md = out / "LEADERBOARD.md"
    md.write_text(render_markdown(board, loaded.corrupt, ctx, links))
    board.cells.to_csv(out / "leaderboard.csv", index=False)
    board.runs.drop(columns=["curve"]).to_csv(out / "runs.csv", index=False)
    site = []
    if html:
        from optbench.site import write_site

        site = write_site(board, ctx, out / "site", sweeps_dir=Path(sweeps_dir) if sweeps_dir else out / "sweeps",
                          leaderboard=md)
    return ReportFiles(md, out / "leaderboard.csv", out / "runs.csv",
                       [out / p for task_links in links.values() for p in task_links.values()],
                       len(board.runs), len(loaded.corrupt), int((board.runs["status"] != "ok").sum()), site)
