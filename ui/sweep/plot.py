"""The α-sweep's figure: nDCG@10 and MRR@10 against α, one curve per labelled set.

    figure = sweep_figure(result)          # result: core.cocktail.sweep.SweepResult
    figure.show()                          # or gr.Plot(figure), or docs/render_sweep.py → PNG

Two panels side by side (nDCG@10 | MRR@10) sharing the α axis; a set keeps its colour in
both. Each point's hover names the set, α and the value, so the best α for each set can be
read off. A sweep merged with several seeds (DARE, DELLA) draws each curve at the seeds' mean and,
behind it, a band from their min to their max in the set's colour, so a gain narrower than the band
reads as noise. Plain plotly (no gradio), so the app and the PNG tool draw the same figure.
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
            spread = result.spread(name, metric)
            seeds = ""
            if len(result.seeds) > 1:
                _add_band(figure, result.alphas, spread, name, colour, column)
                seeds = f" (mean of {len(result.seeds)} seeds: %{{customdata[0]:.4f}} – %{{customdata[1]:.4f}})"
            figure.add_trace(go.Scatter(
                x=result.alphas, y=[s.mean for s in spread], mode="lines+markers", name=name,
                legendgroup=name, showlegend=column == 1, line={"color": colour, "width": 2.5},
                marker={"size": 7}, customdata=[[s.min, s.max] for s in spread],
                hovertemplate=f"{name}<br>α %{{x:.2f}}<br>{metric} %{{y:.4f}}{seeds}<extra></extra>"),
                row=1, col=column)
            figure.update_xaxes(title_text=f"α  (0 = {_short(result.model_a)}, 1 = {_short(result.model_b)})",
                                row=1, col=column, range=_padded(result.alphas), gridcolor="#eeeeee")
            figure.update_yaxes(row=1, col=column, gridcolor="#eeeeee",
                                **_y_axis([v for n in result.set_names for s in result.spread(n, metric)
                                           for v in (s.min, s.max)]))
    figure.update_layout(height=height, margin={"l": 50, "r": 20, "t": 60, "b": 50}, plot_bgcolor="white",
                         paper_bgcolor="white", legend={"orientation": "h", "y": 1.16, "x": 0.5, "xanchor": "center"},
                         hovermode="closest", font={"size": 13})
    return figure


def _add_band(figure: go.Figure, alphas: list[float], spread: list, name: str, colour: str, column: int) -> None:
    """The seeds' min–max at each α as a filled band: the max line, then the min line filled up to it."""
    band = {"legendgroup": name, "showlegend": False, "mode": "lines", "line": {"width": 0, "color": colour},
            "hoverinfo": "skip"}
    figure.add_trace(go.Scatter(x=alphas, y=[s.max for s in spread], name=f"{name} seeds' max", **band),
                     row=1, col=column)
    figure.add_trace(go.Scatter(x=alphas, y=[s.min for s in spread], name=f"{name} seeds' min", fill="tonexty",
                                fillcolor=_translucent(colour), **band), row=1, col=column)


def _translucent(colour: str, alpha: float = 0.2) -> str:
    """'#3b5bdb' → 'rgba(59,91,219,0.2)'."""
    red, green, blue = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


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
