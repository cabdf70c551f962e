"""The recipe form of the Merge tab: method, base model, model rows, parameters and the YAML box, in sync.

    form = build_merge_form(app, workspace, ws_state)   # form.recipe_yaml feeds /plan and /merge

The controls are generated from the method declarations (ui/merge/recipe_form.py holds the form
state and its conversion to and from a recipe). Model rows and parameter controls are drawn
by gr.render with stable keys and redrawn only when the rows, the method or the model list
change, so a slider is never redrawn under the pointer. Editing the YAML box (then leaving
it) makes the form follow; editing the form rewrites the YAML.

Every event here is private (absent from the API). Edits take milliseconds and share the
lane FORM, which has no concurrency limit, so no visitor's edit waits behind another's; within
one session one_edit_at_a_time runs them one after another, so two quick edits (a text box's
blur and a click) never both start from the same old form. (They stay queued: with
queue=False the rows were not redrawn after "+ Add a model" in tests/test_browser.py.)
"""
from __future__ import annotations

import asyncio
import weakref
from collections import namedtuple
from dataclasses import dataclass

import gradio as gr

from core import ASSETS
from core.app.models import packaged_ref
from core.app.workspace import RECIPE_EXPORT_BYTES, Workspace
from core.demo.build import demo_pair
from core.errors import RecipeError
from core.merge.methods import METHODS
from core.merge.stages import is_multi_stage
from core.units import DTYPES
from ui.common import SKIP, keyed, model_choices, request_workspace
from ui.merge.recipe_form import (FormState, add_row, base_help, change_method, check_form, form_to_yaml, global_params,
                                  is_number, needs_text, new_form, remove_row, row_params, set_field, set_param,
                                  set_row_model, setting_text, shown_value, shows_base, slider_range, slider_step,
                                  trimmed_note, yaml_to_form)

HELP = ("Pick a method and the models to mix — or paste a mergekit recipe on the right — then "
        "**Check** to see what it needs and **Merge** to write the new model.")
EXAMPLES_DIR = ASSETS / "recipes"
FORM = "form"  # tag of the edits that one_edit_at_a_time serialises per session
EDIT = {"api_visibility": "private", "concurrency_id": FORM, "concurrency_limit": None}
METHOD_CHOICES = [(method.label, method.name) for method in METHODS.values()]
DTYPE_CHOICES = [("each tensor's own", "")] + [(name, name) for name in DTYPES]
SYNCED = ("state", "recipe_yaml", "recipe_status")  # what every edit shows: the new form, its YAML, its status


@dataclass
class FormControls:
    """What the rest of the Merge tab needs from the form."""

    state: gr.State  # the FormState
    layout: gr.State  # a counter: bumping it redraws the rows
    choices: gr.State  # [(label, ref)] for the model pickers
    base: gr.Dropdown
    recipe_yaml: gr.Code  # the recipe the Check and Merge buttons run
    shown: list  # a component per FormView field, in its order: what a handler that replaces the whole form updates

    def updates(self, new: FormState | None, layout: int) -> dict:
        """{component: value} that shows `new` (show_form's fields, one per component); {} for None."""
        return {} if new is None else dict(zip(self.shown, show_form(new, layout), strict=True))


