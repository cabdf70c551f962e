"""Render an α-sweep (JSON from `python -m core sweep --json`) to a PNG for the docs.

    python -m core sweep --model-a A --model-b B --set … --json > sweep.json
    python docs/render_sweep.py sweep.json docs/demo_sweep.png [--width 1100] [--height 420]

The figure is the app's own (ui/sweep/plot.py). plotly has no PNG export without kaleido, so
the figure is written as a self-contained HTML page (plotly.js inlined: no network) and
photographed by headless Chromium through Playwright (Debian's /usr/bin/chromium unless
CHROMIUM says otherwise).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the repo

from core.cocktail.sweep import SweepResult  # noqa: E402
from ui.sweep.plot import sweep_figure  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def render_png(result: SweepResult, out: Path, *, width: int = 1100, height: int = 420) -> Path:
    """Write the sweep's figure to `out` as a PNG of width × height CSS pixels (2× device scale)."""
    from playwright.sync_api import sync_playwright

    figure = sweep_figure(result, height=height)
    figure.update_layout(width=width)
    with tempfile.TemporaryDirectory() as scratch:
        page_file = Path(scratch) / "sweep.html"
        page_file.write_text(figure.to_html(include_plotlyjs=True, full_html=True, config={"staticPlot": True}),
                             encoding="utf-8")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": width + 40, "height": height + 40}, device_scale_factor=2)
                page.goto(page_file.as_uri())
                page.wait_for_selector(".main-svg")
                out.parent.mkdir(parents=True, exist_ok=True)
                page.locator(".plotly-graph-div").screenshot(path=str(out))
            finally:
                browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render `python -m core sweep --json` output to a PNG.")
    parser.add_argument("sweep_json", help="file written by python -m core sweep --json")
    parser.add_argument("out_png", help="PNG to write")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=420)
    args = parser.parse_args(argv)
    result = SweepResult.from_dict(json.loads(Path(args.sweep_json).read_text(encoding="utf-8")))
    print(render_png(result, Path(args.out_png), width=args.width, height=args.height))
    return 0


if __name__ == "__main__":
    sys.exit(main())
