"""The Playground's "Is it real?" section: significance, per-query deltas, score shift, cost and export.

    evaluate_items(items, refs, device, normalize, threshold, ws)
        → EvaluationView(summary, per_query, histogram, threshold table, cost table, report files)

It needs labelled passages (the box's "+" / "+N " grades or a JSONL file). core.rerank.evaluation does
every number — the paired test over queries, the first-stage (input order) baseline, the score shift
at a threshold (default: A's median positive score) and B's Platt recalibration onto A's scale, the
cost per model (core.rerank.cost) — and core.rerank.report writes the JSON + HTML export into the
session's downloads folder (hosted: the visitor's own, counted in their cap). This file only lays
those numbers out; the models come from the playground's cache: a model's load time is shown when
this run loaded it ("cached" otherwise), and its peak memory is that of scoring (`python -m core
evaluate` loads afresh and measures the load's peak too).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.app.quota import check_quota
from core.app.workspace import Workspace
from core.errors import MergeDeskError, RerankError
from core.monitor import MONITOR
from core.rerank.cost import LoadCost, measure_cost
from core.rerank.evaluation import Evaluation, evaluate
from core.rerank.model import load_reranker, loaded_rerankers
from core.rerank.report import html_report, write_report
from core.units import human
from ui.common import cache_owner, hub_token, job_label, request_workspace

REPORT_STEM = "comparison-report"  # → comparison-report.json and .html in the session's downloads folder
SCORE_KINDS = {"logit": "raw logit", "sigmoid(logit)": "sigmoid of the logit (0–1)", "cosine": "cosine similarity"}
POSITIVE, NEGATIVE = "#2b8a3e", "#adb5bd"


class EvaluationView(NamedTuple):
    summary: str  # significance in words, the score kind, notes
    metrics: pd.DataFrame  # metric | first stage | A | B | B − A | p | 95% interval
    per_query: pd.DataFrame  # query | relevant | A, B, Δ nDCG@10 | outcome (win / tie / loss)
    histogram: go.Figure  # score distributions, positives and negatives, both models
    threshold: pd.DataFrame  # model | kept | precision | recall at the threshold (and B recalibrated)
    cost: pd.DataFrame  # model | device | dtype | parameters | load | time per 100 pairs | peak memory
    files: list[str]  # the report: JSON and HTML


def evaluate_items(items: list, refs: list[str], device: str, normalize: bool, threshold: float | None,
                   workspace: Workspace, request: gr.Request | None = None,
                   oauth_token: gr.OAuthToken | None = None) -> EvaluationView:
    """The Playground's items and checked model references (ui.playground parses and checks them) evaluated:
    EvaluationView; one gr.Error line on any problem."""
    ws = request_workspace(workspace, request)
    owner = cache_owner(workspace, request)
    try:
        with MONITOR.job(job_label(ws, "evaluate", f"{Path(refs[0]).name} / {Path(refs[1]).name}")):
            loads = [timed_load(ref, device=device, token=hub_token(workspace, oauth_token), owner=owner)
                     for ref in refs]
            models = [model for model, _ in loads]
            pairs = [(item.query, doc) for item in items for doc in item.docs]
            costs = [measure_cost(model, pairs, load=load) for model, load in loads]
            result = evaluate(models, items, threshold=threshold, normalize=bool(normalize), costs=costs)
        files = export(result, ws)
    except MergeDeskError as error:
        raise gr.Error(str(error), print_exception=False) from None
    return view(result, files)


def parse_threshold(text: str | float | None) -> float | None:
    """The threshold box: empty → None (A's median relevant score), else a finite number; one line otherwise."""
    if text is None or str(text).strip() == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise RerankError(f"score threshold {str(text)[:40]!r}: write a number, e.g. 0.5, or leave it empty")
    return value


def timed_load(ref: str, **options) -> tuple[object, LoadCost | None]:
    """The playground's cached model and its load time when this call loaded it (None: it was loaded before).
    Only the time: the load's memory peak is measured by `python -m core evaluate`, which loads afresh."""
    cached = {id(model) for model in loaded_rerankers(options.get("owner"))}  # hosted: only this visitor's
    start = time.perf_counter()
    model = load_reranker(ref, **options)
    return model, None if id(model) in cached else LoadCost(time.perf_counter() - start, 0)


def view(result: Evaluation, files: list[str]) -> EvaluationView:
    data = result.to_dict()
    return EvaluationView(summary_markdown(data), metrics_frame(data), per_query_frame(data),
                          histogram_figure(data), threshold_frame(data), cost_frame(data), files)


def export(result: Evaluation, ws: Workspace) -> list[str]:
    """JSON + HTML report in the session's downloads folder, after the hosted cap allows both (the previous
    report's two files, which these replace, are not counted)."""
    data, stem = result.to_dict(), ws.downloads_dir / REPORT_STEM
    check_quota(ws, len(json.dumps(data, indent=1).encode()) + len(html_report(data).encode()),
                replacing=(stem.with_suffix(".json"), stem.with_suffix(".html")), job="the comparison report")
    ws.downloads_dir.mkdir(parents=True, exist_ok=True)
    return [str(path) for path in write_report(result, stem)]


def summary_markdown(data: dict) -> str:
    kinds = [SCORE_KINDS.get(m["score"], m["score"]) for m in data["models"]]
    shown = f"Scores are **{kinds[0]}**" if len(set(kinds)) == 1 else f"Scores: A **{kinds[0]}**, B **{kinds[1]}**"
    lines = [f"{shown}. {data['queries']} labelled quer{'y' if data['queries'] == 1 else 'ies'}, "
             f"{data['passages']:,} passages; B against A, paired over queries:"]
    lines += [f"- {text}" for text in data["verdicts"].values()]
    lines += [f"- ⚠ {note}" for note in data["notes"]]
    return "\n".join(lines)


def metrics_frame(data: dict) -> pd.DataFrame:
    rows = []
    for name, (a, b) in data["metrics"].items():
        test = data["tests"][name]
        rows.append({"metric": name, "first stage": _round(data["baseline"].get(name)), "A": _round(a), "B": _round(b),
                     "B − A": _round(test["mean_delta"]), "p": _round(test["p_value"]),
                     "95% interval": f"{test['ci_low']:+.4f} … {test['ci_high']:+.4f}"
                     if test["ci_low"] is not None else "—",
                     "wins / ties / losses": f"{test['wins']} / {test['ties']} / {test['losses']}"})
    return pd.DataFrame(rows)


def per_query_frame(data: dict, metric: str = "nDCG@10") -> pd.DataFrame:
    """One row per query: the metric under A and B, Δ and whether B won (ties: |Δ| ≤ 1e-12, as the test)."""
    rows = []
    for q in data["per_query"]:
        a, b = q["values"][metric][0], q["values"][metric][-1]
        delta = q["delta"][metric]
        outcome = "no relevant passage" if not q["relevant"] else \
            "tie" if abs(delta) <= 1e-12 else "win" if delta > 0 else "loss"
        rows.append({"query": q["query"], "relevant": q["relevant"], f"A {metric}": _round(a),
                     f"B {metric}": _round(b), "Δ": _round(delta), "B": outcome})
    return pd.DataFrame(rows)


def histogram_figure(data: dict) -> go.Figure:
    """Both models' score histograms (positives and negatives stacked) with the threshold drawn."""
    shift = data["score_shift"]
    figure = make_subplots(rows=1, cols=2, subplot_titles=["A", "B"], shared_yaxes=True)
    if not shift:
        return figure
    edges = shift["edges"]
    centres = [(low + high) / 2 for low, high in zip(edges, edges[1:])]
    for column, model in enumerate(("A", "B"), 1):
        for kind, colour in (("positive", POSITIVE), ("negative", NEGATIVE)):
            figure.add_trace(go.Bar(x=centres, y=shift["counts"][model][kind], name=f"{kind} passages",
                                    marker_color=colour, showlegend=column == 1, legendgroup=kind), row=1, col=column)
        figure.add_vline(x=shift["threshold"], line_dash="dash", line_color="#c92a2a", row=1, col=column)
    figure.update_layout(barmode="stack", height=320, margin={"l": 40, "r": 20, "t": 40, "b": 40},
                         plot_bgcolor="white", bargap=0.05)
    figure.update_xaxes(title_text=f"score ({data['models'][0]['score']})")
    return figure


def threshold_frame(data: dict) -> pd.DataFrame:
    shift = data["score_shift"]
    if not shift:
        return pd.DataFrame(columns=["model", "threshold", "kept", "precision", "recall"])
    at = shift["at_threshold"]
    calibration = shift["calibration"]
    rows = [("A", at[0]), ("B", at[1]),
            (f"B recalibrated (s' = {calibration['scale']:.4g}·s {calibration['shift']:+.4g})", shift["after"])]
    return pd.DataFrame([{"model": name, "threshold": _round(shift["threshold"]), "kept": stats["kept"],
                          "precision": _round(stats["precision"]), "recall": _round(stats["recall"])}
                         for name, stats in rows])


def cost_frame(data: dict) -> pd.DataFrame:
    return pd.DataFrame([{"model": name, "device": c["device"], "dtype": c["dtype"], "parameters": c["parameters"],
                          "load s": "cached" if c["load_s"] is None else _round(c["load_s"]),
                          "s per 100 pairs": _round(c["score_s_per_100"]),
                          "peak memory": human(c["peak_bytes"]), "measured by": c["peak_source"]}
                         for name, c in zip(("A", "B"), data["cost"])])


def _round(value):
    return None if value is None else round(value, 4)
