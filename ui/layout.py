"""The whole page, top to bottom, assembled from the panels in ui/ (app.py only launches it).

    app = build_app(default_workspace(hosted=False))

Header, the memory gauge (always visible, above the tabs, so it keeps moving while a merge
runs), the "Build demo models" strip (local app without demo models), the Merge, Playground, Sweep and
Generate tabs, and the reference of merge methods. No handlers here: each panel wires its own events,
and this file only says when the tabs' model pickers are re-read (ui.common.follow_workspace).
"""
from __future__ import annotations

import gradio as gr

from core.app.workspace import Workspace
from ui.common import follow_workspace
from ui.demo_panel import build_demo_panel, wire_demo
from ui.gauge import build_gauge
from ui.generation import build_generation
from ui.merge.panel import build_merge_panel
from ui.methods_panel import build_methods_panel
from ui.playground import build_playground
from ui.sweep.panel import build_sweep_panel

INTRO = """# MergeDesk
Merge Hugging Face checkpoints (LLMs, embedders, rerankers) and see what the merge did.
"""
HOSTED_NOTE = ("Running as a shared app: models are Hub ids or folders of this workspace, and your "
               "outputs live in a private folder that is deleted when you close the page.")


def build_app(workspace: Workspace) -> gr.Blocks:
    """The MergeDesk page for `workspace` (its hosted flag decides the path rules)."""
    # Hosted: gradio's cached downloads (zips, exported recipes) are deleted after an hour.
    with gr.Blocks(title="MergeDesk", delete_cache=(3600, 3600) if workspace.hosted else None) as app:
        gr.Markdown(INTRO + (f"\n{HOSTED_NOTE}" if workspace.hosted else ""), elem_id="header")
        build_gauge()
        demo = build_demo_panel(app, workspace)
        with gr.Tabs():
            with gr.Tab("Merge"):
                form, merged = build_merge_panel(app, workspace)
                built = wire_demo(demo, form, workspace)
            with gr.Tab("Playground"):
                playground = build_playground(workspace)
            with gr.Tab("Sweep"):
                sweep = build_sweep_panel(workspace, form)
            with gr.Tab("Generate"):
                generation = build_generation(workspace)
        # Each visitor's pickers and defaults come from the workspace as it is when they look (hosted: their own
        # merges only), never from launch time: on page load, after a merge and after the demo build.
        follow_workspace([app.load, merged.then, built], [playground, sweep, generation])
        build_methods_panel()
    return app
