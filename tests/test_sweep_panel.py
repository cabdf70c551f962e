"""The Sweep tab's and the "Weights from data" section's handlers, called without a browser;
the sweep figure and its PNG export."""
import json
import os
import struct

import pytest

from core.app.workspace import Workspace
from core.cocktail.sweep import SweepPoint, SweepResult, read_sets, sweep
from core.cocktail.weights import data_weights, read_examples
from core.merge.methods import METHODS
from ui.merge.recipe_form import new_form, shown_value
from ui.merge.weights_panel import fill_weights
from ui.sweep.panel import demo_set_names, parse_alphas, run_sweep, set_files, stop_sweep, use_alpha
from ui.sweep.plot import sweep_figure

QUERIES = [{"query": "the model", "docs": ["hello world", "the model said", "good day"], "labels": [0, 1, 0]},
           {"query": "merge", "pos": ["merge model"], "neg": ["the way", "her", "new year"]}]
EXAMPLES = [{"query": "the model", "pos": ["the model said hello"], "neg": ["hello world", "good day"]},
            {"query": "what time is it", "pos": ["it is time"], "neg": ["the way", "she said no"]}]


@pytest.fixture
def workspace(tmp_path):
    return Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs")


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return str(path)


def test_run_sweep_streams_each_alpha_and_ends_with_the_cores_numbers(bert_cls_family, workspace, tmp_path):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    mine = write_jsonl(tmp_path / "mine.jsonl", QUERIES)
    steps = list(run_sweep(a, b, "linear", "cpu", [], [mine], "0, 0.5, 1", workspace))
    assert len(steps) == 1 + 3 + 1  # starting, one per α, done
    status, figure, table, picker, result = steps[-2]
    assert "3/3" in status and "✓ Swept" in steps[-1][0]
    expected = sweep(a, b, read_sets([(None, mine)]), alphas=[0, 0.5, 1])
    assert result["alphas"] == [0.0, 0.5, 1.0] and result["sets"] == ["mine"]
    assert list(table["mine nDCG@10"]) == [round(v, 4) for v in expected.values("mine", "nDCG@10")]
    assert list(figure.data[1].y) == expected.values("mine", "MRR@10")
    assert [value for _, value in picker.choices] == [0.0, 0.5, 1.0]
    assert "1/3" in steps[1][0] and list(steps[1][2]["α"]) == [0.0]  # the first α shows before the rest run


def test_use_alpha_puts_the_merge_at_alpha_into_the_form():
    result = {"method": "linear", "model_a": "org/base", "model_b": "org/tuned"}
    message, form = use_alpha(result, 0.3)
    weight = METHODS["linear"].param("weight")
    assert form.method == "linear" and [row.model for row in form.rows] == ["org/base", "org/tuned"]
    assert [shown_value(form, row.key, weight) for row in form.rows] == pytest.approx([0.7, 0.3], abs=1e-12)
    assert "α = 0.3" in message
    message, form = use_alpha({**result, "method": "task_arithmetic"}, 1.5)
    assert form.base_model == "org/base" and shown_value(form, form.rows[0].key, weight) == 1.5
    assert use_alpha(None, 0.5) == ("✗ Run a sweep first.", None)
    assert use_alpha(result, None)[1] is None


def test_fill_weights_sets_each_rows_weight_from_the_data(bert_cls_family, workspace, tmp_path):
    refs = [str(f) for f in bert_cls_family]
    examples = write_jsonl(tmp_path / "few.jsonl", EXAMPLES)
    form = new_form("linear", models=tuple(refs))
    message, filled = fill_weights(form, examples, 0.5, "cpu", workspace)
    expected = data_weights(refs, read_examples(examples), tau=0.5)
    weight = METHODS["linear"].param("weight")
    assert [shown_value(filled, row.key, weight) for row in filled.rows] == [round(w, 4) for w in expected.weights]
    assert f"{expected.losses[0]:.4f}" in message and "softmax(−loss / 0.5)" in message


def test_fill_weights_says_what_is_missing(bert_cls_family, workspace, tmp_path):
    examples = write_jsonl(tmp_path / "few.jsonl", EXAMPLES)
    refs = (str(bert_cls_family[0]), str(bert_cls_family[1]))
    assert fill_weights(new_form("linear", models=refs), None, 5, "cpu", workspace) == (
        "✗ Upload a JSONL file of examples first.", None)
    message, form = fill_weights(new_form("slerp", models=refs), examples, 5, "cpu", workspace)
    assert form is None and "has no per-model weights" in message
    message, form = fill_weights(new_form("linear", models=(refs[0], "")), examples, 5, "cpu", workspace)
    assert form is None and "model 2 is not picked yet" in message


