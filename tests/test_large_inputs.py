"""Many passages in the Playground (issue 17, item 3): core scores them all, the page shows the top-k.

The handlers are called as the page calls them: Compare (compare_and_keep) keeps its Comparison in a
Shown, paging reads that Shown without scoring again, the download holds every passage. Then the
minors: a line that is only "+", and the score kind of each model in a cross- vs bi-encoder pair.
"""
import io
import os

import gradio as gr
import pandas as pd
import pytest

from core.app.quota import visitor_bytes
from core.app.workspace import Workspace
from core.errors import RerankError
from core.rerank.model import Reranker
from ui.common import request_workspace
from ui.compare_view import CSV_NAME, TOP_K, Shown
from ui.passage_box import MAX_PASTED, MAX_PASTED_CHARS, parse_passages, pasted_limit
from ui.playground import compare_and_keep, next_page, offer_download, previous_page, rerank_compare, show_top

MANY = 1_500
QUERY = "the model said hello"
DOCS = [f"passage {i}: hello {'world ' * (i % 7)}model {i % 13}" for i in range(MANY)]


def local(root):
    return Workspace(root, root / "models", root / "outputs", downloads_dir=root / "downloads")


@pytest.fixture
def workspace(tmp_path):
    return local(tmp_path)


@pytest.fixture(scope="module")
def scored():
    """Counts Reranker.score_pairs calls (the scorer), passing them through, for the whole module."""
    calls = []
    real = Reranker.score_pairs

    def spy(self, pairs, **options):
        calls.append(len(pairs))
        return real(self, pairs, **options)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Reranker, "score_pairs", spy)
        yield calls


@pytest.fixture(scope="module")
def compared(bert_cls_family, scored, tmp_path_factory):
    """Compare on 1,500 passages, once (scoring them takes seconds on a busy box): (the five outputs, the Shown
    kept for the session)."""
    *outputs, shown = compare_and_keep(str(bert_cls_family[0]), str(bert_cls_family[1]), QUERY, "\n".join(DOCS),
                                       None, "cpu", False, local(tmp_path_factory.mktemp("many")), Shown())
    return outputs, shown


def test_1500_passages_are_all_scored_and_the_table_shows_the_top_20(compared, scored):
    (status, styled, chart, metrics, loaded), shown = compared
    assert scored[:2] == [MANY, MANY]  # every passage, once per model
    assert sorted(row.doc for row in shown.result.queries[0].rows) == sorted(DOCS)
    table = styled.data
    assert len(table) == TOP_K == 20
    assert list(table["B rank"]) == list(range(1, 21))
    best = sorted(shown.result.queries[0].rows, key=lambda r: r.ranks[1])[:20]
    assert list(table["passage"]) == [row.doc for row in best]


def test_paging_shows_rows_21_to_40_without_scoring_again(compared, scored):
    _, shown = compared
    calls = len(scored)
    second, styled, chart, pager = next_page(shown)
    assert list(styled.data["B rank"]) == list(range(21, 41))
    assert pager == f"Passages 21–40 of {MANY:,} · page 2 of 75"
    back, styled, _, _ = previous_page(second)
    assert back.page == 1 and list(styled.data["B rank"]) == list(range(1, 21))
    assert previous_page(back)[0].page == 1  # no page 0
    top, styled, chart, pager = show_top(second, 50)
    assert top.page == 1 and len(styled.data) == 50 and pager.endswith("page 1 of 30")
    last = Shown(shown.result, 20, 75)
    assert next_page(last)[0].page == 75 and len(page_rows(next_page(last))) == 20
    assert len(scored) == calls  # paging read the kept Comparison


def page_rows(turned) -> pd.DataFrame:
    return turned[1].data


@pytest.mark.parametrize("top, page", [(20, 1), (20, 2), (5, 300), (200, 3)])
def test_the_chart_draws_the_shown_rows_on_a_rank_axis_from_1(compared, top, page):
    _, shown = compared
    _, styled, chart, _ = show_top(shown, top) if page == 1 else next_page(Shown(shown.result, top, page - 1))
    low, high = sorted(chart.layout.yaxis.range)
    assert low >= 1 and chart.layout.yaxis.range[1] == 1  # rank 1 at the top, nothing at 0 or below
    assert 0 < len(chart.data) <= min(top, 30)
    shown_ranks = {int(r) for r in styled.data["B rank"]}
    assert {trace.y[1] for trace in chart.data} <= shown_ranks
    assert high >= max(max(trace.y) for trace in chart.data)  # every line inside the axis
    assert chart.layout.height <= 720