def build_merge_form(app: gr.Blocks, workspace: Workspace, ws: gr.State) -> FormControls:
    """Add the form to the current Blocks; its rows are drawn on page load."""
    start = start_form(workspace)
    state = gr.State(start)
    layout = gr.State(0)
    choices = gr.State([] if workspace.hosted else model_choices(workspace))  # hosted: filled per visitor on load
    gr.Markdown(HELP, elem_classes="help")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                method = gr.Dropdown(METHOD_CHOICES, value=start.method, label="Merge method", elem_id="merge-method")
                example = gr.Dropdown(example_names(), value=None, label="…or start from an example recipe")
            method_info = gr.Markdown(method_markdown(start.method))
            base = gr.Dropdown(choices.value, value=None, allow_custom_value=True, label="Base model",
                               elem_id="base-model",
                               info=base_help(start.method), visible=shows_base(start))

            @gr.render(inputs=[state, choices], triggers=[layout.change])
            def draw_rows(form: FormState, refs: list):  # `on` is defined below, before any redraw
                for index, row in enumerate(form.rows, 1):
                    with gr.Row(key=f"row-{row.key}", equal_height=True, elem_classes="model-row"):
                        # interactive=True: a redraw while the picker's change event runs left it disabled
                        picker = gr.Dropdown(refs, value=row.model or None, allow_custom_value=True, scale=4,
                                             interactive=True,
                                             label=f"Model {index}", key=f"model-{row.key}",
                                             info="pick one, or type a folder or a Hub id" if index == 1 else None)
                        on(picker.change, _edit(set_row_model, row.key), [state, picker], *SYNCED)
                        for param in row_params(form.method):
                            _param_control(form, row.key, param, on, state, first=index == 1)
                        remove = gr.Button("✕", key=f"remove-{row.key}", size="sm", scale=0, min_width=44)
                        on(remove.click, _reshape(remove_row, row.key), [state, layout], "layout", *SYNCED)
                add = gr.Button("+ Add a model", key="add-model", size="sm")
                on(add.click, _reshape(add_row), [state, layout], "layout", *SYNCED)
                if global_params(form):
                    gr.Markdown("**Method settings**", key="globals-title")
                    with gr.Row(key=f"globals-{form.key}-{form.method}"):
                        for param in global_params(form):
                            _param_control(form, None, param, on, state, first=True)

            with gr.Row():
                dtype = gr.Dropdown(DTYPE_CHOICES, value="", label="Working dtype",
                                    info="inputs are rounded to it; the math is float32")
                out_dtype = gr.Dropdown(DTYPE_CHOICES, value="", label="Output dtype", info="what is written")
                tokenizer = gr.Textbox(label="Tokenizer from", placeholder="the base's, rows unchanged", info="'base', 'union' (every input's tokens) or a model: rows realigned to its vocabulary")
        with gr.Column(scale=2):
            recipe_yaml = gr.Code(form_to_yaml(start), language="yaml", interactive=True, elem_id="recipe-yaml",
                                  label="Recipe YAML: edit, then click outside", wrap_lines=True)
            recipe_status = gr.Markdown(form_status(start))
            export = gr.Button("Export .yml", size="sm")
            export_file = gr.File(label="Recipe file", visible=False)

    shown = dict(recipe_yaml=recipe_yaml, layout=layout, state=state, recipe_status=recipe_status, method=method,
                 method_info=method_info, base=base, dtype=dtype, out_dtype=out_dtype, tokenizer=tokenizer)

    def on(event, handler, inputs: list, *names: str) -> None:
        """Wire `event` to a handler returning FormView; the event shows (outputs) the fields `names`."""
        wired, outputs = keyed(handler, FormView, **{name: shown[name] for name in names})
        event(wired, inputs, outputs, **EDIT)

    on(method.change, on_method, [state, layout, method], "layout", *SYNCED, "method_info", "base")
    on(example.change, on_example, [example, layout], *FormView._fields)
    on(recipe_yaml.blur, on_yaml, [recipe_yaml, state, layout], *FormView._fields[1:])
    on(base.change, _edit(set_field, "base_model"), [state, base], *SYNCED)
    on(dtype.change, _edit(set_field, "dtype"), [state, dtype], *SYNCED)
    on(out_dtype.change, _edit(set_field, "out_dtype"), [state, out_dtype], *SYNCED)
    on(tokenizer.blur, _edit(set_field, "tokenizer_source"), [state, tokenizer], *SYNCED)
    export.click(export_recipe, [recipe_yaml, ws], export_file, api_visibility="private")
    app.load(refresh_models, [ws, layout], [choices, layout, base], api_visibility="private")
    one_edit_at_a_time(app)
    return FormControls(state, layout, choices, base, recipe_yaml, [shown[name] for name in FormView._fields])


