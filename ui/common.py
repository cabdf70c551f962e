"""What every panel shares: the heavy-job lane, the private-event setting, who the visitor is, the model pickers.

Panels import these from here, not from each other, so no panel depends on another's module (the Merge
form, which other panels fill in, aside; tests/test_architecture.py checks it).
"""
from __future__ import annotations

import functools
import inspect
import os
from dataclasses import replace

import gradio as gr

from core.app.models import choice_for, find_models, latest_merge, merge_base
from core.app.paths import engine_ref
from core.app.sessions import downloads_root, session_name, session_workspace
from core.app.workspace import Workspace
from core.demo.build import demo_pair
from core.devices import list_devices
from core.io.reference import HUB_ID

QUEUE = "gpu"  # concurrency_id of every heavy job (merge, comparison, sweep, weights): one at a time on the machine
PRIVATE = {"api_visibility": "private"}
SKIP = gr.skip()  # an output left as the page shows it


def session_id(request: gr.Request | None) -> str:
    """The visitor's session as a safe folder name (the client picks gradio's session hash, so it is
    cleaned: "../../home" becomes "home"); "local" for direct calls."""
    return session_name(getattr(request, "session_hash", None) or "local")


def request_workspace(workspace: Workspace, request: gr.Request | None) -> Workspace:
    """Hosted: the visitor's own session workspace; local: the workspace, downloads in the session's own folder."""
    if workspace.hosted:
        return session_workspace(workspace, session_id(request))
    return replace(workspace, downloads_dir=downloads_root(workspace) / session_id(request))


def hub_token(workspace: Workspace, oauth_token: gr.OAuthToken | None) -> str | bool | None:
    """The Hugging Face access for this visitor's Hub downloads. Hosted: their OAuth token when they
    signed in, else False (anonymous) — never None, which would send the server's own HF_TOKEN.
    Local: None, the saved login of whoever runs the app."""
    if not workspace.hosted:
        return None
    return oauth_token.token if oauth_token else False


def cache_owner(workspace: Workspace, request: gr.Request | None) -> str | None:
    """Whose loaded models a handler sees and unloads: hosted, this session's; local, all of them."""
    return session_id(request) if workspace.hosted else None


def job_label(ws: Workspace, kind: str, detail: str) -> str:
    """The memory gauge's name for a job ("merge my-model"). Every page polls the one gauge, so a
    hosted job is named by its kind alone: its models and output are the visitor's own business."""
    return kind if ws.hosted else f"{kind} {detail}"


def keyed(handler, view: type, **components) -> tuple:
    """(gradio handler, outputs) for a `handler` that returns or yields `view` NamedTuples.

    The gradio handler hands each one on as {component: value}, the field named like the component,
    so no update depends on its position in the outputs list; the plain `handler` stays a function
    tests call and unpack. An event may show only some fields (the others must stay gr.skip()): a
    component no field names fails here, when the page is built, and a value for a field the event
    does not show fails on the call, never as an update shifted onto another component.
    functools.wraps keeps the signature gradio reads to pass gr.Request.
    """
    unknown = set(components) - set(view._fields)
    if unknown:
        raise TypeError(f"{view.__name__} has no field {', '.join(sorted(unknown))}: its fields are {view._fields}")

    def as_dict(result) -> dict:
        shown = {components[name]: gr.skip() if is_skip(value) else value  # fresh: gradio may edit update dicts
                 for name, value in result._asdict().items() if name in components}
        lost = [name for name, value in result._asdict().items() if name not in components and not is_skip(value)]
        if lost:
            raise TypeError(f"{handler.__name__} set {', '.join(lost)}, which this event does not show")
        return shown

    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def generator(*args, **kwargs):
            results = handler(*args, **kwargs)
            try:
                for result in results:
                    yield as_dict(result)
            finally:
                results.close()  # gradio closed this one (Stop, page closed): close the handler now, not at GC
        return generator, list(components.values())

    @functools.wraps(handler)
    def plain(*args, **kwargs):
        return as_dict(handler(*args, **kwargs))
    return plain, list(components.values())


def is_skip(value) -> bool:
    return isinstance(value, dict) and value == SKIP


def device_choices() -> list[tuple[str, str]]:
    """(label, spec) for every device of this machine; the playground uses the same list."""
    return [(d.label, d.spec) for d in list_devices()]


def model_choices(ws: Workspace) -> list[tuple[str, str]]:
    """(label, reference) for every model picker: what core.app.models.find_models offers this workspace."""
    return [(choice.label, choice.ref) for choice in find_models(ws)]


def default_pair(ws: Workspace) -> tuple[str | None, str | None]:
    """Where the Playground's, the Sweep's and the Generate tab's A and B pickers start.

    (base of the latest merge, that merge), each as its picker choice's ref; a base that is no choice
    (a Hub id the recipe named, a folder elsewhere) as the recipe wrote it, except hosted, where a path
    outside the choices falls back to the first model. With no merge yet: the demo's general-ce and
    cooking-ce; else the first model twice (the Playground then says A and B are the same model).
    Hosted, `ws` must be the visitor's session workspace (request_workspace): only their merges count.
    """
    choices = find_models(ws)
    first = choices[0].ref if choices else None
    merge = latest_merge(ws)
    if merge is None:
        return demo_pair(ws) or (first, first)
    shown = choice_for(str(merge), choices, ws)
    base = merge_base(merge)
    known = choice_for(base, choices, ws)
    if known is not None:
        base = known.ref
    elif base is None or (ws.hosted and not HUB_ID.match(base)):
        base = first
    if shown is None:  # a merge folder without config.json: the picker does not list it, but it is the latest
        return base, str(merge.relative_to(ws.root)) if ws.hosted else engine_ref(merge)
    return base, shown.ref


def first_view(workspace: Workspace, choices=model_choices, pair=default_pair) -> tuple[list, str | None, str | None]:
    """(choices, A, B) the A/B pickers are built with. Hosted, nothing: the page is rendered once for every
    visitor before any session exists, so what a visitor may see is filled in per request on load."""
    if workspace.hosted:
        return [], None, None
    return (choices(workspace), *pair(workspace))


def picker_updates(choices: list[tuple[str, str]], pair: tuple[str | None, str | None]) -> tuple:
    """The A and B pickers' updates: these choices, starting at `pair`."""
    return tuple(gr.Dropdown(choices=choices, value=value) for value in pair)


def refresh_pair(workspace: Workspace, request: gr.Request | None = None) -> tuple:
    """The Playground's and the Sweep's A and B pickers for this visitor: their models, at default_pair."""
    ws = request_workspace(workspace, request)
    return picker_updates(model_choices(ws), default_pair(ws))


def follow_workspace(triggers: list, refreshes: list[tuple]) -> None:
    """Re-run each (handler, inputs, outputs) after every trigger (page load, a finished merge, the demo build),
    one after another, so the pickers and defaults follow the models on disk rather than those of launch time."""
    for trigger in triggers:
        for handler, inputs, outputs in refreshes:
            trigger = trigger(handler, inputs, outputs, **PRIVATE).then


def device_update():
    return gr.Dropdown(choices=device_choices())


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))
