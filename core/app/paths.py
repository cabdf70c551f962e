"""What a model reference typed by a visitor resolves to, and whether they may read it.

    check_model_ref("org/name", ws)           # a ref the engine may open, or a one-line error
    check_recipe_refs(recipe, ws)             # every reference of a recipe, checked

What a reference is follows from what it resolves to, not how it is spelled: `base` or `app.py`
beside the app is a path (and hosted, refused), never a pass. Hub ids they type are fetched with
their own access (core.io.reference.resolve_reference).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from core.app.workspace import PACKAGED_REF, Workspace, packaged_minilm
from core.errors import CheckpointError
from core.io.checkpoint import lies_within
from core.io.lora import split_reference
from core.io.reference import HUB_ID
from core.merge.recipe import MergeRecipe
from core.merge.slice_spec import renamed_models
from core.merge.tokenizer_spec import WORDS, renamed_spec


def check_model_ref(text: str, ws: Workspace) -> str:
    """The reference the engine should open for what a person typed, or a MergeDeskError.

    Local: the text, stripped. Hosted: the packaged model (by PACKAGED_REF or its folder), or a relative path whose real
    location (symlinks followed) lies in models_dir or outputs_dir, with no file inside it
    linking out of them. Whatever exists as a path (from root or the engine's current folder)
    is judged as that path, so `base` beside the app is refused; only a text that is no path
    there and looks like 'org/name' is a Hub id. The returned path is the one checked.

    Example:
        >>> check_model_ref("/etc", hosted_ws)
        MergeDeskError: model path '/etc' is not allowed here: absolute paths are refused on a hosted app; ...
    """
    ref = str(text or "").strip()
    if not ref:
        raise CheckpointError("a model is empty: pick one or type a folder or Hub id like 'org/name'")
    if not ws.hosted:
        return ref
    model, adapter = split_reference(ref)
    if adapter:  # model+lora: the adapter passes the same checks as any model
        return f"{check_model_ref(model, ws)}+{check_model_ref(adapter, ws)}"
    packaged = packaged_minilm()
    refuse = f"model path {ref!r} is not allowed here: {{}}; give a Hub id like 'org/name' or a folder under models/"
    if packaged is not None and ref == PACKAGED_REF:
        return str(packaged)
    if packaged is not None and Path(ref) == packaged:
        return ref
    if "://" in ref or ref.startswith(("~", "/", "\\")) or "\\" in ref:
        raise CheckpointError(refuse.format("URLs, '~' and absolute paths are refused on a hosted app"))
    if ".." in Path(ref).parts:
        raise CheckpointError(refuse.format("'..' is refused on a hosted app"))
    candidates = [base / ref for base in (ws.root, Path.cwd()) if os.path.lexists(base / ref)]
    if candidates:
        real, readable = resolved(candidates[0]), _readable_dirs(ws)
        if real is None:
            raise CheckpointError(refuse.format("it is a symbolic link that loops or leads nowhere"))
        if not lies_within(real, readable):
            raise CheckpointError(refuse.format("it lies outside this workspace"))
        # A folder inside may still hold links out (model.safetensors -> /root/…): refuse those too.
        leaving = next((f for f in sorted(real.rglob("*"))
                        if f.is_symlink() and ((target := resolved(f)) is None or not lies_within(target, readable))), None)
        if leaving is not None:
            raise CheckpointError(refuse.format(f"its file {str(leaving.relative_to(real))!r} links outside "
                                                "this workspace or in a loop"))
        return engine_ref(real)
    if HUB_ID.match(ref):
        return ref
    raise CheckpointError(f"model {ref!r} not found: no such folder in this workspace, and not a Hub id like 'org/name'")


def check_recipe_refs(recipe: MergeRecipe, ws: Workspace) -> MergeRecipe:
    """The recipe with every model reference passed through check_model_ref.

    Only `tokenizer_source: base | union` (and the tokenizer: block's source) are left as they
    are: there they mean mergekit's "the base model's vocabulary" and "every input's". As a model
    or base_model, `base` is a folder name like any other (and hosted, a folder `base` beside the
    app is the operator's, so it is refused).
    """
    def check(ref: str | None) -> str | None:
        return None if ref is None else check_model_ref(ref, ws)

    tokenizer = recipe.tokenizer_source
    return replace(recipe, base_model=check(recipe.base_model),
                   tokenizer_source=tokenizer if tokenizer in (None, *WORDS) else check(tokenizer),
                   tokenizer=renamed_spec(recipe.tokenizer, check),
                   models=[replace(entry, model=check(entry.model)) for entry in recipe.models],
                   slices=renamed_models(recipe.slices, check))


def _readable_dirs(ws: Workspace) -> list[Path]:
    packaged = packaged_minilm()
    return [d.resolve() for d in (ws.models_dir, ws.outputs_dir)] + ([packaged] if packaged else [])


def resolved(path: Path) -> Path | None:
    """`path` with its symlinks followed, or None where they loop (Python 3.11 raises RuntimeError there)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


def engine_ref(path: Path) -> str:
    """A path the engine opens from the current folder: relative when inside it (portable recipes)."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
