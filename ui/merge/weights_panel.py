"""The Merge tab's "Weights from data" section: a few examples in, the model rows' weight sliders filled.

    build_weights_from_data(form, device, ws)   # inside build_merge_panel, below the form

Upload 5–50 examples of the target task (JSONL: `{"input", "output"}` for LLMs, `{"query",
"pos", "neg"}` for embedders and rerankers) and pick τ: core.cocktail.weights computes each row's
loss and the weights softmax(−loss/τ) (LM-Cocktail's mix_models_with_data), which replace the
rows' `weight` values; the YAML box and the sliders follow. The event is private (no API name)
and runs in the shared "gpu" queue since it loads every model in turn; Stop ends it before the
next model (ui.jobs: only this visitor's). No tensor math here.
"""
from __future__ import annotations

from typing import Callable

import gradio as gr

from core.app.paths import check_model_ref
from core.app.quota import check_pairs
from core.app.workspace import Workspace
from core.cocktail.weights import DEFAULT_TAU, DataWeights, data_weights, read_examples
from core.errors import MergeCancelled, MergeDeskError
from core.merge.methods import METHODS
from core.progress import eta, eta_text
from ui import jobs
from ui.common import PRIVATE, QUEUE, hub_token, request_workspace, session_id
from ui.merge.form import FormControls
from ui.merge.recipe_form import FormState, ModelRow, set_param

HELP = ("Give a few examples of the task you merge for; each model's loss on them sets its weight, "
        "softmax(−loss / τ), as LM-Cocktail does. Examples (JSONL): `{\"input\": …, \"output\": …}` for LLMs, "
        "`{\"query\": …, \"pos\": […], \"neg\": […]}` for embedders and rerankers.")
NEAR_UNIFORM = 0.05  # weights whose max − min is below this barely differ from an even mix


def build_weights_from_data(form: FormControls, device: gr.Dropdown, ws: gr.State) -> None:
    """Add the section (an accordion) to the current Blocks and wire its button to the form."""
    with gr.Accordion("Weights from data", open=False):
        gr.Markdown(HELP, elem_classes="help")
        with gr.Row(equal_height=True):
            examples = gr.File(label="Examples (JSONL)", file_types=[".jsonl", ".json"], scale=3)
            tau = gr.Number(DEFAULT_TAU, label="τ (temperature)", minimum=0.01, scale=1,
                            info=f"larger: flatter weights (LM-Cocktail: {DEFAULT_TAU:g})")
            with gr.Column(scale=1, min_width=160):
                fill = gr.Button("Fill the weights from data")
                stop = gr.Button("Stop", variant="stop", size="sm")
        outcome = gr.Markdown()
        stop_note = gr.Markdown(elem_id="weights-stop-note")  # what Stop did, beside the outcome, never over it

    def on_fill(state: FormState, examples_file: str | None, tau_value: float, device_spec: str, layout: int,
                workspace: Workspace, request: gr.Request, oauth_token: gr.OAuthToken | None,
                bar: gr.Progress = gr.Progress()):
        def weighed(done: int, total: int, elapsed: float) -> None:
            bar((done, total), desc=f"model {done}/{total} weighed · {eta_text(eta(done, total, elapsed))}")

        message, new = fill_weights(state, examples_file, tau_value, device_spec, workspace, request, oauth_token,
                                    progress=weighed)
        return {outcome: message, **form.updates(new, layout)}

    fill.click(on_fill, [form.state, examples, tau, device, form.layout, ws], [outcome, *form.shown],
               concurrency_id=QUEUE, concurrency_limit=1, **PRIVATE)
    stop.click(stop_weights, None, stop_note, concurrency_limit=None, **PRIVATE)


def fill_weights(state: FormState, examples_file: str | None, tau: float, device: str, workspace: Workspace,
                 request: gr.Request | None = None,
                 oauth_token: gr.OAuthToken | None = None, *,
                 progress: Callable[[int, int, float], None] | None = None) -> tuple[str, FormState | None]:
    """(Markdown outcome, the form with the new weights — None when nothing could be computed);
    progress: data_weights' per-model callback (the page's bar with its time left)."""
    if not examples_file:
        return "✗ Upload a JSONL file of examples first.", None
    try:
        rows = weighted_rows(state)
        ws = request_workspace(workspace, request)
        refs = [check_model_ref(row.model, ws) for row in rows]
        examples = read_examples(examples_file)
        scored = sum(len(e.get("pos") or []) + len(e.get("neg") or []) or 1 for e in examples)  # LLM examples: 1
        check_pairs(scored * len(refs), ws, job=f"these examples ({scored:,} texts × {len(refs)} models)")
        with jobs.running(session_id(request), "weights") as cancel:
            result = data_weights(refs, examples, tau=float(tau or DEFAULT_TAU), device=device,
                                  token=hub_token(workspace, oauth_token), cancel=cancel, progress=progress)
    except MergeCancelled:
        return "■ Stopped: the weights are unchanged.", None
    except MergeDeskError as error:
        return f"✗ {error}", None
    new = state
    for row, weight in zip(rows, result.weights):
        new = set_param(new, row.key, "weight", round(weight, 4))
    return weights_markdown(result, rows), new


stop_weights = jobs.stopper("weights", "Stopping after the current model…", "stop_weights")


def weighted_rows(state: FormState) -> list[ModelRow]:
    """The rows whose weight the data decides: every model row (but the base, for methods that use one)."""
    method = METHODS[state.method]
    if method.param("weight") is None:
        raise MergeDeskError(f"{method.label} has no per-model weights: pick linear (LM-Cocktail) or task arithmetic")
    uses_base = method.base != "unused" and state.base_model
    rows = [row for row in state.rows if not (uses_base and row.model == state.base_model)]
    empty = next((index for index, row in enumerate(rows, 1) if not row.model), None)
    if empty is not None or not rows:
        raise MergeDeskError(f"model {empty or 1} is not picked yet: choose the models before weighing them")
    return rows


def weights_markdown(result: DataWeights, rows: list[ModelRow]) -> str:
    """A small table: model, loss, weight; what the loss was; and a hint when τ flattened the weights.

    Rerankers' losses differ by a few tenths, so LM-Cocktail's τ = 5 (sized for LLM losses) gives them
    near-uniform weights (spread under NEAR_UNIFORM): the data then decides next to nothing.
    """
    lines = ["| model | loss | weight |", "|---|---:|---:|"]
    lines += [f"| `{row.model}` | {loss:.4f} | **{weight:.4f}** |"
              for row, loss, weight in zip(rows, result.losses, result.weights)]
    spread = max(result.weights) - min(result.weights)
    hint = (f"\n\n⚠ The weights are near-uniform (they differ by {spread:.3f}): τ = {result.tau:g} flattens "
            f"losses this close; lower τ (e.g. {result.tau / 10:g}) to let the data decide."
            if len(result.weights) > 1 and spread < NEAR_UNIFORM else "")
    return (f"✓ Weights set from {result.kind} losses, softmax(−loss / {result.tau:g}):\n\n" + "\n".join(lines)
            + hint)
