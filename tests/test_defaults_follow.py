"""The model pickers follow the workspace (issue 17): on page load, after a merge, after the demo build;
hosted, a visitor's first view and pickers name no server path and no one else's merge; a model compared
with itself says so. (Stop after a finished merge keeping "✓ Merged": tests/test_browser_loop.py.)"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from core.app.models import find_models, same_model
from core.app.paths import check_model_ref
from core.app.sessions import session_workspace
from core.app.workspace import PACKAGED_REF, SESSIONS, Workspace, packaged_minilm
from core.demo.build import demo_folder
from tests.app_server import browser_event, launched, local_workspace
from ui.common import default_pair, refresh_pair
from ui.layout import build_app
from ui.playground import rerank_compare


def _model(folder: Path) -> Path:
    """A folder the pickers list (config.json is what they look for)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def _merge(folder: Path, base: str) -> Path:
    _model(folder)
    (folder / "mergekit_config.yml").write_text(f"merge_method: linear\nbase_model: {base}\nmodels:\n"
                                                f"  - model: {base}\n  - model: x\n")
    return folder


def _hosted(root: Path) -> Workspace:
    """A hosted workspace with a public model, an old run's merge and another session's merge, both
    based on a server path."""
    root = root.resolve()
    ws = Workspace(root, root / "models", root / "outputs", hosted=True)
    _model(ws.models_dir / "public-ce")
    _merge(ws.outputs_dir / "old-run", str(root / "secret-base"))
    _merge(ws.outputs_dir / SESSIONS / "othersession" / "their-merge", str(root / "secret-base"))
    return ws


def _leaks(text: str, ws: Workspace) -> list[str]:
    """What of the server a visitor must not see, found in `text`."""
    secrets = [str(ws.root), "old-run", "their-merge", "othersession", "secret-base"]
    if packaged_minilm() is not None:
        secrets.append(str(packaged_minilm()))
    return [secret for secret in secrets if secret in text]


def _chain(blocks, trigger: int) -> list[int]:
    """The events chained after event `trigger`, in order (its .then/.success follow-ups, transitively)."""
    chained, frontier = [], [trigger]
    while frontier:
        frontier = [i for i, fn in blocks.fns.items() if fn.trigger_after in frontier]
        chained += frontier
    return chained


def _after(blocks, trigger: int) -> list[str]:
    return [getattr(blocks.fns[i].fn, "__name__", None) for i in _chain(blocks, trigger)]


def test_after_a_merge_the_pickers_start_at_its_base_and_the_merge(tmp_path):
    ws = local_workspace(tmp_path)
    general, cooking = (_model(demo_folder(ws.models_dir, name)) for name in ("general-ce", "cooking-ce"))
    refs = {choice.folder: choice.ref for choice in find_models(ws)}
    assert default_pair(ws) == (refs[general], refs[cooking])  # the demo pair before any merge
    merged = _merge(ws.outputs_dir / "mix", refs[general])
    a, b = refresh_pair(ws)
    listed = {ref for _, ref in a.choices}
    assert (a.value, b.value) == (refs[general], engine_ref_of(merged, ws)) and b.value in listed


def engine_ref_of(folder: Path, ws: Workspace) -> str:
    return next(choice.ref for choice in find_models(ws) if choice.folder == folder)


def test_a_merge_without_base_model_starts_a_at_its_first_model(tmp_path):
    ws = local_workspace(tmp_path)
    first = _model(ws.models_dir / "first")
    folder = _model(ws.outputs_dir / "mix")
    (folder / "mergekit_config.yml").write_text(f"merge_method: linear\nmodels:\n  - model: {first}\n  - model: y\n")
    assert default_pair(ws) == (engine_ref_of(first, ws), engine_ref_of(folder, ws))


def test_page_load_a_merge_and_the_demo_build_each_refresh_every_tabs_pickers(tmp_path):
    blocks = build_app(local_workspace(tmp_path))
    pickers = ["refresh_pair", "refresh_pair", "refresh_decoders"]  # Playground, Sweep, Generate
    load = [i for i, fn in blocks.fns.items() if fn.targets and fn.targets[0][1] == "load"
            and getattr(fn.fn, "__name__", None) == "refresh_pair"]
    assert len(load) == 1 and _after(blocks, load[0]) == pickers[1:]
    merge = next(i for i, fn in blocks.fns.items() if fn.api_name == "merge")
    assert _after(blocks, merge) == ["refresh_models", *pickers]
    build = next(i for i, fn in blocks.fns.items() if getattr(fn.fn, "__name__", None) == "build_demo")
    assert _after(blocks, build) == ["on_built", *pickers]


def test_hosted_defaults_name_only_the_visitors_own_merges(tmp_path):
    ws = _hosted(tmp_path)
    mine = session_workspace(ws, "mine")
    assert not _leaks(json.dumps(default_pair(mine)), ws)
    assert not _leaks(json.dumps([[c.label, c.ref] for c in find_models(mine)]), ws)
    merged = _merge(mine.outputs_dir / "my-merge", str(ws.root / "secret-base"))
    base, merge = default_pair(mine)
    assert merge == str(merged.relative_to(ws.root)) and check_model_ref(merge, mine)
    assert not _leaks(json.dumps([base, merge]), ws)  # the base is a server path: A falls back to a public model


def test_hosted_packaged_model_is_named_without_its_server_path(tmp_path):
    if packaged_minilm() is None:
        pytest.skip("the packaged MiniLM is not installed")
    ws = _hosted(tmp_path)
    assert [c.ref for c in find_models(ws) if c.source == "packaged"] == [PACKAGED_REF]
    assert check_model_ref(PACKAGED_REF, ws) == str(packaged_minilm())


def test_hosted_first_view_and_a_fresh_visitors_pickers_show_no_server_path(tmp_path):
    """The attack: another session's merge and an old run's merge are on disk; a new visitor reads the page's
    config (what the first render shows) and runs the page-load events; nothing names them or a server path."""
    ws = _hosted(tmp_path)
    with launched(ws) as (blocks, _):
        config = httpx.get(f"{blocks.local_url}config").text
        assert json.loads(config)["components"] and not _leaks(config, ws)
        session = uuid.uuid4().hex[:10]
        loads = [i for i, fn in blocks.fns.items() if any(kind == "load" for _, kind in fn.targets)]
        loads += [i for load in loads for i in _chain(blocks, load)]
        shown = []
        for index in loads:  # every load event and every follow-up, as a browser would run them
            reply = browser_event(blocks, index, [None] * len(blocks.fns[index].inputs), session)
            shown.append(json.dumps(reply.get("output", {}), default=str))
        assert not _leaks("\n".join(shown), ws)
        assert "public-ce" in "\n".join(shown)  # the load events did run and list the public model


def test_comparing_a_model_with_itself_says_so(bert_cls_family, tmp_path):
    ws = local_workspace(tmp_path)
    model = str(bert_cls_family[0])
    status, *_ = rerank_compare(model, model + "/", "q", "a\nb", None, "cpu", False, ws)
    assert "A and B are the same model" in status
    status, *_ = rerank_compare(model, str(bert_cls_family[1]), "q", "a\nb", None, "cpu", False, ws)
    assert "same model" not in status
    assert same_model("org/x", "org/x") and not same_model("org/x", model)