def test_sweep_inputs_are_checked_in_one_line(tmp_path, workspace):
    assert parse_alphas("0, 0.25;1") == [0.0, 0.25, 1.0]
    with pytest.raises(Exception, match="write numbers separated by commas"):
        parse_alphas("0, half")
    with pytest.raises(Exception, match="choose a demo set or upload"):
        set_files([], None, workspace)
    assert set(demo_set_names()) >= {"cooking", "general", "software"}
    assert set_files(["cooking"], [str(tmp_path / "eval.jsonl")], workspace)[1] == ("eval", str(tmp_path / "eval.jsonl"))
    assert stop_sweep() == "Nothing is running."


def small_result():
    points = [SweepPoint(alpha, name, {"nDCG@10": value, "MRR@10": value / 2})
              for alpha in (0.0, 0.5, 1.0) for name, value in (("cooking", alpha), ("general", 1 - alpha))]
    return SweepResult("org/general", "org/cooking", "linear", "memory", [0.0, 0.5, 1.0], ["cooking", "general"],
                       points)


def test_the_figure_has_one_curve_per_set_and_metric():
    figure = sweep_figure(small_result())
    assert [(t.name, t.xaxis) for t in figure.data] == [("cooking", "x"), ("cooking", "x2"),
                                                        ("general", "x"), ("general", "x2")]
    assert list(figure.data[2].y) == [1.0, 0.5, 0.0] and list(figure.data[3].y) == [0.5, 0.25, 0.0]
    assert [t.showlegend for t in figure.data] == [True, False, True, False]
    assert SweepResult.from_dict(json.loads(json.dumps(small_result().to_dict()))) == small_result()


@pytest.mark.slow
def test_render_sweep_writes_a_png(tmp_path):
    pytest.importorskip("playwright")
    from docs.render_sweep import CHROMIUM, main

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    source = tmp_path / "sweep.json"
    source.write_text(json.dumps(small_result().to_dict()), encoding="utf-8")
    assert main([str(source), str(tmp_path / "sweep.png"), "--width", "600", "--height", "300"]) == 0
    header = (tmp_path / "sweep.png").read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width >= 2 * 600 * 0.9 and height >= 2 * 300 * 0.9  # 2× device scale, the figure's size


@pytest.mark.slow
def test_clicking_a_point_in_the_browser_puts_its_alpha_into_the_merge_form(bert_cls_family, tmp_path):
    """The plotly click → hidden box → change event path (CLICK_JS), in headless Chromium."""
    pytest.importorskip("playwright")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    from docs.render_sweep import CHROMIUM
    from tests.app_server import launched

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    mine = write_jsonl(tmp_path / "mine.jsonl", QUERIES)
    workspace = Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs")
    with launched(workspace) as (blocks, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_timeout(120_000)  # a loaded 2-core CI machine; the waits are for events, not speed
        page.goto(blocks.local_url)
        page.get_by_role("tab", name="Sweep").click()
        for label, ref in (("Model A (α = 0)", bert_cls_family[0]), ("Model B (α = 1)", bert_cls_family[1])):
            page.get_by_label(label).fill(str(ref))
            page.get_by_label(label).press("Enter")
        page.get_by_label("α values").fill("0, 0.5, 1")
        for name in demo_set_names():
            page.get_by_label(name, exact=True).uncheck()
        with page.expect_response(lambda r: "/gradio_api/upload?" in r.url and r.request.method == "POST") as upload:
            page.locator("input[type=file][multiple]").first.set_input_files(mine)
        assert upload.value.ok, upload.value.status
        # The uploader lists the file as "mine" + ".jsonl" in two spans, named by the cell's aria-label; the
        # text "mine.jsonl" itself is only on the "Uploading…" line, which a quick upload shows too briefly to see.
        listed = page.get_by_role("cell", name="mine.jsonl", exact=True)
        listed.wait_for()
        assert listed.count() == 1
        page.get_by_role("button", name="Run the sweep").click()
        try:
            page.get_by_text("✓ Swept").wait_for()
        except PlaywrightTimeout:  # say what the page showed instead (a toast? a status stuck mid-sweep?)
            texts = page.locator(".toast-body, .prose").all_inner_texts()
            shown = [text for text in texts if "α" in text or "rror" in text]
            raise AssertionError(f"no '✓ Swept' within the timeout; the page shows: {shown}") from None
        point = page.locator("#sweep-plot .scatterlayer .points path.point").nth(2).bounding_box()  # α = 1
        page.mouse.click(point["x"] + point["width"] / 2, point["y"] + point["height"] / 2)
        page.get_by_text("holds the linear merge at α = 1").wait_for()
        page.get_by_role("tab", name="Merge").click()
        recipe = page.locator(".cm-content").first.inner_text()
        browser.close()
    assert "weight: 0.0" in recipe and "weight: 1.0" in recipe and str(bert_cls_family[1]) in recipe

