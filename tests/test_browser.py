"""The app in a real browser: headless Debian Chromium driven by Playwright, clicking as a person would.

One visit builds a Task Arithmetic merge of a tiny generated cross-encoder family by clicking
(method, base, model rows, a slider, device, output name), checks and runs it, watches the
progress finish and the memory gauge pick up the job, then compares base and merge in the
Playground and reads the table back from the page. Another shows that bad input ends as a
one-line message on the page, never a traceback.

Full-page screenshots land in tests/artifacts/ (ignored by git) for a person to look at.
Chromium must be /usr/bin/chromium (.ci/run installs Debian's); without it the tests skip,
except under CI, where they fail.
"""
import os
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from core.rerank.model import load_reranker
from tests.app_server import launched, local_workspace
from tests.model_factory import build_family

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
OUTPUT = "browser-merge"
QUERY = "the model said hello"
PASSAGES = ["hello world", "the model said hello to the world", "a good day to make a new model"]
FADED_IN = "e => { for (let n = e; n; n = n.parentElement) if (getComputedStyle(n).opacity !== '1') return false;" \
           " return true; }"
SCROLLED_TO_END = "e => e.scrollTop + e.clientHeight >= e.scrollHeight - 2"
WAIT_MS = 60_000  # the longest any one step may take (a merge, a first model load) on a busy 2-core box

# Under CI=true these skips fail the run (tests/reference_skips.py).
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (.ci/run installs Debian's chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")
from playwright import sync_api  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A base cross-encoder and three fine-tunes, in the workspace's models/ so the pickers list them."""
    root = tmp_path_factory.mktemp("browser").resolve()
    return root, build_family(root / "models", "bert-cls", n_models=4)


@pytest.fixture(scope="module")
def app(family):
    root, _ = family
    with launched(local_workspace(root)) as (blocks, _client):
        yield blocks.local_url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, app):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.goto(app)
    page.get_by_role("button", name="+ Add a model").wait_for()  # the model rows are drawn on load
    page.locator("#gauge-plot .main-svg").first.wait_for()  # plotly has drawn the gauge
    yield page
    page.close()


def test_merge_by_clicking_then_compare_in_the_playground(page, family):
    root, (base, first, second, third) = family
    expect = sync_api.expect
    shot(page, "1-loaded")
    gauge_before = page.locator("#gauge-summary").inner_text()
    assert "Process" in gauge_before and OUTPUT not in gauge_before

    choose(page, page.locator("#merge-method"), "Task Arithmetic")
    expect(page.locator("#base-model")).to_be_visible()
    choose(page, page.locator("#base-model"), "models/bert-cls-0")
    choose(page, page.get_by_label("Model 1", exact=True), "models/bert-cls-1")
    choose(page, page.get_by_label("Model 2", exact=True), "models/bert-cls-2")
    page.get_by_role("button", name="+ Add a model").click()
    choose(page, page.get_by_label("Model 3", exact=True), "models/bert-cls-3")
    drag_slider(page.locator(".model-row").nth(1).locator("input[type=range]"), to=0.8)
    choose(page, page.locator("#merge-device"), "CPU")
    page.locator("#output-name input, #output-name textarea").fill(OUTPUT)
    recipe = page.locator("#recipe-yaml .cm-content")
    expect(recipe).to_contain_text("task_arithmetic")
    expect(recipe).to_contain_text("bert-cls-3")
    weights = [float(page.locator(".model-row").nth(i).locator("input[type=number]").input_value()) for i in range(3)]
    assert weights[1] != weights[0]  # the dragged slider moved off the starting value
    expect(page.get_by_text("✓ The recipe is complete")).to_be_visible()

    page.get_by_role("button", name="Check", exact=True).click()
    status = page.locator("#merge-status")
    expect(status).to_contain_text("Ready to merge")
    expect(status).to_contain_text("Task Arithmetic over")
    shot(page, "2-form-filled")

    page.get_by_role("button", name="Merge", exact=True).click()
    expect(status).to_contain_text("✓ Merged", timeout=WAIT_MS)
    expect(page.locator("#output-folder input, #output-folder textarea")).to_have_value(str(root / "outputs" / OUTPUT))
    expect(page.locator("#gauge-summary")).to_contain_text(f'"merge {OUTPUT}": peak')
    expect(page.locator("#gauge-plot")).to_contain_text(f"merge {OUTPUT} · done in")
    log = page.locator(".log textarea")
    expect(log).to_have_value(re.compile(r"\n(\d+)/\1 [^\n]*\ndone$"))  # last step = total, then "done"
    page.wait_for_function(SCROLLED_TO_END, arg=log.element_handle(), timeout=5_000)  # the log shows its end
    shot(page, "3-merged")
    assert_task_arithmetic(root / "outputs" / OUTPUT, [base, first, second, third], weights)

    page.get_by_role("tab", name="Playground").click()
    page.get_by_role("button", name="Refresh model lists").click()
    choose(page, page.locator("#model-a"), "models/bert-cls-0")
    choose(page, page.locator("#model-b"), f"outputs/{OUTPUT} (earlier merge)")
    rows = compare_in_playground(page, QUERY, PASSAGES, "4-playground")

    assert sorted(row["passage"] for row in rows) == sorted(PASSAGES)
    for column, model in (("A score", base), ("B score", root / "outputs" / OUTPUT)):
        expected = dict(zip(PASSAGES, load_reranker(str(model)).score(QUERY, PASSAGES)))
        for row in rows:
            assert float(row[column]) == pytest.approx(expected[row["passage"]], abs=1e-4)
    assert [int(row["B rank"]) for row in rows] == [1, 2, 3]  # sorted by B's rank


