#!/usr/bin/env python
"""Render a demo report (``reports/index.html``) in headless Chromium and fail when a table is
wider than the page.

    python scripts/check_report.py reports/index.html [--width 1280] [--screenshot shot.png]

Exit 0 when every table fits the page's content column at that window width (no horizontal
scrolling, nothing behind a scrollbar), 1 with one line per table that does not, 2 when Chromium,
ChromeDriver or selenium is missing (Debian: ``apt-get install chromium chromium-driver``).
``tests/test_report.py`` runs it on a generated report.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
         "--hide-scrollbars", "--force-device-scale-factor=1")

# every table: its width against the width it may use (its parent's content box, the page)
_MEASURE = """
const page = document.documentElement.clientWidth;
const out = [];
document.querySelectorAll('table').forEach((t, i) => {
  const r = t.getBoundingClientRect();
  const parent = t.parentElement;
  const cs = getComputedStyle(parent);
  const room = parent.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  const head = (t.previousElementSibling && t.previousElementSibling.textContent || '').slice(0, 60);
  out.push({index: i, width: Math.ceil(Math.max(r.width, t.scrollWidth)), room: Math.floor(room),
            right: Math.ceil(r.right), page: page, after: head.trim()});
});
return {tables: out, scroll: document.documentElement.scrollWidth, page: page};
"""


class ChromiumMissing(RuntimeError):
    pass


def chromium_paths() -> tuple[str | None, str | None]:
    binary = next((b for b in CHROMIUM if Path(b).exists()), shutil.which("chromium"))
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                              else None)
    return binary, driver


def measure(index_html: str | Path, width: int = 1280, height: int = 900,
            screenshot: str | Path | None = None) -> dict:
    """Open the report at ``width`` px and measure every table (and the page's scroll width)."""
    try:
        from selenium import webdriver
    except ImportError as exc:
        raise ChromiumMissing("selenium is not installed (pip install selenium)") from exc
    binary, driver_bin = chromium_paths()
    if not binary or not driver_bin:
        raise ChromiumMissing("Chromium and ChromeDriver are not installed: "
                              "apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS + (f"--window-size={width},{height}",):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_bin), options=options)
    try:
        driver.set_window_size(width, height)
        driver.get(Path(index_html).resolve().as_uri())
        result = driver.execute_script(_MEASURE)
        if screenshot:
            full = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, min(int(full) + 100, 12000))
            driver.save_screenshot(str(screenshot))
        return result
    finally:
        driver.quit()


def too_wide(result: dict) -> list[str]:
    """One line per table wider than the room it has, or the page scrolling sideways."""
    problems = [f"table {t['index'] + 1} (after “{t['after']}”) is {t['width']} px wide, "
                f"{t['room']} px fit" for t in result["tables"]
                if t["width"] > t["room"] + 1 or t["right"] > t["page"]]
    if result["scroll"] > result["page"] + 1:
        problems.append(f"the page scrolls sideways: {result['scroll']} px of content in {result['page']} px")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("index", type=Path, help="the report's index.html")
    p.add_argument("--width", type=int, default=1280, help="browser window width in px (default 1280)")
    p.add_argument("--screenshot", type=Path, default=None, help="also save a full-page PNG here")
    args = p.parse_args(argv)
    try:
        result = measure(args.index, args.width, screenshot=args.screenshot)
    except ChromiumMissing as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 2
    problems = too_wide(result)
    for line in problems:
        print(f"too wide at {args.width} px: {line}")
    if not problems:
        print(f"ok: {len(result['tables'])} tables fit the page at {args.width} px")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
