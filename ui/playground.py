"""The "Playground" tab: score the same passages with two models and see what changed.

    build_playground(workspace)      # inside gr.Blocks; the layout puts it in its own tab

Model A defaults to the base of the latest merge and model B to that merge (ui.common.default_pair,
re-read on page load, after each merge and after the demo build), so the page answers "what did my
merge do?" right after merging; comparing a model with itself says so. Passages are typed one per line (a
leading "+" marks a relevant one, which turns on MRR / nDCG; "+2 " a grade 0–3: ui.passage_box) or uploaded as
JSONL with several queries. "Significance, score shift, cost" (ui.evaluation_view) evaluates the same
labelled input: the paired test in words, per-query wins / ties / losses, the first-stage order,
score histograms, precision / recall at a threshold with B recalibrated, cost, and a JSON + HTML export. The scoring runs in core.rerank.model (models stay loaded between runs); this
file turns its Comparison into a status line and a metrics table; ui.compare_view pages the table
and its chart (top 20 by default) and writes the whole result as a CSV. The last Comparison stays
in the session's gr.State, so paging never scores again. Pasted text has a visible limit
(pasted_limit; hosted, the pairs cap of the workspace), past which Compare says so in one line
instead of freezing the tab. The public API name is `rerank_compare`; unloading and refreshing are UI-only (private) events. Hosted, the
"Loaded:" line and "Unload models" are the session's own (ui.common.cache_owner): a
visitor never sees or frees another's models, and Hub ids are fetched with their own access.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from core import ASSETS
from core.app.models import same_model
from core.app.paths import check_model_ref
from core.app.quota import check_pairs
from core.app.workspace import Workspace
from core.errors import MergeDeskError
from core.monitor import MONITOR
from core.rerank.compare import Comparison, QueryItem, compare, mean_or_nan, read_queries
from core.rerank.cost import TIMED_PAIRS
from core.rerank.model import load_reranker, loaded_rerankers, unload
from ui import evaluation_view
from ui.common import (PRIVATE, QUEUE, cache_owner, device_choices, first_view, hub_token, job_label, refresh_pair,
                       request_workspace)
from ui.compare_view import MAX_TOP_K, TOP_K, Shown, page_view, pager_line, write_csv
from ui.passage_box import COUNT_JS, MAX_PASTED_CHARS, count_line, parse_passages, pasted_limit

EXAMPLES = ASSETS / "playground"
# Shown before the first run too (an empty gr.Dataframe would head its columns 1, 2, 3).
TABLE_COLUMNS = ["passage", "A score", "A rank", "B score", "B rank", "Δ score", "rank change"]
NOTHING_LOADED = "No models loaded."
METRIC_COLUMNS = ["metric", "A", "B", "B − A"]
SAME_MODEL = "**⚠ A and B are the same model: every Δ is 0.** Pick your merge as B (or another model as A).\n\n"
HELP = """Compare how two models rank the same passages. **A** is the reference (by default the base of
your latest merge), **B** the model under test (by default that merge). One passage per line; start a line
with `+` to mark it relevant and get MRR and nDCG, or with `+2 ` (a grade 0–3: nDCG's gain, MAP and recall
count grade > 0). Or upload a JSONL file:
`{"query": "…", "docs": ["…"], "labels": [1, 0]}` or `{"query": "…", "pos": ["…"], "neg": ["…"]}` per line."""


def build_playground(workspace: Workspace) -> tuple:
    """Add the playground's components and wiring to the current gr.Blocks context.
    Returns (handler, inputs, outputs) that re-fills the pickers (ui.common.follow_workspace)."""
    ws = gr.State(workspace)
    gr.Markdown(HELP)
    choices, first, second = first_view(workspace)
    with gr.Row():
        model_a = gr.Dropdown(choices, value=first, label="Model A (reference)", allow_custom_value=True, scale=3,
                              elem_id="model-a")
        model_b = gr.Dropdown(choices, value=second, label="Model B (under test)", allow_custom_value=True, scale=3,
                              elem_id="model-b")
        device = gr.Dropdown(device_choices(), value="cpu", label="Device", scale=1)
        normalize = gr.Checkbox(False, label="Sigmoid scores", info="map logits to 0–1 (cosine stays as is)", scale=1)
    with gr.Row():
        with gr.Column(scale=3):
            query = gr.Textbox(label="Query", placeholder="how do I merge two fine-tuned models?")
            passages = gr.Textbox(label="Passages, one per line (+ marks a relevant one)", lines=6, max_lines=12)
            counter = gr.Markdown(count_line(workspace), elem_id="passage-count")
        queries_file = gr.File(label="…or a JSONL file of queries", file_types=[".jsonl", ".json"], scale=1)
    with gr.Row():
        run = gr.Button("Compare", variant="primary", scale=0)
        refresh = gr.Button("Refresh model lists", scale=0, min_width=260)
    status = gr.Markdown(elem_id="compare-status")
    shown = gr.State(Shown())  # per session: the last Comparison and the page on view
    with gr.Row():
        top_k = gr.Number(TOP_K, label="Show top", precision=0, minimum=1, maximum=MAX_TOP_K, scale=0, min_width=120)
        previous = gr.Button("◀ Previous", size="sm", scale=0)
        pager = gr.Markdown(elem_id="compare-pager")
        following = gr.Button("Next ▶", size="sm", scale=0)
        download = gr.File(label="Whole result (CSV)", visible=False, scale=1)
    table = gr.Dataframe(label="Passages, as A and B rank them", interactive=False, wrap=True,
                         headers=TABLE_COLUMNS, elem_id="compare-table")
    with gr.Row():
        chart = gr.Plot(label="Rank of each shown passage under A and B", elem_id="compare-chart")
        metrics = gr.Dataframe(label="Metrics (needs relevant passages)", interactive=False, headers=METRIC_COLUMNS)
    with gr.Accordion("Is it real? Significance, score shift, cost (labelled passages)", open=False):
        with gr.Row():
            threshold = gr.Textbox("", label="Score threshold", info="empty: A's median relevant-passage score",
                                   scale=0, min_width=220, elem_id="eval-threshold")  # a gr.Number sends 0 when empty
            judge = gr.Button("Significance, score shift, cost", scale=0, elem_id="eval-run")
            report = gr.File(label="Export: JSON + HTML report", file_count="multiple", scale=1)
        summary = gr.Markdown(elem_id="eval-summary")
        judged = gr.Dataframe(label="Metrics: first stage (input order), A, B, paired test of B − A",
                              interactive=False, elem_id="eval-metrics")
        per_query = gr.Dataframe(label="Per query (nDCG@10)", interactive=False, elem_id="eval-per-query")
        histogram = gr.Plot(label="Score distributions", elem_id="eval-histogram")
        with gr.Row():
            at_threshold = gr.Dataframe(label="At the threshold", interactive=False, elem_id="eval-threshold-table")
            cost = gr.Dataframe(label="Cost", interactive=False, elem_id="eval-cost")
    with gr.Row():
        loaded = gr.Markdown(NOTHING_LOADED if workspace.hosted else loaded_markdown(None))  # a new visitor has none
        unload_button = gr.Button("Unload models", size="sm", scale=0)
    _examples(query, passages)

    passages.change(None, passages, counter, js=COUNT_JS.replace("LIMIT", f"{pasted_limit(workspace):,}")
                    .replace("CHARS", f"{MAX_PASTED_CHARS:,}"), **PRIVATE)
    run.click(compare_and_keep, [model_a, model_b, query, passages, queries_file, device, normalize, ws, shown],
              [status, table, chart, metrics, loaded, shown], api_name="rerank_compare", concurrency_id=QUEUE,
              concurrency_limit=1, show_progress_on=status,  # one spinner (or "Error") on the page, not five
              ).success(offer_download, [shown, ws], [pager, download], **PRIVATE)
    paging = [shown, table, chart, pager]
    top_k.change(show_top, [shown, top_k], paging, **PRIVATE)
    previous.click(previous_page, shown, paging, **PRIVATE)
    following.click(next_page, shown, paging, **PRIVATE)
    judge.click(evaluate_pasted, [model_a, model_b, query, passages, queries_file, device, normalize, threshold, ws],
                [summary, judged, per_query, histogram, at_threshold, cost, report], api_name="rerank_evaluate",
                concurrency_id=QUEUE, concurrency_limit=1, show_progress_on=summary)
    refresh.click(refresh_pair, ws, [model_a, model_b], **PRIVATE)
    unload_button.click(unload_all, ws, loaded, **PRIVATE)
    return refresh_pair, ws, [model_a, model_b]


def rerank_compare(model_a: str, model_b: str, query: str, passages: str, queries_file: str | None,
                   device: str, normalize: bool, workspace: Workspace, request: gr.Request | None = None,
                   oauth_token: gr.OAuthToken | None = None):
    """Score with A and B; return (status, table of the top 20, rank chart of them, metrics table,
    loaded-models line). The /rerank_compare API gives these five (compare_and_keep is its handler).

    Any problem (unknown model, empty query, bad JSONL, missing device, too much pasted text) is one gr.Error line.
    """
    return compare_and_keep(model_a, model_b, query, passages, queries_file, device, normalize, workspace, Shown(),
                            request, oauth_token)[:5]


def compare_and_keep(model_a: str, model_b: str, query: str, passages: str, queries_file: str | None,
                     device: str, normalize: bool, workspace: Workspace, shown: Shown,
                     request: gr.Request | None = None, oauth_token: gr.OAuthToken | None = None):
    """The Compare button: rerank_compare's five outputs, then the new Shown (its page 1) for the session's
    gr.State: a gr.State is no API output, so the endpoint still returns five."""
    ws = request_workspace(workspace, request)
    owner = cache_owner(workspace, request)
    try:
        items = pasted_items(query, passages, queries_file, ws)
        refs = checked_refs(items, model_a, model_b, ws, "comparison")
        with MONITOR.job(job_label(ws, "compare", f"{Path(refs[0]).name} / {Path(refs[1]).name}")):
            models = [load_reranker(ref, device=device, token=hub_token(workspace, oauth_token), owner=owner)
                      for ref in refs]
            result = compare(models, items, normalize=bool(normalize))
    except MergeDeskError as error:
        raise gr.Error(str(error), print_exception=False) from None
    kept = Shown(result, (shown or Shown()).top)
    same = SAME_MODEL if same_model(*refs) else ""
    return (same + status_markdown(result, models), *page_view(kept), metrics_table(result), loaded_markdown(owner),
            kept)


def evaluate_pasted(model_a: str, model_b: str, query: str, passages: str, queries_file: str | None, device: str,
                    normalize: bool, threshold: str | float | None, workspace: Workspace,
                    request: gr.Request | None = None,
                    oauth_token: gr.OAuthToken | None = None):
    """The /rerank_evaluate API: ui.evaluation_view's seven outputs for the same input as Compare."""
    ws = request_workspace(workspace, request)
    try:
        items = pasted_items(query, passages, queries_file, ws)
        cut = evaluation_view.parse_threshold(threshold)
        refs = checked_refs(items, model_a, model_b, ws, "evaluation", timed=True)
    except MergeDeskError as error:
        raise gr.Error(str(error), print_exception=False) from None
    return tuple(evaluation_view.evaluate_items(items, refs, device, normalize, cut, workspace, request, oauth_token))