def test_bad_input_shows_a_message_not_a_traceback(page):
    missing = "/nowhere/no-such-model"
    choose(page, page.get_by_label("Model 1", exact=True), missing, typed=True)
    choose(page, page.get_by_label("Model 2", exact=True), "models/bert-cls-1")
    page.get_by_role("button", name="Check", exact=True).click()
    status = page.locator("#merge-status")
    sync_api.expect(status).to_contain_text("✗ Not ready:")
    assert missing in status.inner_text()

    page.get_by_role("tab", name="Playground").click()
    choose(page, page.locator("#model-b"), missing, typed=True)
    page.get_by_label("Query", exact=True).fill(QUERY)
    page.get_by_label("Passages, one per line (+ marks a relevant one)").fill("\n".join(PASSAGES))
    page.get_by_role("button", name="Compare", exact=True).click()
    toast = page.locator(".toast-body").filter(has_text=missing)
    sync_api.expect(toast).to_be_visible()
    message = [line for line in toast.inner_text().splitlines() if line.strip() not in ("", "Error", "×")]
    page.wait_for_function(FADED_IN, arg=toast.element_handle(), timeout=5_000)  # for the screenshot
    shot(page, "5-error")
    text = page.locator("body").inner_text()
    assert "Traceback" not in text and 'File "' not in text
    assert len(message) == 1  # besides the toast's title and close button: one line


# ---- helpers ------------------------------------------------------------------------------

def choose(page, box, option: str, *, typed: bool = False) -> None:
    """Pick `option` in a gradio Dropdown (its container or its input) by clicking it in the list,
    or type it (typed=True) for a value the list does not hold; then wait for the box to show it."""
    field = box if box.evaluate("e => e.tagName") == "INPUT" else box.locator("input").first
    field.click()
    if typed:
        field.fill(option)
        field.press("Enter")
    else:
        options = page.locator(f"#{field.get_attribute('aria-controls')}")  # this box's own list
        options.get_by_role("option", name=option, exact=True).click()
    sync_api.expect(field).to_have_value(option)
    page.keyboard.press("Escape")


def drag_slider(track, *, to: float) -> None:
    """Press on the slider's track at fraction `to` of its width and let go (the release event)."""
    box = track.bounding_box()
    x, y = box["x"] + to * box["width"], box["y"] + box["height"] / 2
    track.page.mouse.click(x, y)


def compare_in_playground(page, query: str, passages: list[str], name: str) -> list[dict]:
    """Type a query and passages into the Playground, press Compare, and read the table once it shows logits."""
    page.get_by_label("Query", exact=True).fill(query)
    page.get_by_label("Passages, one per line (+ marks a relevant one)").fill("\n".join(passages))
    page.get_by_role("button", name="Compare", exact=True).click()
    sync_api.expect(page.locator("#compare-status")).to_contain_text("Scores are logit")
    rows = table_rows(page.locator("#compare-table"))
    shot(page, name)
    return rows


def table_rows(table) -> list[dict]:
    """A gradio Dataframe's rows as dicts keyed by its column titles, read from its grid in the DOM."""
    cells = table.locator("[role=row][data-index]")
    sync_api.expect(cells.first).to_be_visible()
    headers = [th.get_attribute("title") for th in table.locator("th[role=columnheader]").all()]
    rows = [[cell.inner_text().strip() for cell in row.locator("[role=gridcell]").all()] for row in cells.all()]
    return [dict(zip(headers, row)) for row in rows]


def assert_task_arithmetic(out: Path, folders: list[Path], weights: list[float]) -> None:
    """Every tensor: base + Σ w_i (model_i − base), lambda 1, no normalisation (Ilharco et al., 2023)."""
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    merged = load_file(out / "model.safetensors")
    base, *tuned = (load_file(next(folder.glob("*.safetensors"))) for folder in folders)
    assert set(merged) == set(base)
    for name, tensor in merged.items():
        expected = base[name] + sum(w * (t[name] - base[name]) for w, t in zip(weights, tuned))
        assert (tensor - expected).abs().max() < 1e-5, name


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)
