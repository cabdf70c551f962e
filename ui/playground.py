"""The "Playground" tab: score the same passages with two models and see what changed.

    build_playground(workspace)      # inside gr.Blocks; the layout puts it in its own tab

Model A defaults to the base of the latest merge and model B to that merge (ui.common.default_pair,
re-read on page load, after each merge and after the demo build), so the page answers "what did my
merge do?" right after merging; comparing a model with itself says so. Passages are typed one per line (a
leading "+" marks a relevant one, which turns on MRR / nDCG) or uploaded as JSONL with
several queries. The scoring runs in core.rerank.model (models stay loaded between runs); this
file only turns its Comparison into a table, a chart and a metrics table. The public API
name is `rerank_compare`; unloading and refreshing are UI-only (private) events. Hosted, the
"Loaded:" line and "Unload models" are the session's own (ui.common.cache_owner): a
visitor never sees or frees another's models, and Hub ids are fetched with their own access.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from core import ASSETS
from core.app.models import same_model
from core.app.paths import check_model_ref
from core.app.quota import check_pairs
from core.app.workspace import Workspace
from core.errors import MergeDeskError
from core.monitor import MONITOR
from core.rerank.compare import Comparison, QueryItem, compare, mean_or_nan, read_queries
from core.rerank.model import load_reranker, loaded_rerankers, unload
from ui.common import (PRIVATE, QUEUE, cache_owner, device_choices, first_view, hub_token, job_label, refresh_pair,
                       request_workspace)

EXAMPLES = ASSETS / "playground"
UP, DOWN = "#2e7d4f", "#b3412e"  # rank change colours: moved up / moved down
# Shown before the first run too (an empty gr.Dataframe would head its columns 1, 2, 3).
TABLE_COLUMNS = ["passage", "A score", "A rank", "B score", "B rank", "Δ score", "rank change"]
NOTHING_LOADED = "No models loaded."
METRIC_COLUMNS = ["metric", "A", "B", "B − A"]
SAME_MODEL = "**⚠ A and B are the same model: every Δ is 0.** Pick your merge as B (or another model as A).\n\n"
HELP = """Compare how two models rank the same passages. **A** is the reference (by default the base of
your latest merge), **B** the model under test (by default that merge). One passage per line; start a line
with `+` to mark it relevant and get MRR and nDCG. Or upload a JSONL file:
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
            passages = gr.Textbox(label="Passages, one per line (+ marks a relevant one)", lines=6)
        queries_file = gr.File(label="…or a JSONL file of queries", file_types=[".jsonl", ".json"], scale=1)
    with gr.Row():
        run = gr.Button("Compare", variant="primary", scale=0)
        refresh = gr.Button("Refresh model lists", scale=0, min_width=260)
    status = gr.Markdown(elem_id="compare-status")
    table = gr.Dataframe(label="Passages, as A and B rank them", interactive=False, wrap=True,
                         headers=TABLE_COLUMNS, elem_id="compare-table")
    with gr.Row():
        chart = gr.Plot(label="Rank of each passage under A and B")
        metrics = gr.Dataframe(label="Metrics (needs relevant passages)", interactive=False, headers=METRIC_COLUMNS)
    with gr.Row():
        loaded = gr.Markdown(NOTHING_LOADED if workspace.hosted else loaded_markdown(None))  # a new visitor has none
        unload_button = gr.Button("Unload models", size="sm", scale=0)
    _examples(query, passages)

    run.click(rerank_compare, [model_a, model_b, query, passages, queries_file, device, normalize, ws],
              [status, table, chart, metrics, loaded], api_name="rerank_compare", concurrency_id=QUEUE,
              concurrency_limit=1, show_progress_on=status)  # one spinner (or "Error") on the page, not five
    refresh.click(refresh_pair, ws, [model_a, model_b], **PRIVATE)
    unload_button.click(unload_all, ws, loaded, **PRIVATE)
    return refresh_pair, ws, [model_a, model_b]


