"""The Playground's result area: one page of the comparison table, its rank chart, and the whole result as a CSV.

    shown = Shown(result)                  # kept in the session's gr.State after Compare
    table, chart = page_view(shown)        # rows 1–20, B's order; the chart draws those rows only
    pager_line(shown)                      # "Passages 1–20 of 1,500 · page 1 of 75"
    write_csv(result, ws)                  # every passage, full precision, in the visitor's downloads folder

Why pages: core scores any number of passages, but a browser drawing 1,500 styled rows and a slope
chart of 1,500 lines freezes the tab, and the chart is unreadable long before that. Paging reads the
kept Comparison, so it never scores again. This module only lays out numbers; it loads nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from core.app.quota import check_quota
from core.app.workspace import Workspace
from core.rerank.compare import Comparison, DocRow

TOP_K = 20  # rows per page unless the visitor sets "Show top"
MAX_TOP_K = 200  # a page the browser still draws at once
CHART_LINES = 30  # more lines than this on one slope chart are a tangle: the chart draws the page's first 30
UP, DOWN = "#2e7d4f", "#b3412e"  # rank change colours: moved up / moved down
CSV_NAME = "comparison.csv"


@dataclass(frozen=True)
class Shown:
    """What the result area shows: the last Comparison (None before the first), rows per page and the page (1-based)."""

    result: Comparison | None = None
    top: int = TOP_K
    page: int = 1

    @property
    def rows(self) -> int:
        return sum(len(q.rows) for q in self.result.queries) if self.result else 0

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.rows / self.top))

    def moved(self, *, top: int | None = None, step: int = 0) -> Shown:
        """The same result with another page size (back to page 1) or `step` pages on, kept in range."""
        top = self.top if top is None else min(MAX_TOP_K, max(1, int(top)))
        page = 1 if top != self.top else self.page + step
        return Shown(self.result, top, min(max(1, page), max(1, math.ceil(self.rows / top))))


def ordered(result: Comparison) -> list[tuple[str, DocRow]]:
    """(query, row) for every passage: queries in input order, each query's passages in B's order."""
    return [(q.query, row) for q in result.queries for row in sorted(q.rows, key=lambda r: r.ranks[-1])]


def result_frame(result: Comparison, rows: list[tuple[str, DocRow]] | None = None, *, digits: int | None = None):
    """One line per (query, passage): scores, ranks, Δ and rank change; a query column when there are several."""
    several = len(result.queries) > 1
    labelled = any(row.label is not None for q in result.queries for row in q.rows)
    cells = []
    for query, row in ordered(result) if rows is None else rows:
        line = {"query": query} if several else {}
        line.update({"passage": row.doc, "A score": row.scores[0], "A rank": row.ranks[0], "B score": row.scores[-1],
                     "B rank": row.ranks[-1], "Δ score": row.delta, "rank change": row.rank_change})
        if labelled:
            line["relevant"] = "✓" if row.label and row.label > 0 else ""
        cells.append(line)
    frame = pd.DataFrame(cells)
    return frame.round(digits) if digits is not None else frame


def page_view(shown: Shown):
    """(styled table of the page's rows, rank chart of them)."""
    start = (shown.page - 1) * shown.top
    rows = ordered(shown.result)[start:start + shown.top]
    frame = result_frame(shown.result, rows, digits=4)
    colour = lambda v: f"color: {UP if v > 0 else DOWN}; font-weight: 600" if v else ""  # noqa: E731
    return frame.style.map(colour, subset=["rank change"]).format(precision=4), rank_chart(rows)


def rank_chart(rows: list[tuple[str, DocRow]]) -> go.Figure:
    """Slope chart of the page's first query: each shown passage's rank under A (left) and B (right).

    At most CHART_LINES lines, a height that stops growing, and a rank axis from 1 (top) down to the
    lowest rank drawn, so it never shows rank 0 or below.
    """
    query = rows[0][0] if rows else ""
    drawn = [row for q, row in rows if q == query][:CHART_LINES]
    figure = go.Figure()
    for row in drawn:
        moved = row.rank_change
        colour = UP if moved > 0 else DOWN if moved < 0 else "#8a8a8a"
        label = row.doc if len(row.doc) <= 40 else row.doc[:39] + "…"
        figure.add_trace(go.Scatter(
            x=["A", "B"], y=[row.ranks[0], row.ranks[-1]], mode="lines+markers+text", text=["", label],
            textposition="middle right", line={"color": colour, "width": 3 if row.label else 1.5}, showlegend=False,
            cliponaxis=False, hovertext=f"{row.doc[:200]}<br>A rank {row.ranks[0]}, B rank {row.ranks[-1]} "
            f"({moved:+d})", hoverinfo="text"))
    lowest = max([max(row.ranks[0], row.ranks[-1]) for row in drawn], default=1)
    figure.update_yaxes(range=[lowest + 0.5, 1], autorange=False, title="rank (1 = top)",
                        dtick=1 if lowest <= 25 else None)
    title = query[:80] + (f" (first {CHART_LINES} rows of this page)" if len(drawn) == CHART_LINES < len(rows) else "")
    figure.update_layout(height=min(720, max(260, 26 * len(drawn))), margin={"l": 50, "r": 220, "t": 30, "b": 30},
                         title={"text": title, "font": {"size": 13}}, plot_bgcolor="white")
    return figure


def pager_line(shown: Shown) -> str:
    if not shown.result:
        return ""
    first = (shown.page - 1) * shown.top + 1
    last = min(shown.rows, shown.page * shown.top)
    return f"Passages {first:,}–{last:,} of {shown.rows:,} · page {shown.page} of {shown.pages}"


def write_csv(result: Comparison, ws: Workspace):
    """The whole result (every passage, scores at full precision) as ws.downloads_dir/comparison.csv.

    One per session: the last comparison's file is replaced. Hosted, it counts in the visitor's cap
    (core.app.quota.check_quota) like the merge .zip, and leaves with the session's folder.
    """
    path = ws.downloads_dir / CSV_NAME
    path.unlink(missing_ok=True)
    data = result_frame(result).to_csv(index=False).encode("utf-8")
    check_quota(ws, len(data), job="the comparison's CSV")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