def checked_refs(items: list[QueryItem], model_a: str, model_b: str, ws: Workspace, job: str, *,
                 timed: bool = False) -> list[str]:
    """A and B as model references the workspace allows, once the pairs cap allows scoring `items` with both
    (timed: and the cost table's timing run, core.rerank.cost, of up to TIMED_PAIRS + 1 more pairs per model)."""
    passages_in_all = sum(len(item.docs) for item in items)
    per_model = passages_in_all + (min(passages_in_all, TIMED_PAIRS) + 1 if timed else 0)
    check_pairs(2 * per_model, ws, job=f"this {job} ({passages_in_all:,} passages × 2 models"
                                       + (", and the cost table's timing run)" if timed else ")"))
    return [check_model_ref(ref, ws) for ref in (model_a, model_b)]


def pasted_items(query: str, passages: str, queries_file: str | None, ws: Workspace) -> list[QueryItem]:
    """The queries of the file when one is given, else the one typed query and its passages."""
    return read_queries(queries_file) if queries_file else parse_passages(query, passages, limit=pasted_limit(ws))


def offer_download(shown: Shown, workspace: Workspace, request: gr.Request | None = None):
    """After Compare: the pager line and the whole result as a CSV (a one-line warning when the hosted cap is full)."""
    try:
        path = write_csv(shown.result, request_workspace(workspace, request))
    except MergeDeskError as error:
        gr.Warning(str(error))
        return pager_line(shown), gr.File(visible=False)
    return pager_line(shown), gr.File(str(path), visible=True)