def rerank_compare(model_a: str, model_b: str, query: str, passages: str, queries_file: str | None,
                   device: str, normalize: bool, workspace: Workspace, request: gr.Request | None = None,
                   oauth_token: gr.OAuthToken | None = None):
    """Score with A and B; return (status, table, rank chart, metrics table, loaded-models line).

    Any problem (unknown model, empty query, bad JSONL, missing device) is one gr.Error line.
    """
    ws = request_workspace(workspace, request)
    owner = cache_owner(workspace, request)
    try:
        items = read_queries(queries_file) if queries_file else parse_passages(query, passages)
        passages_in_all = sum(len(item.docs) for item in items)
        check_pairs(2 * passages_in_all, ws, job=f"this comparison ({passages_in_all:,} passages × 2 models)")
        refs = [check_model_ref(ref, ws) for ref in (model_a, model_b)]
        with MONITOR.job(job_label(ws, "compare", f"{Path(refs[0]).name} / {Path(refs[1]).name}")):
            models = [load_reranker(ref, device=device, token=hub_token(workspace, oauth_token), owner=owner)
                      for ref in refs]
            result = compare(models, items, normalize=bool(normalize))
    except MergeDeskError as error:
        raise gr.Error(str(error), print_exception=False) from None
    same = SAME_MODEL if same_model(*refs) else ""
    return (same + status_markdown(result, models), comparison_table(result), rank_chart(result),
            metrics_table(result), loaded_markdown(owner))


def parse_passages(query: str, passages: str) -> list[QueryItem]:
    """One query from the text boxes; lines starting with '+' are relevant (label 1)."""
    lines = [line.strip() for line in (passages or "").splitlines() if line.strip()]
    labels = [1 if line.startswith("+") else 0 for line in lines]
    docs = [line[1:].strip() if line.startswith("+") else line for line in lines]
    return [QueryItem(query or "", docs, labels if any(labels) else None)]


def status_markdown(result: Comparison, models) -> str:
    line = f"Scores are **{result.score_label}**. A: {models[0].describe()} · B: {models[1].describe()}"
    if models[0].kind != models[1].kind:
        line += f"\n\n⚠ A is a {models[0].kind} and B a {models[1].kind}: their scores are on different scales."
    return line


def comparison_table(result: Comparison):
    """One row per (query, passage), B's movers coloured; sorted by B's rank within a query."""
    several = len(result.queries) > 1
    rows = []
    for q in result.queries:
        for row in sorted(q.rows, key=lambda r: r.ranks[1]):
            cells = {"query": q.query} if several else {}
            cells.update({"passage": row.doc, "A score": round(row.scores[0], 4), "A rank": row.ranks[0],
                          "B score": round(row.scores[1], 4), "B rank": row.ranks[1],
                          "Δ score": round(row.delta, 4), "rank change": row.rank_change})
            if row.label is not None:
                cells["relevant"] = "✓" if row.label > 0 else ""
            rows.append(cells)
    frame = pd.DataFrame(rows)
    colour = lambda v: f"color: {UP if v > 0 else DOWN}; font-weight: 600" if v else ""  # noqa: E731
    return frame.style.map(colour, subset=["rank change"]).format(precision=4)


def rank_chart(result: Comparison) -> go.Figure:
    """Slope chart of the first query: each passage's rank under A (left) and B (right)."""
    query = result.queries[0]
    figure = go.Figure()
    for row in query.rows:
        moved = row.rank_change
        colour = UP if moved > 0 else DOWN if moved < 0 else "#8a8a8a"
        label = row.doc if len(row.doc) <= 40 else row.doc[:39] + "…"
        figure.add_trace(go.Scatter(
            x=["A", "B"], y=row.ranks, mode="lines+markers+text", text=["", label], textposition="middle right",
            line={"color": colour, "width": 3 if row.label else 1.5}, showlegend=False, cliponaxis=False,
            hovertext=f"{row.doc[:200]}<br>A rank {row.ranks[0]}, B rank {row.ranks[1]} ({moved:+d})",
            hoverinfo="text"))
    figure.update_yaxes(autorange="reversed", title="rank (1 = top)", dtick=1)
    figure.update_layout(height=max(260, 32 * len(query.rows)), margin={"l": 50, "r": 220, "t": 30, "b": 30},
                         title={"text": query.query[:80], "font": {"size": 13}}, plot_bgcolor="white")
    return figure


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
