"""Export an evaluation: the JSON, a self-contained HTML report, and a Markdown table for model cards.

    json_path, html_path = write_report(result, "out/eval")     # out/eval.json, out/eval.html
    markdown_table(result.to_dict())                            # the comparison table, for a README
    html_report(result.to_dict())                               # the page as text

Everything reads the plain dict of Evaluation.to_dict() (or the JSON `evaluate --json` printed),
so a saved evaluation can be re-exported without the models. The HTML has no external files:
its charts are inline SVG (core.rerank.svg) — score histograms with the threshold, per-query
deltas, and each metric's mean delta with its 95% interval.
"""
from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path

from core.errors import RerankError
from core.rerank.significance import format_p
from core.rerank.svg import deltas_svg, histogram_svg, intervals_svg
from core.units import human

DELTA_CHART_METRIC = "nDCG@10"  # the per-query chart shows this metric (the first one when absent)


def comparison_rows(data: dict) -> list[list[str]]:
    """Header + one row per metric: 1st stage, each model, and for two or more models B − A with
    its interval, p-value and win/tie/loss counts."""
    models = [chr(65 + i) for i in range(len(data["models"]))]
    tested = bool(data["tests"])
    header = ["metric", "1st stage", *models] + (["B − A", "95% CI", "p", "W / T / L"] if tested else [])
    rows = [header]
    for name, values in data["metrics"].items():
        row = [name, _num(data["baseline"][name]), *(_num(v) for v in values)]
        if tested:
            t = data["tests"][name]
            row += [f"{t['mean_delta']:+.4f}", f"{t['ci_low']:+.4f} … {t['ci_high']:+.4f}", format_p(t["p_value"]),
                    f"{t['wins']} / {t['ties']} / {t['losses']}"]
        rows.append(row)
    return rows


def markdown_table(data: dict) -> str:
    """The comparison table in Markdown, with the models named and each verdict below it."""
    rows = comparison_rows(data)
    lines = [f"- {chr(65 + i)}: `{m['model']}` ({m['kind']}, scores: {m['score']})" for i, m in enumerate(data["models"])]
    lines += ["", f"{data['queries']} labelled queries, {data['passages']} passages. nDCG uses linear gain "
              "(rel / log2(rank + 1)); MRR, MAP and recall count label > 0 as relevant.", ""]
    lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    if data["verdicts"]:
        lines += ["", "Paired over queries (percentile bootstrap 95% CI of the mean delta, two-sided sign-flip "
                  "randomization test):", ""] + [f"- {line}" for line in data["verdicts"].values()]
    return "\n".join(lines) + "\n"


def html_report(data: dict) -> str:
    """A standalone HTML page: models, table, verdicts, charts, score shift and cost."""
    rows = comparison_rows(data)
    table = ["<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in rows[0]) + "</tr>"]
    table += ["<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]]
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>MergeDesk reranker evaluation</title>',
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}</style>",
             "</head><body>", "<h1>Reranker evaluation</h1>", "<ul>"]
    parts += [f"<li>{chr(65 + i)}: <code>{escape(m['model'])}</code> ({escape(m['kind'])}, scores: {escape(m['score'])})"
              "</li>" for i, m in enumerate(data["models"])]
    parts += ["</ul>", f"<p>{data['queries']} labelled queries, {data['passages']} passages. nDCG uses linear gain "
              "rel / log2(rank + 1); MRR, MAP and recall count label &gt; 0 as relevant. “1st stage” is the input "
              "order.</p>", *table, "</table>"]
    if data["verdicts"]:
        parts += ["<h2>Is it real?</h2>", "<ul>"] + [f"<li>{escape(v)}</li>" for v in data["verdicts"].values()]
        parts += ["</ul>", _charts(data)]
    if data["score_shift"]:
        parts.append(_shift_section(data["score_shift"], data["models"]))
    if data["cost"]:
        parts.append(_cost_section(data["cost"]))
    parts += [f"<p>Note: {escape(note)}</p>" for note in data["notes"]]
    return "\n".join(parts + ["</body></html>"]) + "\n"