def test_the_csv_holds_every_passage_with_the_comparisons_scores(compared, workspace):
    _, shown = compared
    pager, download = offer_download(shown, workspace)
    assert pager == f"Passages 1–20 of {MANY:,} · page 1 of 75" and download.visible
    with open(request_workspace(workspace, None).downloads_dir / CSV_NAME, encoding="utf-8") as file:
        frame = pd.read_csv(io.StringIO(file.read()), keep_default_na=False)
    assert len(frame) == MANY
    rows = {row.doc: row for row in shown.result.queries[0].rows}
    for _, line in frame.iterrows():
        row = rows[line["passage"]]
        assert (line["A score"], line["B score"]) == tuple(row.scores)  # exact, not rounded
        assert (line["A rank"], line["B rank"], line["rank change"]) == (*row.ranks, row.rank_change)
        assert line["Δ score"] == row.delta


def test_hosted_the_csv_counts_in_the_visitors_cap(compared, tmp_path):
    _, shown = compared
    hosted = Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs", hosted=True, max_output_bytes=10**9,
                       downloads_dir=tmp_path / "downloads")
    visitor = request_workspace(hosted, None)
    offer_download(shown, hosted)
    size = os.path.getsize(visitor.downloads_dir / CSV_NAME)
    assert visitor_bytes(visitor) == size > 0
    full = Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs", hosted=True, max_output_bytes=size // 2,
                     downloads_dir=tmp_path / "downloads")
    with pytest.warns(UserWarning, match="not enough room in this workspace.*the comparison's CSV"):
        _, refused = offer_download(shown, full)
    assert refused.visible is False and visitor_bytes(visitor) == 0  # the old one went, no new one


@pytest.mark.parametrize("text, message", [
    ("\n".join(["p"] * (MAX_PASTED + 1)), f"{MAX_PASTED + 1:,} passages pasted; the box takes at most {MAX_PASTED:,}"),
    ("x" * (MAX_PASTED_CHARS + 1), f"holds {MAX_PASTED_CHARS + 1:,} characters; it takes at most"),
])
def test_too_much_pasted_text_is_one_line_before_any_scoring(bert_cls_family, workspace, scored, text, message):
    calls = len(scored)
    with pytest.raises(gr.Error, match=message) as error:
        rerank_compare(str(bert_cls_family[0]), str(bert_cls_family[1]), QUERY, text, None, "cpu", False, workspace)
    assert "\n" not in str(error.value) and len(scored) == calls


def test_hosted_the_paste_limit_is_the_pairs_cap():
    hosted = Workspace(".", "models", "outputs", hosted=True, max_pairs=3_000)
    assert pasted_limit(hosted) == 1_500  # two models score each passage
    with pytest.raises(RerankError, match="1,501 passages pasted; the box takes at most 1,500"):
        parse_passages("q", "\n".join(["p"] * 1_501), limit=pasted_limit(hosted))


def test_a_line_that_is_only_a_plus_is_refused_by_its_line_number(bert_cls_family, workspace):
    with pytest.raises(RerankError, match=r"passage line 3 is only '\+'"):
        parse_passages("q", "+ good\n\n +  \nother")
    with pytest.raises(gr.Error, match="is only '\\+'"):
        rerank_compare(str(bert_cls_family[0]), str(bert_cls_family[1]), "q", "a\n+", None, "cpu", False, workspace)
    [item] = parse_passages("q", "+ + twice")
    assert item.docs == ["+ twice"] and item.labels == [1]


@pytest.mark.parametrize("normalize, labels", [(False, ["logit", "cosine"]), (True, ["sigmoid(logit)", "cosine"])])
def test_a_cross_vs_bi_encoder_pair_labels_each_models_scores(bert_cls_family, bert_st_family, workspace, normalize,
                                                              labels):
    *outputs, shown = compare_and_keep(str(bert_cls_family[0]), str(bert_st_family[0]), QUERY, "a\nhello world",
                                       None, "cpu", normalize, workspace, Shown())
    status = outputs[0]
    assert shown.result.score_labels == labels
    assert f"Scores: A **{labels[0]}**, B **cosine**" in status and "Scores are" not in status
    assert "different scales" in status
