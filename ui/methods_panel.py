"""The "Methods" panel: every merge method and its parameters, read from core's registry.

Nothing here is written per method: a method registered in core/merge/methods/ appears here
with its label, paper link and parameter declarations.
"""
from __future__ import annotations

import gradio as gr

from core.merge.methods import METHODS


def methods_markdown() -> str:
    """A Markdown table per method, generated from the declarations."""
    parts = []
    for method in METHODS.values():
        parts.append(f"### {method.label} — `{method.name}`\n[paper]({method.paper}) · takes {method.needs()}\n")
        if not method.params:
            parts.append("No parameters.\n")
            continue
        parts.append("| parameter | scope | default | range | what it does |\n|---|---|---|---|---|")
        for p in method.params:
            default = "required" if p.default is None else str(p.default)
            valid = "true / false" if p.kind is bool else p.range_text()
            scope = "per model" if p.per_model else "global"
            parts.append(f"| `{p.name}` | {scope} | {default} | {valid} | {p.help} |")
        parts.append("")
    return "\n".join(parts)


def build_methods_panel() -> None:
    """Add the panel to the current gr.Blocks context."""
    with gr.Accordion("Merge methods and their parameters", open=False):
        gr.Markdown(methods_markdown())
