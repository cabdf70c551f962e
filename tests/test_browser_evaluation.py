"""The Playground's "Is it real?" section in a real browser (Chromium + Playwright, driven as tests/test_browser.py):
graded passages typed, the button pressed, the numbers read back from the page and checked against
core.rerank.evaluation run here on the same models and passages."""
from core.rerank.compare import QueryItem
from core.rerank.evaluation import evaluate
from core.rerank.model import load_reranker
from tests.test_browser import app, browser, choose, family, page, shot, sync_api, table_rows  # noqa: F401

QUERY = "the model said hello"
DOCS = ["hello world", "the model said hello to the world", "a good day to make a new model", "no", "the world"]
GRADES = [0, 2, 1, 0, 3]


def test_the_evaluation_numbers_on_the_page_are_cores(page, family):
    root, (base, first, *_) = family
    page.get_by_role("tab", name="Playground").click()
    choose(page, page.locator("#model-a"), "models/bert-cls-0")
    choose(page, page.locator("#model-b"), "models/bert-cls-1")
    page.get_by_label("Query", exact=True).fill(QUERY)
    page.get_by_label("Passages, one per line (+ marks a relevant one)").fill(
        "\n".join((f"+{grade} " if grade else "") + doc for doc, grade in zip(DOCS, GRADES)))
    page.get_by_text("Is it real? Significance, score shift, cost").click()
    page.locator("#eval-run").click()
    expected = evaluate([load_reranker(str(base)), load_reranker(str(first))], [QueryItem(QUERY, DOCS, GRADES)])
    sync_api.expect(page.locator("#eval-summary")).to_contain_text(expected.verdicts["nDCG@10"])
    rows = {row["metric"]: row for row in table_rows(page.locator("#eval-metrics"))}
    assert float(rows["nDCG@10"]["first stage"]) == round(expected.baseline["nDCG@10"], 4)
    assert [float(rows["nDCG@10"][m]) for m in ("A", "B")] == [round(v, 4) for v in expected.metrics["nDCG@10"]]
    shift = expected.shift
    at = {row["model"]: row for row in table_rows(page.locator("#eval-threshold-table"))}
    assert float(at["A"]["threshold"]) == round(shift.threshold, 4)
    assert [float(at[m]["recall"]) for m in ("A", "B")] == [round(s.recall, 4) for s in shift.at_threshold]
    page.locator("#eval-histogram .main-svg").first.wait_for()  # plotly drew the distributions
    shot(page, "evaluation")
