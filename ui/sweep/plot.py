"""The α-sweep's figure: nDCG@10 and MRR@10 against α, one curve per labelled set.

    figure = sweep_figure(result)          # result: core.cocktail.sweep.SweepResult
    figure.show()                          # or gr.Plot(figure), or docs/render_sweep.py → PNG

Two panels side by side (nDCG@10 | MRR@10) sharing the α axis; a set keeps its colour in
both. Each point's hover names the set, α and the value, so the best α for each set can be
read off. Plain plotly (no gradio), so the app and the PNG tool draw the same figure.
"""
from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.cocktail.sweep import SHOWN_METRICS, SweepResult

COLOURS = ("#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#0c8599", "#c92a2a", "#5c940d", "#862e9c")


def sweep_figure(result: SweepResult, metrics: tuple[str, ...] = SHOWN_METRICS, *, height: int = 380) -> go.Figure:
    """Curves of each metric against α, one per set (legend once, colours shared across panels)."""
    figure = make_subplots(rows=1, cols=len(metrics), subplot_titles=list(metrics), horizontal_spacing=0.09)
    for index, name in enumerate(result.set_names):
        colour = COLOURS[index % len(COLOURS)]
        for column, metric in enumerate(metrics, 1):
            figure.add_trace(go.Scatter(
                x=result.alphas, y=result.values(name, metric), mode="lines+markers", name=name,
                legendgroup=name, showlegend=column == 1, line={"color": colour, "width": 2.5},
                marker={"size": 7}, hovertemplate=f"{name}<br>α %{{x:.2f}}<br>{metric} %{{y:.4f}}<extra></extra>"),
                row=1, col=column)
            figure.update_xaxes(title_text=f"α  (0 = {_short(result.model_a)}, 1 = {_short(result.model_b)})",
                                row=1, col=column, range=_padded(result.alphas), gridcolor="#eeeeee")
            figure.update_yaxes(row=1, col=column, gridcolor="#eeeeee",
                                **_y_axis([v for n in result.set_names for v in result.values(n, metric)]))
    figure.update_layout(height=height, margin={"l": 50, "r": 20, "t": 60, "b": 50}, plot_bgcolor="white",
                         paper_bgcolor="white", legend={"orientation": "h", "y": 1.16, "x": 0.5, "xanchor": "center"},
                         hovermode="closest", font={"size": 13})
    return figure


def _y_axis(values: list[float]) -> dict:
    """Range, tick step and label format for a panel: a step of 1, 2 or 5 × 10^k giving about five ticks,
    and enough decimals that two ticks never read the same (0.501–0.503: step 0.0005, 0.5010, 0.5015…;
    a fixed ".2f" showed "0.50" five times)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {}
    low, high = min(finite), max(finite)
    if high == low:  # one flat curve: a band of ±0.02 around it
        low, high = low - 0.02, high + 0.02
    rough = (high - low) / 4
    power = 10.0 ** math.floor(math.log10(rough))
    step = round(max(m for m in (1, 2, 5) if m * power <= rough * (1 + 1e-9)) * power, 12)
    decimals = max(2, -math.floor(math.log10(step) + 1e-9))
    return {"range": [low - step / 2, high + step / 2], "dtick": step, "tick0": 0, "tickformat": f".{decimals}f"}


def _short(ref: str) -> str:
    """The last part of a path or Hub id, for axis titles."""
    return str(ref).rstrip("/").rsplit("/", 1)[-1] or str(ref)


def _padded(alphas: list[float]) -> list[float]:
    low, high = min(alphas), max(alphas)
    margin = (high - low) * 0.04 or 0.05
    return [low - margin, high + margin]
