"""The leaderboard site: what it writes, and how it behaves in a real browser (headless Chromium).

The browser test drives Debian's Chromium through Playwright (``optbench.browser``); it skips,
saying why, only when Chromium is absent (CI installs it).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re

import pytest
from test_report import make_record, put

from optbench.board import build_board
from optbench.browser import chromium, open_page
from optbench.markdown import ReportContext
from optbench.report import load_runs, write_report
from optbench.site import write_site

# (optimizer, state bytes, step seconds, metric on seeds 0..2); metric is loss-like, lower is better
BOARD = {
    "task-a": [("adamw", 1000, 0.010, (0.50, 0.52, 0.54)), ("sgd", 500, 0.005, (0.60, 0.61, 0.66)),
               ("adafactor", 30, 0.012, (0.55, 0.56, 0.58)), ("lion", 500, 0.009, (0.51, 0.50, 0.55))],
    "task-b": [("adamw", 2000, 0.020, (1.00, 1.10, 1.05)), ("sgd", 1000, 0.010, (1.30, 1.20, 1.25)),
               ("adafactor", 60, 0.030, (1.10, 1.12, 1.15)), ("lion", 1000, 0.019, (0.95, 1.00, 1.02))],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    runs = root / "runs"
    for task, rows in BOARD.items():
        for name, state, step_s, metrics in rows:
            for seed, metric in enumerate(metrics):
                put(runs, make_record(task, name, seed, metric, state=state, peak=8000 + state, step_s=step_s,
                                      higher_is_better=False))
    sweeps = root / "sweeps" / "smoke"
    sweeps.mkdir(parents=True)
    with (sweeps / "task-a.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["optimizer", "lr", "seed", "status", "eval_loss", "chosen"])
        writer.writeheader()
        for name in ("adamw", "sgd"):
            for lr, loss in ((1e-4, 0.9), (3e-4, 0.6), (1e-3, 0.7)):
                for seed in (100, 101):
                    writer.writerow({"optimizer": name, "lr": lr, "seed": seed, "status": "ok",
                                     "eval_loss": loss + 0.01 * seed - 1, "chosen": int(lr == 3e-4)})
        writer.writerow({"optimizer": "sgd", "lr": 1e-2, "seed": 100, "status": "diverged", "eval_loss": "",
                         "chosen": 0})
    files = write_report(runs, root / "out", "smoke", plots=False, html=True, sweeps_dir=root / "sweeps")
    return root / "out" / "site", files


def figures(page_html: str) -> dict[str, dict]:
    return {m.group(1): json.loads(m.group(2)) for m in re.finditer(
        r'<script type="application/json" id="figure-([\w-]+)">(.*?)</script>', page_html, re.S)}


def test_site_files_are_self_contained_and_light(site):
    site_dir, files = site
    assert {p.name for p in site_dir.glob("*.html")} == {"index.html", "task-a.html", "task-b.html"}
    assert set(files.site) >= {site_dir / "index.html", site_dir / "assets" / "plotly-basic.min.js"}
    total = sum(p.stat().st_size for p in site_dir.rglob("*") if p.is_file())
    assert total < 5 * 2**20, total
    for page in site_dir.glob("*.html"):
        html = page.read_text()
        links = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert links and not [link for link in links if re.match(r"[a-z]+:", link)], links  # relative only
        assert "<script src=\"assets/plotly-basic.min.js\"></script>" in html


def test_task_page_holds_the_markdowns_figures_and_the_sweep(site):
    site_dir, files = site
    html = (site_dir / "task-a.html").read_text()
    md = files.leaderboard_md.read_text().split("## task-a")[1].split("## task-b")[0]
    for row in [line for line in md.splitlines() if line.startswith("| ") and "optimizer" not in line]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        for cell in cells:
            assert f">{cell}</td>" in html.replace("&lt;", "<").replace("&gt;", ">"), cell
    figs = figures(html)
    pareto = [t for t in figs["pareto"]["data"] if t["mode"] == "markers"]
    assert sorted(t["name"] for t in pareto) == ["adafactor", "adamw", "lion", "sgd"]
    sweep = {t["name"]: t for t in figs["sweep"]["data"]}
    assert set(sweep) == {"adamw", "sgd"} and sweep["sgd"]["x"] == [1e-4, 3e-4, 1e-3]  # the diverged lr is left out
    assert sweep["sgd"]["marker"]["symbol"] == ["circle", "star", "circle"]
    assert "sweep" not in figures((site_dir / "task-b.html").read_text())  # no sweep published for task-b
    assert len(figs["memory"]["data"]) == 5  # one bar trace per peak category


def test_verdicts_and_profiles_are_rendered_when_the_board_has_them(site, tmp_path):
    site_dir, _ = site
    board = build_board(load_runs(site_dir.parent.parent / "runs", "smoke").records)
    verdicts = {"adamw": "equivalent", "sgd": "worse", "adafactor": "inconclusive", "lion": "better"}
    cells = board.cells.assign(verdict=board.cells["optimizer"].map(verdicts), diff=0.01, ci_low=-0.02, ci_high=0.04)
    profile = cells[["optimizer"]].drop_duplicates().assign(**{"τ=1": 0.5, "τ=2": 1.0})
    board = dataclasses.replace(board, cells=cells, profiles={"held-out loss": profile})
    write_site(board, ReportContext("smoke", site_dir, None, "pytest"), tmp_path, sweeps_dir=tmp_path)
    html = (tmp_path / "task-a.html").read_text()
    assert 'id="verdict-filter"' in html and 'data-verdict="worse"' in html
    assert "held-out loss diff vs AdamW (95% CI)" in html and "+0.0100 [-0.0200, +0.0400]" in html
    index = (tmp_path / "index.html").read_text()
    assert "profile-0" in figures(index) and ">better</td>" in index


@pytest.mark.skipif(chromium() is None, reason="Chromium not installed (Debian: apt-get install chromium); "
                                               ".ci/run installs it")
def test_site_in_headless_chromium(site, tmp_path):
    site_dir, _ = site
    with open_page() as browser:
        page = browser.page
        for task, rows in BOARD.items():
            browser.open(site_dir / f"{task}.html")
            names = lambda: page.locator("#board tbody tr:not([hidden]) td.name").all_inner_texts()  # noqa: E731
            assert sorted(names()) == sorted(name for name, *_ in rows)  # every optimizer has a row

            # clicking a header sorts by it: state bytes ascending, then descending
            state = {name: s for name, s, *_ in rows}
            page.click("#board th:text-is('state (exact)')")
            assert [state[n] for n in names()] == sorted(state.values())
            page.click("#board th:text-is('state (exact)')")
            assert [state[n] for n in names()] == sorted(state.values(), reverse=True)

            # a memory budget of 50% of AdamW's state hides the rows above it
            page.eval_on_selector("#budget", "(el) => { el.value = 50; el.dispatchEvent(new Event('input', "
                                             "{bubbles: true})); }")
            adamw = state["adamw"]
            assert sorted(names()) == sorted(n for n, s in state.items() if 100 * s / adamw <= 50)
            assert page.inner_text("#shown") == f"{len(names())} of {len(rows)} optimizers shown"
            page.uncheck("#family-filter input[value='sgd']")
            assert "sgd" not in names()

            # the Pareto plot draws one point per optimizer, and hovering one names it with its lr and CI
            points = page.locator("#pareto .scatterlayer .trace .points path.point")
            assert points.count() == len(rows)
            points.first.hover(force=True)
            page.wait_for_selector("#pareto .hovertext")
            hover = page.text_content("#pareto .hovertext")
            assert "lr 0.001" in hover and "95% CI" in hover and any(name in hover for name in state)
        browser.open(site_dir / "index.html")
        assert page.locator("#overview tbody tr").count() == 4
        assert any(url.endswith("assets/plotly-basic.min.js") for url in browser.requests)  # requests are seen
        assert browser.outside == []  # and none left the page


def test_screenshots_need_the_site(site, capsys):
    from optbench.cli import main

    site_dir, _ = site
    runs = site_dir.parent.parent / "runs"
    assert main(["report", "--runs-dir", str(runs), "--preset", "smoke", "--out", str(site_dir.parent / "x"),
                 "--screenshots"]) == 2
    assert "--screenshots needs --html" in capsys.readouterr().err
    assert not (site_dir.parent / "x" / "LEADERBOARD.md").exists()  # refused before anything was written
