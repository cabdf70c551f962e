"""The export of an evaluation: JSON + self-contained HTML, the Markdown table, the model card's section,
and the SVG charts' marks read back against the numbers they draw."""
import json
import re
from pathlib import Path

import pytest

from core.app.workspace import Workspace
from core.errors import OutputError, RerankError
from core.io.card import add_evaluation
from core.rerank.compare import QueryItem
from core.rerank.evaluation import evaluate
from core.rerank.report import markdown_table, write_report
from core.rerank.svg import deltas_svg, histogram_svg, intervals_svg
from tests.test_graded_metrics import FixedReranker
from ui.evaluation_view import export

ITEMS = [QueryItem("q1", ["a", "b", "c"], [0, 3, 1]), QueryItem("q2", ["d", "e"], [1, 0]),
         QueryItem("q3", ["f", "g"], [2, 0])]
BASE = FixedReranker("base", {"a": 3.0, "b": 2.0, "c": 1.0, "d": 1.0, "e": 0.0, "f": 0.0, "g": 1.0})
MERGED = FixedReranker("merged", {"a": 1.0, "b": 3.0, "c": 2.0, "d": 0.5, "e": 1.5, "f": 1.0, "g": 0.0})


@pytest.fixture(scope="module")
def result():
    return evaluate([BASE, MERGED], ITEMS, resamples=200)


def test_write_report_writes_the_json_and_a_self_contained_page(result, tmp_path):
    json_path, html_path = write_report(result, tmp_path / "eval")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(result.to_dict()))
    page = html_path.read_text()
    assert page.count("<svg") == 4 and "<script" not in page and "src=" not in page
    assert "nDCG uses linear gain" in page and result.verdicts["MRR@10"] in page
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(RerankError, match="folder .* does not exist"):
        write_report(result, tmp_path / "missing" / "eval")


def test_markdown_table_rows_carry_the_test_numbers(result):
    table = markdown_table(result.to_dict())
    test = result.tests["nDCG@10"]
    row = next(line for line in table.splitlines() if line.startswith("| nDCG@10 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{result.baseline['nDCG@10']:.4f}"
    assert cells[2:4] == [f"{v:.4f}" for v in result.metrics["nDCG@10"]]
    assert cells[4] == f"{test.mean_delta:+.4f}" and cells[7] == f"{test.wins} / {test.ties} / {test.losses}"


def test_card_gains_one_evaluation_section_and_keeps_the_rest(result, tmp_path):
    card = tmp_path / "README.md"
    card.write_text("# merged\n\n## Evaluation\n\nold table\n\n## Recipe\n\nthe yaml\n")
    add_evaluation(tmp_path, result.to_dict())
    text = card.read_text()
    assert "old table" not in text and text.count("## Evaluation") == 1 and "| MRR@10 |" in text
    assert text.startswith("# merged\n\n## Evaluation\n") and text.endswith("## Recipe\n\nthe yaml\n")
    with pytest.raises(RerankError, match="cannot add the evaluation"):
        add_evaluation(tmp_path / "none", result.to_dict())


def test_histogram_draws_one_bar_per_non_empty_bin_at_its_height():
    svg = histogram_svg([0.0, 1.0, 2.0, 3.0], {"relevant": [2, 0, 4], "not relevant": [1, 1, 0]}, title="t",
                        marker=1.5)
    heights = [float(h) for h in re.findall(r'height="([\d.]+)" fill="[^"]+" fill-opacity="0.5"><title>', svg)]
    assert len(heights) == 4  # bars only (legend squares carry no <title>): not relevant 1, 1, then relevant 2, 4
    assert heights[0] == heights[1] and heights[3] == pytest.approx(2 * heights[2])  # drawn under, then on top
    assert heights[2] == pytest.approx(2 * heights[0]) and 'stroke-dasharray="4 3"' in svg


def test_deltas_and_intervals_colour_by_sign():
    svg = deltas_svg([0.2, 0.0, -0.1], title="d")
    assert [c for c in re.findall(r'fill="(#[0-9a-f]+)"><title>', svg)] == ["#2b8a3e", "#868e96", "#c92a2a"]
    svg = intervals_svg([("up", 0.1, 0.05, 0.2), ("flat", 0.0, -0.1, 0.1)], title="i")
    assert re.findall(r'<circle [^>]*fill="(#[0-9a-f]+)"', svg) == ["#2b8a3e", "#868e96"]


def test_a_hosted_visitor_can_export_the_report_again_in_the_room_it_already_takes(result, tmp_path):
    """The previous report's two files are replaced by the new ones, so they are not counted against the
    cap (before, the second export of the same report into a cap of 1.5 reports was refused)."""
    def hosted(cap):
        return Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs", hosted=True, max_output_bytes=cap,
                         downloads_dir=tmp_path / "downloads")
    first = export(result, hosted(None))
    size = sum(Path(path).stat().st_size for path in first)
    again = export(result, hosted(size * 3 // 2))
    assert sorted(again) == sorted(first) and sum(Path(path).stat().st_size for path in again) == size
    (tmp_path / "downloads" / "other.zip").write_bytes(b"0" * size)  # other files still count
    with pytest.raises(OutputError, match="not enough room in this workspace"):
        export(result, hosted(size * 3 // 2))