def one_edit_at_a_time(app: gr.Blocks) -> None:
    """Run each session's FORM events one after another; other sessions' run beside them.

    A lock inside the handler would come too late: gradio's process_api reads the form's
    gr.State before calling the handler and stores the new one after it returns, so the lock
    (one per session, dropped when no event holds or awaits it) is taken around process_api.
    """
    run, locks = app.process_api, weakref.WeakValueDictionary()

    async def process_api(*args, **kwargs):
        fn, session = kwargs.get("block_fn", args[0] if args else None), kwargs.get("session_hash")
        fn = app.fns.get(fn) if isinstance(fn, int) else fn
        if getattr(fn, "concurrency_id", None) != FORM or session is None:
            return await run(*args, **kwargs)
        lock = locks.get(session) or locks.setdefault(session, asyncio.Lock())
        async with lock:
            return await run(*args, **kwargs)

    app.process_api = process_api


def start_form(workspace: Workspace) -> FormState:
    """What a first visit shows: the demo recipe (linear, general-ce + cooking-ce) when the demo models
    are built (python -m core demo), else a linear merge of the packaged MiniLM with a model to pick."""
    pair = demo_pair(workspace)
    if pair:
        return new_form("linear", models=pair)
    return new_form("linear", models=(packaged_ref(workspace), ""))


def refresh_models(workspace: Workspace, layout: int, request: gr.Request | None = None):
    """Re-list the models (new outputs included) and redraw the rows with them."""
    choices = model_choices(request_workspace(workspace, request))
    return choices, layout + 1, gr.Dropdown(choices=choices)


# What a form event shows, field by field (ui.common.keyed); a field left out keeps what the page shows.
# layout: bumped, the rows are redrawn; state: the FormState.
FormView = namedtuple("FormView", "recipe_yaml layout state recipe_status method method_info base dtype out_dtype "
                      "tokenizer", defaults=(SKIP,) * 10)


def on_method(form: FormState, layout: int, method: str) -> FormView:
    if method == form.method:
        return FormView()
    new = change_method(form, method)
    note = trimmed_note(form, new)
    status = f"⚠ {note}. {form_status(new)}" if note else form_status(new)
    return FormView(form_to_yaml(new), layout + 1, new, status, method_info=method_markdown(method),
                    base=_base_update(new))


def on_yaml(text: str, form: FormState, layout: int) -> FormView:
    """The YAML box lost focus: make the form follow it, or say why it cannot."""
    try:
        if is_multi_stage(text or ""):  # the form holds one recipe: it stays as it was, Check and Merge run every stage
            return FormView(recipe_status="✓ A multi-stage recipe: the form shows one recipe, so it is left as "
                                          "it was; Check plans every stage, Merge runs them in order")
        new = yaml_to_form(text)
    except RecipeError as error:
        return FormView(recipe_status=f"✗ {error}")
    if new == form:
        return FormView(recipe_status=form_status(form))
    return show_form(new, layout)._replace(recipe_yaml=SKIP)  # the box keeps the text as typed


def on_example(name: str | None, layout: int) -> FormView:
    """Load an example recipe from assets/recipes (its comments stay in the YAML box)."""
    if not name:
        return FormView()
    text = (EXAMPLES_DIR / name).read_text(encoding="utf-8")
    return show_form(yaml_to_form(text), layout)._replace(recipe_yaml=text)


def show_form(new: FormState, layout: int) -> FormView:
    """Every field of the form showing `new`: the YAML, a redraw of the rows, the state, its status and the fields."""
    return FormView(form_to_yaml(new), layout + 1, new, form_status(new), **_fields(new))