def show_top(shown: Shown, top: float | None):
    return turned(shown.moved(top=top or TOP_K))


def previous_page(shown: Shown):
    return turned(shown.moved(step=-1))


def next_page(shown: Shown):
    return turned(shown.moved(step=1))


def turned(shown: Shown):
    """(Shown, table, chart, pager line) for another page of the kept result; nothing to draw before Compare."""
    if not shown.result:
        return shown, gr.skip(), gr.skip(), ""
    return shown, *page_view(shown), pager_line(shown)


def status_markdown(result: Comparison, models) -> str:
    labels = result.score_labels
    kinds = f"Scores are **{labels[0]}**" if len(set(labels)) == 1 else \
        f"Scores: A **{labels[0]}**, B **{labels[-1]}**"
    line = f"{kinds}. A: {models[0].describe()} · B: {models[1].describe()}"
    if models[0].kind != models[1].kind:
        line += f"\n\n⚠ A is a {models[0].kind} and B a {models[1].kind}: their scores are on different scales."
    return line


def metrics_table(result: Comparison) -> pd.DataFrame:
    """Metric, A, B, B − A: the labelled metrics, then how much the rankings agree."""
    rows = [{"metric": name, "A": round(a, 4), "B": round(b, 4), "B − A": round(b - a, 4)}
            for name, (a, b) in result.metrics.items()]
    tau = mean_or_nan([q.kendall_tau[0] for q in result.queries])
    overlap = mean_or_nan([q.top_k_overlap[0] for q in result.queries])
    rows.append({"metric": "Kendall tau (A vs B)", "A": None, "B": round(tau, 4), "B − A": None})
    rows.append({"metric": "top-10 overlap", "A": None, "B": round(overlap, 4), "B − A": None})
    return pd.DataFrame(rows)


def loaded_markdown(owner: str | None) -> str:
    """The models `owner` has loaded (None: every loaded model), in one line."""
    models = loaded_rerankers(owner)
    if not models:
        return NOTHING_LOADED
    return "Loaded: " + " · ".join(f"`{Path(m.ref).name}` {m.describe()}" for m in models)


def unload_all(workspace: Workspace, request: gr.Request | None = None) -> str:
    """Unload this session's models (hosted) or all of them (local); a model another session holds stays."""
    owner = cache_owner(workspace, request)
    unload(owner=owner)
    return loaded_markdown(owner)


def _examples(query, passages) -> None:
    """Example queries from assets/playground/examples.jsonl (passages in the same '+' format)."""
    path = EXAMPLES / "examples.jsonl"
    if not path.exists():
        return
    rows = []
    for item in read_queries(path):
        labels = item.labels or [0] * len(item.docs)
        rows.append([item.query, "\n".join(("+ " if label else "") + doc for doc, label in zip(item.docs, labels))])
    gr.Examples(rows, [query, passages], label="Examples")
