"""The "Merge" tab: pick models and a method (or paste a recipe), check the plan, merge, get the result.

    with gr.Blocks() as app:
        form, merged = build_merge_panel(app, default_workspace(hosted=False))

Public API (gradio_client), both taking plain values:
    /plan   (recipe_yaml, output_name, device)                 -> Markdown: ready or not, and why
    /merge  (recipe_yaml, output_name, device, overwrite, seed) -> (status, log, output folder, model card)
Every other event (form edits, YAML sync, stop, zip, push) is private: absent from the API.

The form itself (model rows, parameters, YAML box) is ui/merge/form.py. Merges run one at a
time in the "gpu" queue that the playground shares, so two visitors are queued, not mixed;
Stop sets the running merge's cancel flag, which the engine checks between tensors. No
tensor math here: the engine (core/) does the work, this file shows it.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import gradio as gr
from gradio.utils import get_upload_folder

from core.app.paths import check_recipe_refs
from core.app.quota import check_quota
from core.app.sessions import cleanup_stale_sessions, remove_session, session_workspace
from core.app.workspace import Workspace, output_folder
from core.devices import devices_for
from core.errors import MergeCancelled, MergeDeskError, OutputExists
from core.merge.engine import Progress, merge_events
from core.merge.preview import Preview, preview
from core.merge.recipe import MergeRecipe, parse_recipe
from core.merge.slices import output_layers, slice_lines
from core.merge.stages import merge_stages, preview_stages
from core.merge.warnings import recipe_warnings
from core.model_cache import MODELS
from core.monitor import MONITOR
from core.progress import eta_text
from core.units import human
from ui import jobs
from ui.common import (PRIVATE, QUEUE, device_choices, device_update, hub_token, job_label, on_space, request_workspace,
                       session_id)
from ui.merge.form import build_merge_form, refresh_models
from ui.merge.result_export import make_zip, push
from ui.merge.stages_view import kept_line, page_stages, unwrap
from ui.merge.weights_panel import build_weights_from_data

REPLACE_HINT = "tick Replace under More options"  # how this page replaces an existing output (core: OutputExists)
STALE_SESSION_S = 6 * 3600
LOG_LINES = 400
SCROLL_LOG_TO_END = "() => { const box = document.querySelector('.log textarea'); " \
                    "if (box) requestAnimationFrame(() => { box.scrollTop = box.scrollHeight; }); }"


def build_merge_panel(app: gr.Blocks, workspace: Workspace) -> tuple:
    """Add the Merge tab's contents to the current Blocks; `app` gives the page's load/unload events.
    Returns (the form, which other tabs may fill (the Sweep tab's "Use this α"), the event of a
    finished merge, on which the other tabs re-read their models)."""
    ws = gr.State(workspace)
    last_output = gr.State(None)  # the folder of this session's latest merge (server side, trusted)
    form = build_merge_form(app, workspace, ws)

    with gr.Row(equal_height=True):
        device = gr.Dropdown(device_choices(), value="auto", label="Device", elem_id="merge-device",
                             info="where the math runs; GPUs show their free memory")
        output_name = gr.Textbox("my-merge", label="Output name", info="a new folder under outputs/",
                                 elem_id="output-name")
    build_weights_from_data(form, device, ws)
    with gr.Accordion("More options", open=False):
        with gr.Row():
            seed = gr.Number(0, precision=0, label="Seed", info="for the random drops of DARE and DELLA")
            overwrite = gr.Checkbox(False, label="Replace the output folder if it exists")
    with gr.Row():
        check_button = gr.Button("Check", variant="secondary")
        merge_button = gr.Button("Merge", variant="primary")
        stop_button = gr.Button("Stop", variant="stop")
    stop_note = gr.Markdown(elem_id="stop-note")  # what Stop did ("Nothing is running."), one line
    status = gr.Markdown("Check shows what the merge will read, write and need before anything runs.",
                         elem_classes="status", elem_id="merge-status")
    log = gr.Textbox(label="Log", lines=6, max_lines=6, autoscroll=True, interactive=False, elem_classes="log")

    with gr.Accordion("Result", open=True):
        folder = gr.Textbox(label="Output folder", interactive=False, elem_id="output-folder")
        card = gr.Markdown(elem_classes="model-card")
        with gr.Row():
            zip_button = gr.Button("Download as .zip", size="sm")
            zip_file = gr.File(label="Download", visible=False)
        with gr.Row(equal_height=True):
            repo = gr.Textbox(label="Hub repository", placeholder="name or org/name")
            private = gr.Checkbox(True, label="Private")
            if workspace.hosted and on_space():
                gr.LoginButton()
                token = gr.Textbox(visible=False)
            else:
                token = gr.Textbox(label="Hugging Face token", type="password",
                                   placeholder="write token" if workspace.hosted else "empty: your saved login")
        push_button = gr.Button("Push to the Hub", size="sm")
        push_status = gr.Markdown()

    check_button.click(plan, [form.recipe_yaml, output_name, device, ws], status, api_name="plan",
                       concurrency_limit=4)
    merged = merge_button.click(merge, [form.recipe_yaml, output_name, device, overwrite, seed, ws],
                                [status, log, folder, card, last_output], api_name="merge",
                                concurrency_limit=1, concurrency_id=QUEUE).success(
        refresh_models, [ws, form.layout], [form.choices, form.layout, form.base], **PRIVATE)
    # Stop answers beside itself, not in the status: pressed after a merge, it leaves "✓ Merged" in place.
    stop_button.click(stop, None, stop_note, concurrency_limit=None, **PRIVATE)
    log.change(None, js=SCROLL_LOG_TO_END)  # browser only: autoscroll skips a read-only box
    zip_button.click(make_zip, [last_output, ws], zip_file, **PRIVATE)
    push_button.click(push, [repo, private, token, last_output, ws], push_status, **PRIVATE)
    app.load(device_update, None, device, **PRIVATE)
    if workspace.hosted:
        def on_unload(request: gr.Request):
            end_session(workspace, request)

        app.unload(on_unload)
    return form, merged


def plan(recipe_yaml: str, output_name: str, device: str, workspace: Workspace,
         request: gr.Request | None = None, oauth_token: gr.OAuthToken | None = None) -> str:
    """Check a recipe without running it: can these models merge, and what will it take?

    Returns Markdown: "✓ Ready" with tensors, bytes, memory and disk, or "✗ Not ready: …"
    with the one-line reason (bad YAML, unknown model, mismatched architectures, bad name).
    """
    ws = request_workspace(workspace, request)
    try:
        devices = devices_for(device)
        stages = page_stages(recipe_yaml, output_name, ws)
        if stages is not None:  # every stage's plan, one section each
            found = preview_stages(stages, devices, token=hub_token(workspace, oauth_token))
            return "\n\n".join(f"**Stage {i}/{len(stages)} {s.label}** → `{s.out.name}`\n\n"
                                 + plan_markdown(s.recipe, f, s.out, [str(d) for d in devices], ws)
                                 for i, (s, f) in enumerate(found, 1))
        recipe, out = _prepare(recipe_yaml, output_name, ws)
        found = preview(recipe, out, devices, token=hub_token(workspace, oauth_token))
    except MergeDeskError as error:
        return f"**✗ Not ready:** {error}"
    return plan_markdown(recipe, found, out, [str(d) for d in devices], ws)


def merge(recipe_yaml: str, output_name: str, device: str, overwrite: bool, seed: float, workspace: Workspace,
          request: gr.Request | None = None, oauth_token: gr.OAuthToken | None = None):
    """Run the merge, yielding (status, log, output folder, model card, folder path) as it goes.

    Stop (or closing the page) ends it after the current tensor and removes the partial
    output; any problem ends it with a one-line gr.Error and no folder left behind. Hub ids
    are fetched with the visitor's own access (hub_token), never the server's.
    """
    ws = request_workspace(workspace, request)
    token = hub_token(workspace, oauth_token)
    lines: list[str] = []
    warnings: list[str] = []  # NaN/Inf found in the inputs (the engine merges anyway and says so)
    cautions: list[str] = []  # core.merge.warnings on the recipe (all-zero weights…)
    events = None
    try:
        stages = page_stages(recipe_yaml, output_name, ws)  # a multi-stage recipe (ui.merge.stages_view), or None
        recipe, out = _prepare(recipe_yaml, output_name, ws) if stages is None else (None, stages[-1].out)
        recipes = [recipe] if stages is None else [stage.recipe for stage in stages]
        cautions = [f"⚠ {line}" for r in recipes for line in recipe_warnings(r)]  # the recipe's own: it merges anyway
        lines += cautions
        if ws.hosted:
            cleanup_stale_sessions(workspace, STALE_SESSION_S)
        yield "Opening the models…", _tail(lines), "", "", None
        with jobs.running(session_id(request), "merge") as cancel, MONITOR.job(job_label(ws, "merge", out.name)):
            options = dict(device=device, overwrite=bool(overwrite), seed=seed or 0, cancel=cancel, token=token,
                           admit=_within_cap(ws, replacing=(out,) if overwrite else ()))
            events = merge_events(recipe, out, **options) if stages is None else merge_stages(stages, **options)
            shown = 0.0
            for event in events:
                label, step = unwrap(event)
                if step is None:
                    lines.append(kept_line(event))
                    continue
                lines.append(f"{label}{step.step}/{step.total}  {step.tensor}  ({step.device})")
                found = [f"⚠ {message}" for message in (*step.nonfinite, *step.notes)]
                lines += found
                warnings += found
                if time.monotonic() - shown > 0.25 or step.step == step.total:
                    shown = time.monotonic()
                    yield label + progress_markdown(step), _tail(lines), "", "", None
    except MergeCancelled:
        yield "**■ Stopped.** The partial output was removed.", _tail(lines + ["stopped"]), "", "", None
        return
    except MergeDeskError as error:
        message = error.replace_hint(REPLACE_HINT) if isinstance(error, OutputExists) else str(error)
        yield f"**✗ Merge failed:** {message}", _tail(lines), "", "", None
        raise gr.Error(message, print_exception=False) from None
    finally:
        if events is not None:
            events.close()
    shown_path = str(out.relative_to(ws.root)) if ws.hosted else str(out)
    overflows = sum(w.startswith("⚠ merged tensor") for w in warnings)  # the output check's lines (core.merge.nonfinite)
    caution = "".join(f" **{line}**." for line in cautions)
    caution += (f" **⚠ {len(warnings) - overflows} input tensor(s) hold NaN/Inf**, so the merge does too there: "
                "see the log." if len(warnings) > overflows else "")
    caution += (f" **⚠ {overflows} merged tensor(s) overflow to NaN/Inf** in the output dtype: see the log."
                if overflows else "")
    yield (f"**✓ Merged** {len(lines) - len(warnings) - len(cautions)} tensors into `{shown_path}`.{caution}",
           _tail(lines + cautions + warnings + ["done"]), shown_path, card_markdown(out), str(out))  # not scrolled away


stop = jobs.stopper("merge", "Stopping after the current tensor…", "stop")


def serve_downloads_in_place(workspace: Workspace) -> Workspace:
    """The workspace with its downloads (zips, recipes) in gradio's upload folder, unless it names a folder.

    gradio serves a returned file from that folder as it is; from anywhere else it first copies
    the file there (a second 2 GB for a big zip), where no size cap or page close would see it.
    """
    if workspace.downloads_dir is not None:
        return workspace
    return replace(workspace, downloads_dir=Path(get_upload_folder()) / "mergedesk-downloads")


def end_session(workspace: Workspace, request: gr.Request) -> None:
    """Hosted: a visitor closed the page: stop their jobs, let go of their models, delete their outputs and downloads."""
    session = session_id(request)
    jobs.stop_session(session)
    MODELS.release(owner=session)  # the rerankers and decoders it loaded, unless another session holds them
    remove_session(session_workspace(workspace, session))


def plan_markdown(recipe: MergeRecipe, found: Preview, out: Path, devices: list[str], ws: Workspace) -> str:
    """The preview as a short table, with warnings for what would stop or endanger the merge.

    Free disk and memory, and whether they suffice, are the preview's (core.merge.preflight's rule),
    so Check warns exactly when Merge would refuse.
    """
    merge_plan, free = found.plan, found.resources.memory
    merged = sum(job.merged for job in merge_plan.jobs)
    memory = f"≈ {human(merge_plan.peak_bytes)} on {', '.join(devices)} · RAM {human(free['RAM'])} available"
    memory += "".join(f" · {spec} {human(free[spec])} free" for spec in devices if spec in free)
    over = f"each of {len(recipe.slices)} slices" if recipe.slices else recipe.counted()
    rows = [("Method", f"{recipe.method.label} over {over}"),
            *([("Slices", f"{output_layers(recipe)} output layers: " + "; ".join(slice_lines(recipe)))] if recipe.slices else []),
            *([("Vocabulary", merge_plan.vocabulary.summary() + " (embedding rows realigned)")]
              if merge_plan.vocabulary is not None else []),
            ("Tensors", f"{len(merge_plan.jobs)} ({merged} merged, {len(merge_plan.jobs) - merged} copied)"),
            ("Reads", human(merge_plan.bytes_read)),
            ("Writes", f"{human(merge_plan.bytes_written)} in {len(merge_plan.shards)} file(s) → `{out.name}`"),
            ("Working memory", memory), ("Free disk", human(found.resources.disk_free))]
    warnings = recipe_warnings(recipe) + list(merge_plan.left_out)
    if out.exists():
        warnings.append(f"`{out.name}` already exists: pick another name or {REPLACE_HINT}.")
    if found.problem is not None:
        warnings.append(found.problem)
    if ws.max_output_bytes is not None:
        try:
            check_quota(ws, merge_plan.bytes_written, replacing=(out,))
        except MergeDeskError as error:
            warnings.append(str(error))
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    head = "**✓ Ready to merge.**" if not warnings else "**⚠ Check the warnings below.**"
    return f"{head}\n\n| | |\n|---|---|\n{table}\n" + "".join(f"\n- ⚠ {w}" for w in warnings)


def progress_markdown(event: Progress) -> str:
    """One line: a bar, tensor i/n, throughput and time left."""
    done = event.step / event.total if event.total else 1.0
    filled = round(24 * done)
    rate = event.bytes_done / event.elapsed if event.elapsed > 0 else 0
    return (f"`{'█' * filled}{'░' * (24 - filled)}` {done:.0%} · tensor {event.step}/{event.total} · "
            f"{human(int(rate))}/s · {eta_text(event.eta)}")


def card_markdown(folder: Path) -> str:
    """The output's model card without its YAML front matter (the Hub shows that as tags)."""
    card = Path(folder) / "README.md"
    text = card.read_text(encoding="utf-8") if card.exists() else ""
    if text.startswith("---"):
        text = text.split("---", 2)[-1]
    return text.strip()


def _prepare(recipe_yaml: str, output_name: str, ws: Workspace) -> tuple[MergeRecipe, Path]:
    """Validate the recipe, its model references (workspace policy) and the output name."""
    recipe = check_recipe_refs(parse_recipe(recipe_yaml or "", source="the recipe"), ws)
    return recipe, output_folder(output_name, ws)


def _within_cap(ws: Workspace, *, replacing: tuple[Path, ...]) -> Callable[[Preview], None] | None:
    """Hosted: the merge is admitted only if its output fits the visitor's size cap, judged on the engine's own
    preview (so the inputs are opened and planned once); None locally."""
    if not ws.hosted:
        return None
    return lambda found: check_quota(ws, found.plan.bytes_written, replacing=replacing)


def _tail(lines: list[str]) -> str:
    return "\n".join(lines[-LOG_LINES:])
