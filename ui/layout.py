"""The whole page, assembled from the panels in ui/ (app.py only launches it)."""
from __future__ import annotations

import gradio as gr

from ui.methods_panel import build_methods_panel

INTRO = """# MergeDesk
Merge Hugging Face checkpoints (LLMs, embedders, rerankers) and see what the merge did.

The point-and-click merge panel and the rerank playground are being built. Today the engine
runs from the command line: `python -m core merge RECIPE.yml OUT_DIR` (see the README).
"""


def build_app() -> gr.Blocks:
    """The MergeDesk page."""
    with gr.Blocks(title="MergeDesk") as app:
        gr.Markdown(INTRO)
        build_methods_panel()
    return app
