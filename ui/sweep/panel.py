"""The "Sweep" tab: merge two models at α = 0 … 1, measure every merge, pick the α to keep.

    build_sweep_panel(workspace, form)   # form: the Merge tab's FormControls, which "Use α" fills

Model A is α = 0 (the base or general model), B is α = 1 (the fine-tune). Each α's merge is
measured on labelled sets — the demo sets in assets/demo/*/eval.jsonl and/or uploaded JSONL —
and drawn as nDCG@10 / MRR@10 curves, one per set (ui/sweep/plot.py): the in-domain gain
against the general loss, as in the LM-Cocktail paper. For the random mixes (DARE, DELLA) "Seeds"
K merges each α with seeds 0 … K−1: the curve is their mean, a band their min–max, and the table
adds min / max columns, so a gain smaller than the draw's spread shows as one. Clicking a point (or picking a swept α and
"Use this α") writes that merge's recipe into the Merge tab's form (weights 1 − α and α for
linear). gr.Plot reports no clicks in Gradio 6, so a few lines of JS (CLICK_JS) pass plotly's
click to a hidden text box whose change event does the rest.

The work runs in core.cocktail.sweep (in memory when the model fits, else streamed to a temporary
folder); this file only shows it. Events are private and share the "gpu" queue; Stop sets
the running sweep's cancel flag, checked between two α's.
"""
from __future__ import annotations

import re
import time
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import gradio.utils as gr_utils
import pandas as pd

from core import ASSETS
from core.app.paths import check_model_ref
from core.app.quota import check_pairs, check_quota
from core.app.workspace import Workspace
from core.cocktail.spread import MAX_SEEDS, sweep_seeds
from core.cocktail.sweep import (DEFAULT_ALPHAS, DEFAULT_METHOD, SHOWN_METRICS, SWEEP_DENSITY, SWEEP_FORMULAS,
                                 SweepResult, read_sets, sweep_points, sweep_recipe)
from core.devices import devices_for
from core.errors import MergeCancelled, MergeDeskError, RerankError
from core.merge.preview import preview
from core.merge.recipe import to_yaml
from core.monitor import MONITOR
from core.progress import eta, eta_text
from ui import jobs
from ui.common import (PRIVATE, QUEUE, SKIP, device_choices, first_view, hub_token, job_label, keyed, refresh_pair,
                       request_workspace, session_id)
from ui.merge.form import FormControls
from ui.merge.recipe_form import FormState, yaml_to_form
from ui.sweep.plot import sweep_figure

DEMO_SETS = ASSETS / "demo"
METHOD_CHOICES = [(f"{name.replace('_', ' ')}: {formula}", name) for name, formula in SWEEP_FORMULAS.items()]
HELP = """Mix model **A** (α = 0, e.g. the base) with model **B** (α = 1, e.g. your fine-tune) at each α and
measure every mix on labelled sets — in-domain and general — to see what α costs and buys. Click a point (or
pick the α below the table and **Use this α**) to put that merge into the Merge tab."""


class SweepView(NamedTuple):
    """What run_sweep shows after each step; a field left out keeps what the page shows."""

    status: str
    plot: object = SKIP  # the figure (sweep_figure)
    table: object = SKIP  # metrics_table's frame
    pick: object = SKIP  # the α picker's update
    last: object = SKIP  # SweepResult.to_dict(), for "Use this α"


# gr.Plot has no click event: once plotly has drawn the figure, its plotly_click writes "α@time" into
# the hidden #sweep-clicked box and dispatches "input", which gradio turns into the box's change event
# (the time makes a second click on the same point a change too).
CLICK_JS = """() => {
  const attach = (tries) => {
    const graph = document.querySelector('#sweep-plot .js-plotly-plot');
    if (!graph || !graph.on) { if (tries > 0) setTimeout(() => attach(tries - 1), 200); return; }
    if (graph.dataset.sweepClick) return;
    graph.dataset.sweepClick = '1';
    graph.on('plotly_click', (event) => {
      const box = document.querySelector('#sweep-clicked textarea, #sweep-clicked input');
      if (!box || !event.points.length) return;
      box.value = `${event.points[0].x}@${Date.now()}`;
      box.dispatchEvent(new Event('input', {bubbles: true}));
    });
  };
  attach(25);
}"""


