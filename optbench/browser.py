"""Headless Chromium for the leaderboard site: its test and its screenshots.

Playwright drives the system's Chromium (Debian's ``chromium`` package, ``/usr/bin/chromium``),
never a browser build of its own, with a fresh profile and the background services off, so
that every request the browser makes is one the page asked for. ``open_page`` records every
request and refuses those that would leave the machine (anything but ``file:``, ``data:``,
``blob:`` and ``about:`` URLs), so a page that tried to fetch something shows it in
``Page.requests`` instead of reaching the network.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
SCREEN = {"width": 1400, "height": 900}


def chromium() -> str | None:
    """The Chromium executable: $OPTBENCH_CHROMIUM, else ``chromium`` on PATH (Debian's launcher); None if absent."""
    return os.environ.get("OPTBENCH_CHROMIUM") or shutil.which("chromium")


@dataclass
class Page:
    page: object  # playwright.sync_api.Page
    requests: list[str] = field(default_factory=list)

    @property
    def outside(self) -> list[str]:
        """Requests that would have left the machine."""
        return [url for url in self.requests if not url.startswith(LOCAL_SCHEMES)]

    def open(self, path: Path) -> None:
        """Load a page from disk and wait until its script has drawn the figures."""
        self.page.goto(Path(path).resolve().as_uri())
        self.page.wait_for_function("window.optbenchReady === true", timeout=30_000)


@contextmanager
def open_page() -> Iterator[Page]:
    """A page in a fresh headless Chromium profile; raises RuntimeError when Chromium or Playwright is missing."""
    executable = chromium()
    if executable is None:
        raise RuntimeError("Chromium not found (Debian: apt-get install chromium; or set OPTBENCH_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise RuntimeError("playwright is not installed (pip install playwright; it drives the system Chromium)") \
            from exc
    with tempfile.TemporaryDirectory(prefix="optbench-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=executable, headless=True,
                                                        args=list(FLAGS), viewport=SCREEN)
        try:
            result = Page(context.pages[0] if context.pages else context.new_page())
            context.on("request", lambda request: result.requests.append(request.url))
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(LOCAL_SCHEMES)
                          else route.abort())
            yield result
        finally:
            context.close()


def screenshots(site_dir: str | Path, task: str | None = None) -> list[Path]:
    """Full-page PNGs of the overview and of one task page (the first task if none is named), taken in headless
    Chromium, under ``site_dir/screenshots``."""
    site_dir = Path(site_dir)
    task_pages = sorted(p for p in site_dir.glob("*.html") if p.name != "index.html")
    if not task_pages:
        raise FileNotFoundError(f"no task pages in {site_dir} (write them with `optbench report --html`)")
    chosen = site_dir / f"{task}.html" if task else task_pages[0]
    (site_dir / "screenshots").mkdir(exist_ok=True)
    written = []
    with open_page() as browser:
        for source, name in ((site_dir / "index.html", "overview.png"), (chosen, f"task-{chosen.stem}.png")):
            browser.open(source)
            browser.page.screenshot(path=str(site_dir / "screenshots" / name), full_page=True)
            written.append(site_dir / "screenshots" / name)
        if browser.outside:
            raise RuntimeError(f"the site asked for network resources: {browser.outside}")
    return written
