"""Small SVG charts drawn by hand, for reports that must open anywhere with no plotting stack.

    histogram_svg(edges, {"relevant": [3, 1], "not relevant": [0, 5]}, title="A (logit)", marker=2.0)
    deltas_svg([0.2, 0.0, -0.1], title="nDCG@10, B − A per query")
    intervals_svg([("nDCG@10", 0.03, -0.01, 0.07)], title="mean B − A with 95% CI")

Each returns one `<svg>` element as text (no external files, fonts or scripts), sized WIDTH ×
HEIGHT, so an HTML report can inline it and a Markdown viewer can show it as an image file.
Why not plotly/kaleido: static image export needs kaleido and a browser, which the CLI must not.
"""
from __future__ import annotations

from html import escape

WIDTH, HEIGHT, PAD = 480, 220, 36  # pixels; PAD leaves room for axis labels
COLOURS = ("#2b8a3e", "#c92a2a", "#1971c2", "#868e96")  # green, red, blue, grey


def _frame(title: str, body: list[str]) -> str:
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">')
    return "\n".join([head, f'<title>{escape(title)}</title>',
                      f'<text x="{WIDTH / 2}" y="14" text-anchor="middle" font-size="12">{escape(title)}</text>',
                      *body, "</svg>"])


def _scale(low: float, high: float, start: float, stop: float):
    """A linear map from [low, high] to pixels [start, stop] (a flat range maps to the middle)."""
    span = high - low
    return (lambda v: start + (v - low) / span * (stop - start)) if span else (lambda v: (start + stop) / 2)


def _axis_label(x: float, y: float, text: str, anchor: str = "middle") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{escape(text)}</text>'


def histogram_svg(edges: list[float], series: dict[str, list[int]], *, title: str, marker: float | None = None) -> str:
    """Overlaid translucent bars, one colour per series (the first on top), over shared bin edges;
    `marker` draws a dashed line."""
    x = _scale(edges[0], edges[-1], PAD, WIDTH - 10)
    top = max([1] + [c for counts in series.values() for c in counts])
    y = _scale(0, top, HEIGHT - PAD, 24)
    body = [f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - 10}" y2="{HEIGHT - PAD}" stroke="#333"/>']
    for colour, (name, counts) in reversed(list(zip(COLOURS, series.items()))):
        for left, right, count in zip(edges, edges[1:], counts):
            if count:
                body.append(f'<rect x="{x(left):.1f}" y="{y(count):.1f}" width="{max(x(right) - x(left) - 1, 1):.1f}" '
                            f'height="{y(0) - y(count):.1f}" fill="{colour}" fill-opacity="0.5"><title>'
                            f'{escape(name)}: {count} in [{left:.3g}, {right:.3g})</title></rect>')
    if marker is not None and edges[0] <= marker <= edges[-1]:
        body.append(f'<line x1="{x(marker):.1f}" y1="24" x2="{x(marker):.1f}" y2="{HEIGHT - PAD}" stroke="#000" '
                    f'stroke-dasharray="4 3"><title>threshold {marker:.4g}</title></line>')
    body += [_axis_label(PAD, HEIGHT - PAD + 14, f"{edges[0]:.3g}", "start"),
             _axis_label(WIDTH - 10, HEIGHT - PAD + 14, f"{edges[-1]:.3g}", "end"),
             _axis_label(PAD - 4, 30, str(top), "end")]
    body += [f'<rect x="{PAD + 110 * i}" y="{HEIGHT - 14}" width="10" height="10" fill="{colour}" fill-opacity="0.5"/>'
             + _axis_label(PAD + 110 * i + 14, HEIGHT - 5, name, "start")
             for i, (colour, name) in enumerate(zip(COLOURS, series))]
    return _frame(title, body)


def deltas_svg(deltas: list[float], *, title: str) -> str:
    """Per-query deltas sorted from largest to smallest: wins green above zero, losses red below."""
    ordered = sorted(deltas, reverse=True)
    bound = max([1e-9] + [abs(d) for d in ordered])
    y = _scale(-bound, bound, HEIGHT - PAD, 24)
    step = (WIDTH - PAD - 10) / max(len(ordered), 1)
    body = [f'<line x1="{PAD}" y1="{y(0):.1f}" x2="{WIDTH - 10}" y2="{y(0):.1f}" stroke="#333"/>']
    for i, d in enumerate(ordered):
        colour = COLOURS[0] if d > 0 else COLOURS[1] if d < 0 else COLOURS[3]
        low, high = sorted((y(0), y(d)))
        body.append(f'<rect x="{PAD + i * step:.1f}" y="{low:.1f}" width="{max(step - 0.5, 0.5):.1f}" '
                    f'height="{max(high - low, 1):.1f}" fill="{colour}"><title>{d:+.4f}</title></rect>')
    body += [_axis_label(PAD - 4, 30, f"{bound:+.3g}", "end"), _axis_label(PAD - 4, HEIGHT - PAD, f"{-bound:+.3g}", "end"),
             _axis_label(WIDTH / 2, HEIGHT - 8, f"{len(ordered)} queries, sorted")]
    return _frame(title, body)


def intervals_svg(rows: list[tuple[str, float, float, float]], *, title: str) -> str:
    """One row per (name, mean, low, high): a dot and its interval whisker, with a dashed zero line."""
    values = [v for _, mean, low, high in rows for v in (mean, low, high)] + [0.0]
    bound = max(abs(v) for v in values) or 1.0
    x = _scale(-bound, bound, PAD + 60, WIDTH - 20)
    step = (HEIGHT - PAD - 24) / max(len(rows), 1)
    body = [f'<line x1="{x(0):.1f}" y1="24" x2="{x(0):.1f}" y2="{HEIGHT - PAD}" stroke="#333" stroke-dasharray="4 3"/>']
    for i, (name, mean, low, high) in enumerate(rows):
        cy = 24 + (i + 0.5) * step
        colour = COLOURS[3] if low <= 0 <= high else COLOURS[0] if mean > 0 else COLOURS[1]
        body += [_axis_label(PAD + 54, cy + 4, name, "end"),
                 f'<line x1="{x(low):.1f}" y1="{cy:.1f}" x2="{x(high):.1f}" y2="{cy:.1f}" stroke="{colour}" '
                 f'stroke-width="2"/>',
                 f'<circle cx="{x(mean):.1f}" cy="{cy:.1f}" r="4" fill="{colour}"><title>{escape(name)}: '
                 f'{mean:+.4f} [{low:+.4f}, {high:+.4f}]</title></circle>']
    body += [_axis_label(x(-bound), HEIGHT - PAD + 14, f"{-bound:+.3g}"), _axis_label(x(0), HEIGHT - PAD + 14, "0"),
             _axis_label(x(bound), HEIGHT - PAD + 14, f"{bound:+.3g}")]
    return _frame(title, body)