def build_sweep_panel(workspace: Workspace, form: FormControls) -> tuple:
    """Add the Sweep tab's contents to the current Blocks; "Use this α" updates `form`.
    Returns (handler, inputs, outputs) that re-fills the A/B pickers (ui.common.follow_workspace)."""
    ws = gr.State(workspace)
    last = gr.State(None)  # SweepResult.to_dict() of this session's latest sweep
    gr.Markdown(HELP, elem_classes="help")
    choices, first, second = first_view(workspace)
    with gr.Row():
        model_a = gr.Dropdown(choices, value=first, label="Model A (α = 0)", allow_custom_value=True, scale=3)
        model_b = gr.Dropdown(choices, value=second, label="Model B (α = 1)", allow_custom_value=True, scale=3)
        method = gr.Dropdown(METHOD_CHOICES, value=DEFAULT_METHOD, label="Mix", scale=2)
        device = gr.Dropdown(device_choices(), value="cpu", label="Device", scale=1)
    with gr.Row():
        demo = gr.CheckboxGroup(demo_set_names(), value=demo_set_names(), label="Demo sets (assets/demo/*/eval.jsonl)")
        uploads = gr.File(label="…and/or your labelled JSONL files", file_count="multiple",
                          file_types=[".jsonl", ".json"])
        alphas = gr.Textbox(", ".join(f"{a:g}" for a in DEFAULT_ALPHAS), label="α values",
                            info="comma-separated; task arithmetic may go beyond 1")
        seeds = gr.Number(1, label="Seeds", precision=0, minimum=1, maximum=MAX_SEEDS, elem_id="sweep-seeds",
                          info="DARE / DELLA: merge each α with K seeds, draw the spread")
        density = gr.Slider(0.05, 1, value=SWEEP_DENSITY, step=0.05, label="Density", elem_id="sweep-density",
                            info="DARE / DELLA: the share of B − A kept (the rest dropped at random, rescaled)")
    with gr.Row():
        run = gr.Button("Run the sweep", variant="primary", scale=0)
        stop = gr.Button("Stop", variant="stop", scale=0)
    status = gr.Markdown()
    stop_note = gr.Markdown(elem_id="sweep-stop-note")  # what Stop did, beside the status, never over "✓ Swept"
    plot = gr.Plot(label="Metrics against α (click a point to use its α)", elem_id="sweep-plot")
    clicked = gr.Textbox(visible="hidden", elem_id="sweep-clicked")  # "α@time", written by CLICK_JS
    table = gr.Dataframe(label="Metrics per α", interactive=False)
    with gr.Row(equal_height=True):
        pick = gr.Dropdown([], label="α to keep", info="the swept values", scale=1)
        use = gr.Button("Use this α in the Merge tab", scale=0)
    used = gr.Markdown()

    handler, outputs = keyed(run_sweep, SweepView, status=status, plot=plot, table=table, pick=pick, last=last)
    run.click(handler, [model_a, model_b, method, device, demo, uploads, alphas, ws, seeds, density], outputs,
              concurrency_id=QUEUE, concurrency_limit=1, **PRIVATE)
    stop.click(stop_sweep, None, stop_note, concurrency_limit=None, **PRIVATE)

    def on_use(result: dict | None, alpha: float | None, layout: int):
        message, new = use_alpha(result, alpha)
        return {used: message, **form.updates(new, layout)}

    use.click(on_use, [last, pick, form.layout], [used, *form.shown], **PRIVATE)
    plot.change(None, js=CLICK_JS, **PRIVATE)
    clicked.change(clicked_alpha, clicked, pick, **PRIVATE).then(
        on_use, [last, pick, form.layout], [used, *form.shown], **PRIVATE)
    return refresh_pair, ws, [model_a, model_b]


