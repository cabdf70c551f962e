"""The loop the app exists for, in a real browser (issue 17): the demo models are there, merge general-ce
with cooking-ce from the Merge tab as it starts, go to the Playground, and it already compares the merge's
base with the merge (nobody picks or refreshes anything), and the numbers differ.

The demo models are tiny generated cross-encoders placed where the demo build saves them (models/demo/<name>),
so the app believes the demo is built; training the real demo takes minutes. Headless Debian Chromium via
Playwright, as tests/test_browser.py; screenshots in tests/artifacts/.
"""
import shutil

import pytest

from core.demo.build import DEMO_MODELS, demo_folder
from tests.app_server import launched, local_workspace
from tests.model_factory import build_family
from tests.test_browser import ARGS, CHROMIUM, WAIT_MS, compare_in_playground, sync_api  # skips here too without Chromium

OUTPUT = "loop-merge"
QUERY = "how long do I boil an egg"
PASSAGES = ["boil the egg for nine minutes", "a compiler turns code into machine code", "eggs are laid by hens"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace whose models/demo/ holds a stand-in for every demo model (distinct tiny cross-encoders)."""
    root = tmp_path_factory.mktemp("loop").resolve()
    ws = local_workspace(root)
    made = build_family(root / "made", "bert-cls", n_models=len(DEMO_MODELS), noise=0.3)
    for spec, folder in zip(DEMO_MODELS, made):
        shutil.move(str(folder), demo_folder(ws.models_dir, spec.name))
    return ws


@pytest.fixture(scope="module")
def page(workspace):
    with launched(workspace) as (blocks, _), sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        page.goto(blocks.local_url)
        page.get_by_role("button", name="+ Add a model").wait_for()  # the model rows are drawn on load
        yield page
        browser.close()


def test_merge_then_the_playground_compares_its_base_with_it(page, workspace):
    expect = sync_api.expect
    expect(page.get_by_text("No demo models yet")).to_have_count(0)  # built: no pitch above the tabs
    expect(page.get_by_label("Model 1", exact=True)).to_have_value("models/demo/general-ce")
    expect(page.get_by_label("Model 2", exact=True)).to_have_value("models/demo/cooking-ce")
    page.locator("#output-name input, #output-name textarea").fill(OUTPUT)
    page.get_by_role("button", name="Merge", exact=True).click()
    status = page.locator("#merge-status")
    expect(status).to_contain_text("✓ Merged", timeout=WAIT_MS)
    page.get_by_role("button", name="Stop", exact=True).filter(visible=True).click()  # nothing runs: "✓ Merged" stays
    expect(page.locator("#stop-note")).to_contain_text("Nothing is running.")
    expect(status).to_contain_text("✓ Merged")

    page.get_by_role("tab", name="Playground").click()
    expect(page.locator("#model-a input")).to_have_value("models/demo/general-ce")
    expect(page.locator("#model-b input")).to_have_value(f"outputs/{OUTPUT} (earlier merge)")
    rows = compare_in_playground(page, QUERY, PASSAGES, "loop-playground")
    assert sorted(row["passage"] for row in rows) == sorted(PASSAGES)
    assert any(float(row["Δ score"]) != 0 for row in rows)
    assert "same model" not in page.locator("#compare-status").inner_text()
