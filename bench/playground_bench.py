"""How long the Playground takes with many passages, in a real browser (issue 17, item 3).

    python3 bench/playground_bench.py                  # 300 and 1,500 passages
    python3 bench/playground_bench.py --sizes 20 300 1500 --limit 60

Builds a tiny cross-encoder family (tests/model_factory.py) in a temp folder, launches the app on
it (a copy of a fine-tune stands as the latest merge, so the pickers default to the pair), opens the Playground in headless /usr/bin/chromium (Playwright) and, per size: pastes the
passages into the box ("paste s": a clipboard paste event, until the box holds the text), clicks
Compare and waits until the table shows its rows and the chart is drawn ("compare → table s": scoring included; the tiny
models score 1,500 pairs in well under a second, so the rest is the page), then reads the page's
height. A step that takes longer than --limit seconds is shown as "> limit" and ends that size.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright import sync_api  # noqa: E402

from tests.app_server import launched, local_workspace  # noqa: E402
from tests.model_factory import build_family  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu"]
BOX = "Passages, one per line (+ marks a relevant one)"
# A paste as the browser delivers it: the text lands in the box and one input event fires.
PASTE = ("([box, text]) => { box.focus(); const data = new DataTransfer(); data.setData('text/plain', text);"
         " box.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true}));"
         " if (box.value !== text) { box.value = text; box.dispatchEvent(new Event('input', {bubbles: true})); } }")


def passages(n: int) -> str:
    return "\n".join(f"passage {i}: the model said hello to the world number {i}" for i in range(n))


def measure(page, n: int, limit_ms: int) -> list[str]:
    """[passages, paste s, compare → table s, page height px] for n passages."""
    row = [f"{n:,}"]
    page.get_by_label("Query", exact=True).fill("the model said hello")
    box = page.get_by_label(BOX).element_handle()
    text = passages(n)
    try:
        start = time.perf_counter()
        page.evaluate(PASTE, [box, text])
        page.wait_for_function("([box, n]) => box.value.length === n", arg=[box, len(text)], timeout=limit_ms)
        row.append(f"{time.perf_counter() - start:.2f}")
        start = time.perf_counter()
        page.get_by_role("button", name="Compare", exact=True).click()
        page.wait_for_function("() => document.querySelector('#compare-status')?.innerText.includes('Scores')"
                               " && document.querySelectorAll('#compare-table tbody tr').length > 0"
                               " && document.querySelector('#compare-chart .main-svg')",
                               timeout=limit_ms)
        row.append(f"{time.perf_counter() - start:.2f}")
    except sync_api.TimeoutError:
        return row + [f"> {limit_ms / 1000:g}"] * (3 - len(row)) + ["—"]
    row.append(f"{page.evaluate('document.documentElement.scrollHeight'):,}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 1500])
    parser.add_argument("--limit", type=float, default=60, help="seconds one step may take")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        base, tuned = build_family(root / "models", "bert-cls", n_models=2)
        merge = root / "outputs" / "bench-merge"  # the pickers default to (base of the latest merge, that merge)
        shutil.copytree(tuned, merge)
        (merge / "mergekit_config.yml").write_text(f"base_model: {base}\nmodels:\n  - model: {tuned}\n")
        with launched(local_workspace(root)) as (blocks, _), sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            rows = []
            for n in args.sizes:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(blocks.local_url)
                page.get_by_role("tab", name="Playground").click()
                rows.append(measure(page, n, int(args.limit * 1000)))
                page.close()
            browser.close()
    header = ["passages", "paste s", "compare → table s", "page height px"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