def export_recipe(text: str, workspace: Workspace, request: gr.Request | None = None):
    """The YAML box as recipe.yml in the visitor's downloads folder: one file, overwritten, bounded."""
    data = (text or "").encode("utf-8")
    if len(data) > RECIPE_EXPORT_BYTES:
        gr.Warning(f"the recipe is {len(data):,} bytes, more than the {RECIPE_EXPORT_BYTES:,} an export may be: "
                   "shorten it")
        return gr.File(visible=False)
    path = request_workspace(workspace, request).downloads_dir / "recipe.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return gr.File(str(path), visible=True)


def form_status(form: FormState) -> str:
    """One line under the YAML box: complete, or the first thing to fix."""
    empty = next((index for index, row in enumerate(form.rows, 1) if not row.model), None)
    if empty is not None:
        return f"Model {empty} is not picked yet: choose one, type a folder or Hub id, or remove the row."  # not an error
    try:
        check_form(form)
    except RecipeError as error:
        return f"✗ {error}"
    if form.slices:
        return (f"✓ The recipe is complete: {len(form.slices)} slices, {sum(out.length for out in form.slices)} output "
                "layers (slices are edited in the YAML box; the rows list their models). Check it against the models below.")
    return "✓ The recipe is complete: Check it against the models below."


def method_markdown(method: str) -> str:
    spec = METHODS[method]
    return f"[{spec.label}]({spec.paper}) takes {needs_text(method)}."


def example_names() -> list[tuple[str, str]]:
    """(label, file name) per example recipe, offline ones first: an `# offline:` comment line marks those that
    run on the demo models; the others need the Hugging Face Hub."""
    offline = {p.name: "\n# offline:" in p.read_text(encoding="utf-8") for p in EXAMPLES_DIR.glob("*.yml")}
    return [(f"{name} · {'offline, demo models' if local else 'needs the Hub'}", name)
            for name, local in sorted(offline.items(), key=lambda item: (not item[1], item[0]))]


def _param_control(form: FormState, key: int | None, param, on, state: gr.State, *, first: bool) -> None:
    """A checkbox, a slider, or — for a gradient or filter list — a text box, keyed for redraws."""
    value = shown_value(form, key, param)
    options = {"label": param.name, "info": param.help if first else None, "min_width": 180, "interactive": True,
               "key": f"{'g' + str(form.key) if key is None else key}-{param.name}"}
    handler = _edit(set_param, key, param.name)
    if isinstance(value, bool):
        box = gr.Checkbox(value, **options)
        on(box.change, handler, [state, box], *SYNCED)
    elif is_number(value):
        low, high = slider_range(param, value)
        slider = gr.Slider(low, high, value=value, step=slider_step(low, high), **options)
        on(slider.release, handler, [state, slider], *SYNCED)
    else:
        text = gr.Textbox(setting_text(value), **dict(options, label=f"{param.name} (per layer / filter)"))
        on(text.blur, handler, [state, text], *SYNCED)


def _edit(change, *args):
    """A handler for one control: apply change(form, *args, value), refresh the YAML box and status."""
    def handler(form: FormState, value) -> FormView:
        try:
            new = change(form, *args, value)
        except RecipeError as error:
            return FormView(recipe_status=f"✗ {error}")
        if new == form:
            return FormView()
        return FormView(form_to_yaml(new), state=new, recipe_status=form_status(new))
    return handler


def _reshape(change, *args):
    """A handler for a change of rows: like _edit, and redraw the rows."""
    def handler(form: FormState, layout: int) -> FormView:
        new = change(form, *args)
        return FormView(form_to_yaml(new), layout + 1, new, form_status(new))
    return handler


def _fields(form: FormState) -> dict:
    return dict(method=gr.Dropdown(value=form.method, choices=METHOD_CHOICES), method_info=method_markdown(form.method),
                base=_base_update(form), dtype=form.dtype, out_dtype=form.out_dtype, tokenizer=form.tokenizer_source)


def _base_update(form: FormState):
    return gr.Dropdown(value=form.base_model or None, visible=shows_base(form), info=base_help(form.method),
                       allow_custom_value=True)