def check_report_stem(stem: str | os.PathLike) -> Path:
    """The stem as a Path, or a one-line error when its folder is missing (checked before any work)."""
    stem = Path(stem)
    if not stem.parent.is_dir():
        raise RerankError(f"cannot write the report: folder {stem.parent} does not exist")
    return stem


def write_report(evaluation, stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write STEM.json (Evaluation.to_dict()) and STEM.html; both are written, or neither."""
    stem = check_report_stem(stem)
    data = evaluation.to_dict()
    texts = {stem.with_suffix(".json"): json.dumps(data, indent=1), stem.with_suffix(".html"): html_report(data)}
    temporary = {path: path.with_name(path.name + ".partial") for path in texts}
    try:
        for path, text in texts.items():
            temporary[path].write_text(text, encoding="utf-8")
        for path, partial in temporary.items():
            partial.replace(path)
    except OSError as error:
        for partial in temporary.values():
            partial.unlink(missing_ok=True)
        raise RerankError(f"cannot write the report {stem}: {error}") from None
    return tuple(texts)


def _charts(data: dict) -> str:
    names = list(data["tests"])
    metric = DELTA_CHART_METRIC if DELTA_CHART_METRIC in names else names[0]
    deltas = [q["delta"][metric] for q in data["per_query"] if q["relevant"]]
    rows = [(name, t["mean_delta"], t["ci_low"], t["ci_high"]) for name, t in data["tests"].items()]
    return (intervals_svg(rows, title="mean B − A per metric, 95% CI (grey: includes 0)") + "\n"
            + deltas_svg(deltas, title=f"{metric}: B − A per query (green: B wins)"))


def _shift_section(shift: dict, models: list[dict]) -> str:
    charts = [histogram_svg(shift["edges"], {"relevant": shift["counts"][name]["positive"],
                                             "not relevant": shift["counts"][name]["negative"]},
                            title=f"{name} scores ({model['score']})", marker=shift["threshold"])
              for name, model in zip(("A", "B"), (models[0], models[-1]))]
    cells = [(name, s) for name, s in zip(("A", "B"), shift["at_threshold"])] + [("B recalibrated", shift["after"])]
    fit = shift["calibration"]
    rows = "".join(f"<tr><td>{name}</td><td>{_share(s['precision'])}</td><td>{_share(s['recall'])}</td>"
                   f"<td>{s['kept']}</td></tr>" for name, s in cells)
    return (f"<h2>Score shift</h2><p>Scores are {escape(shift['score_label'])}. At threshold "
            f"{shift['threshold']:.4g} (score ≥ threshold is kept):</p><table><tr><th>model</th><th>precision</th>"
            f"<th>recall</th><th>kept</th></tr>{rows}</table><p>Recalibration (Platt fit per model, B mapped onto "
            f"A's scale): s' = {fit['scale']:.4g}·s {fit['shift']:+.4g}.</p>\n" + "\n".join(charts))


def _cost_section(costs: list[dict]) -> str:
    rows = "".join(f"<tr><td>{chr(65 + i)}</td><td>{_num(c['load_s'], 2)}</td><td>{c['score_s_per_100']:.3f}</td>"
                   f"<td>{human(c['peak_bytes'])}</td><td>{c['parameters']:,}</td><td>{escape(c['dtype'])}</td>"
                   f"<td>{escape(c['device'])}</td></tr>" for i, c in enumerate(costs))
    return ("<h2>Cost</h2><table><tr><th>model</th><th>load s</th><th>s / 100 pairs</th><th>peak memory</th>"
            f"<th>parameters</th><th>dtype</th><th>device</th></tr>{rows}</table><p>Peak: {escape(costs[0]['peak_source'])}"
            ".</p>")


def _num(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _share(value) -> str:
    return "n/a" if value is None else f"{value:.1%}"