def run_sweep(model_a: str, model_b: str, method: str, device: str, demo: list[str], uploads: list[str] | None,
              alphas_text: str, workspace: Workspace, request: gr.Request | None = None,
              seeds: float = 1, density: float = SWEEP_DENSITY, oauth_token: gr.OAuthToken | None = None):
    """Yield a SweepView after each α (all its seeds measured); one gr.Error line on bad input.

    `seeds` and `density` follow `request`: gradio puts the request in its place and the Seeds box's and the
    Density slider's values after it. Density applies to DARE / DELLA only (sweep_recipe)."""
    ws = request_workspace(workspace, request)
    try:
        refs = [check_model_ref(ref, ws) for ref in (model_a, model_b)]
        sets = read_sets(set_files(demo, uploads, ws))
        alphas = parse_alphas(alphas_text)
        seed_list = sweep_seeds(method, seeds)
        passages = sum(len(item.docs) for items in sets.values() for item in items)
        merges = len(alphas) * len(seed_list)
        check_pairs(passages * merges, ws, job=f"this sweep ({passages:,} passages × {merges} merges)")
        first = sweep_recipe(method, *refs, alphas[0], density)  # a bad density: one line, before anything runs
        if ws.hosted:  # a streamed sweep writes one merge at a time into the visitor's folder
            scratch = preview(first, ws.outputs_dir, devices_for(device),
                              token=hub_token(workspace, oauth_token))
            check_quota(ws, scratch.plan.bytes_written, job="the sweep's scratch merge")
    except MergeDeskError as error:
        raise gr.Error(str(error), print_exception=False) from None
    points, mode, result, started = [], "", None, time.monotonic()
    yield SweepView(f"Merging A and B at α = {alphas[0]:g}…", None, None, gr.Dropdown(choices=[], value=None), None)
    try:
        with (jobs.running(session_id(request), "sweep") as cancel,
              MONITOR.job(job_label(ws, "sweep", f"{Path(refs[0]).name} → {Path(refs[1]).name}"))):
            for point, mode in sweep_points(*refs, sets, alphas=alphas, method=method, device=device, cancel=cancel,
                                            seeds=len(seed_list), density=density,
                                            scratch=ws.outputs_dir if ws.hosted else None,
                                            token=hub_token(workspace, oauth_token)):
                points.append(point)
                if len(points) % (len(sets) * len(seed_list)) == 0:
                    done = alphas[:len(points) // (len(sets) * len(seed_list))]
                    result = SweepResult(*refs, method, mode, done, list(sets), points, seed_list, density)
                    following = f" · merging at α = {alphas[len(done)]:g}…" if len(done) < len(alphas) else ""
                    left = eta_text(eta(len(done), len(alphas), time.monotonic() - started))
                    yield SweepView(f"{len(done)}/{len(alphas)} α's measured (merges made in {mode}) · {left}"
                                    f"{following}",
                                    sweep_figure(result), metrics_table(result), _picker(result), result.to_dict())
    except MergeCancelled:
        yield SweepView("**■ Stopped.** The α's measured so far are shown.")
        return
    except MergeDeskError as error:
        raise gr.Error(str(error), print_exception=False) from None
    yield SweepView(f"**✓ Swept** {len(alphas)} α's on {len(sets)} set(s), merges made in {mode}. "
                    f"{seeds_note(method, seeds, seed_list)}")


def seeds_note(method: str, asked: float, seed_list: list[int]) -> str:
    """What the Seeds box did, in words."""
    if len(seed_list) > 1:
        return f"Each α merged with seeds 0 … {len(seed_list) - 1}: curves are the mean, bands the min–max."
    if asked and asked > 1:
        return f"{method} is deterministic: seeds do not apply, one merge per α."
    return ""


stop_sweep = jobs.stopper("sweep", "Stopping after the current α…", "stop_sweep")


def use_alpha(result: dict | None, alpha: float | None) -> tuple[str, FormState | None]:
    """(message, the Merge form holding the recipe of the merge at α) — None when there is nothing to use."""
    if not result:
        return "✗ Run a sweep first.", None
    if alpha is None:
        return "✗ Pick the α to keep.", None
    recipe = sweep_recipe(result["method"], result["model_a"], result["model_b"], float(alpha),
                          result.get("density", SWEEP_DENSITY))
    form = yaml_to_form(to_yaml(recipe))
    message = f"✓ The Merge tab now holds the {result['method']} merge at α = {float(alpha):g}: check it and merge."
    return message, form


def clicked_alpha(text: str):
    """The α picker set to the clicked point's α ("0.3@1712345678" → 0.3); unchanged on anything else."""
    try:
        return float(str(text).split("@")[0])
    except ValueError:
        return gr.skip()


def metrics_table(result: SweepResult) -> pd.DataFrame:
    """One row per α; a column per set and metric (the mean over the seeds), rounded to 4 places, and
    with more than one seed that metric's min and max over them."""
    frame = pd.DataFrame({"α": result.alphas})
    for name in result.set_names:
        for metric in SHOWN_METRICS:
            spread = result.spread(name, metric)
            frame[f"{name} {metric}"] = [round(s.mean, 4) for s in spread]
            if len(result.seeds) > 1:
                frame[f"{name} {metric} min"] = [round(s.min, 4) for s in spread]
                frame[f"{name} {metric} max"] = [round(s.max, 4) for s in spread]
    return frame


def set_files(demo: list[str] | None, uploads: list[str] | None, ws: Workspace) -> list[tuple[str, str]]:
    """(name, path) for read_sets: the chosen demo sets, then each upload named after its file, cleaned.

    The upload's file name is the visitor's to choose: it is only a label (letters, digits, '.',
    '_', '-'), never parsed for a path (`x=private.jsonl` → "x_private"). A demo name must be one
    of the demo sets, and hosted, an upload's path must lie in gradio's upload folder: nothing
    else on the server is opened, and the refusal reads the same whether such a file exists or not.
    """
    known = demo_set_names()
    files = []
    for name in demo or []:
        if name not in known:
            raise RerankError(f"unknown demo set {str(name)!r}: choose from {', '.join(known)}")
        files.append((name, str(DEMO_SETS / name / "eval.jsonl")))
    uploaded = Path(gr_utils.get_upload_folder()).resolve()
    for path in uploads or []:
        label = re.sub(r"[^\w.-]+", "_", Path(path).stem).strip("._")[:60] or "upload"
        if ws.hosted and uploaded not in Path(path).resolve().parents:
            raise RerankError(f"set file {label!r} is not an uploaded file: upload the JSONL file again")
        files.append((label, str(path)))
    if not files:
        raise RerankError("choose a demo set or upload a labelled JSONL file to measure the merges on")
    return files


def parse_alphas(text: str) -> list[float]:
    """'0, 0.25, 0.5' → [0.0, 0.25, 0.5]; one line on anything else."""
    try:
        alphas = [float(part) for part in str(text or "").replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise RerankError(f"α values {text!r}: write numbers separated by commas, e.g. 0, 0.5, 1") from None
    if not alphas:
        raise RerankError("give at least one α, e.g. 0, 0.5, 1")
    return alphas


def demo_set_names() -> list[str]:
    return sorted(p.parent.name for p in DEMO_SETS.glob("*/eval.jsonl"))


def _picker(result: SweepResult):
    return gr.Dropdown(choices=[(f"{a:g}", a) for a in result.alphas], value=None)
