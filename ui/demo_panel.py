"""The "Build demo models" strip at the top of a local app that has no demo models yet.

    demo = build_demo_panel(app, workspace)       # above the tabs
    built = wire_demo(demo, form, workspace)      # once the Merge form exists: a build resets it to the demo

One click trains the demo kit (core.demo.build: two domain embedders, a general cross-encoder and two
domain fine-tunes of it, from the packaged MiniLM) into models/demo/, with a progress bar; about
five minutes on an idle 2-core CPU (docs/DEMO.md). The strip is hidden once the models exist and
never shown on a hosted app (training would take the shared machine). No tensor math here: core.demo.build does the work.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from core.app.workspace import Workspace
from core.demo.build import DEMO_MODELS, DemoProgress, built_demo_models, demo_events
from core.errors import MergeCancelled, MergeDeskError
from core.monitor import MONITOR
from core.progress import eta_text
from ui import jobs
from ui.common import PRIVATE, QUEUE, model_choices, session_id
from ui.merge.form import FormControls, start_form

PITCH = ("**No demo models yet.** Build them to try MergeDesk on real rerankers: a general MiniLM "
         "cross-encoder, cooking and software fine-tunes of it, and two domain embedders, trained here "
         "from the packaged all-MiniLM-L6-v2 (about 5 minutes on an idle 2-core CPU, nothing downloaded).")


@dataclass
class DemoPanel:
    """What layout.py wires: the strip (hidden when done) and the event of a finished build."""

    strip: gr.Group
    pitch: gr.Row  # "No demo models yet" and the buttons: hidden once the build is done, above its "✓ ready"
    built: object  # the build button's click event (chain .success on it)


def build_demo_panel(app: gr.Blocks, workspace: Workspace) -> DemoPanel:
    """Add the strip to the current Blocks; it shows on page load only when demo models are missing."""
    ws = gr.State(workspace)
    with gr.Group(visible=needs_demo(workspace), elem_classes="demo-strip") as strip:
        with gr.Row(equal_height=True) as pitch:
            gr.Markdown(PITCH)
            with gr.Column(scale=0, min_width=200):
                button = gr.Button("Build demo models", variant="primary")
                stop = gr.Button("Stop", variant="stop", size="sm")
        status = gr.Markdown(elem_classes="status")
        stop_note = gr.Markdown(elem_id="demo-stop-note")  # what Stop did, beside the status: never over "✓ ready"
    built = button.click(build_demo, ws, status, concurrency_id=QUEUE, concurrency_limit=1, **PRIVATE)
    stop.click(stop_demo, None, stop_note, concurrency_limit=None, **PRIVATE)
    app.load(lambda: gr.Group(visible=needs_demo(workspace)), None, strip, **PRIVATE)
    return DemoPanel(strip, pitch, built)


def needs_demo(workspace: Workspace) -> bool:
    """Local app and at least one demo model missing."""
    return not workspace.hosted and len(built_demo_models(workspace.models_dir)) < len(DEMO_MODELS)


def build_demo(workspace: Workspace, request: gr.Request | None = None):
    """Train the missing demo models, yielding a progress line; one gr.Error line if anything fails.
    Stop ends it before the next training step: the models saved so far stay, none is half written."""
    if workspace.hosted:
        raise gr.Error("The demo models are built locally: run `python -m core demo` where the app runs.")
    shown = 0.0
    try:
        with jobs.running(session_id(request), "demo") as cancel, MONITOR.job("build demo models"):
            for event in demo_events(workspace.models_dir, cancel=cancel):
                if event.state != "training" or time.monotonic() - shown > 0.5:
                    shown = time.monotonic()
                    yield progress_markdown(event)
    except MergeCancelled:
        yield "**■ Stopped.** The demo models saved so far are kept; none is half written."
        return
    except MergeDeskError as error:
        raise gr.Error(str(error), print_exception=False) from None
    yield (f"**✓ Demo models ready** in `{workspace.models_dir / 'demo'}`. The Merge tab now mixes general-ce "
           "with cooking-ce, and the Playground compares them.")


stop_demo = jobs.stopper("demo", "Stopping after the current training step…", "stop_demo")


def progress_markdown(event: DemoProgress) -> str:
    """A bar over the whole build (models done + this model's share), the current line and the time left
    in the whole build (core.progress: its optimizer steps so far against all it plans)."""
    share = event.step / event.total if event.total else (0.0 if event.state == "training" else 1.0)
    done = (event.index - 1 + share) / event.count
    filled = round(24 * done)
    return (f"`{'█' * filled}{'░' * (24 - filled)}` {done:.0%} · {event.line()} · {event.elapsed:.0f} s · "
            f"{eta_text(event.eta)}")


def wire_demo(demo: DemoPanel, form: FormControls, workspace: Workspace):
    """After a build, the pitch gives way to the "✓ ready" line and the Merge form lists the new models and
    starts from the demo recipe (as it does on the next launch); a stopped build leaves both as they were.
    Returns the event's follow-up, on which the other tabs re-read their models (ui.common.follow_workspace)."""
    def on_built(layout: int):
        if needs_demo(workspace):
            return {}
        return {demo.pitch: gr.Row(visible=False), form.choices: model_choices(workspace),
                **form.updates(start_form(workspace), layout)}

    return demo.built.success(on_built, form.layout, [demo.pitch, form.choices, *form.shown], **PRIVATE).then
