"""The models the pickers offer: the packaged MiniLM, models/, earlier outputs, the HF cache (local only).

    find_models(ws)                           # [ModelChoice(label, ref, source, folder), …]
    latest_merge(ws)                          # the newest output with a mergekit_config.yml, or None
    merge_base(folder)                        # that merge's base_model (else its first model), as written

Hosted, `ws` is the visitor's session workspace (core.app.sessions): its outputs are their own
merges only, every ref is relative to the root, and the packaged model is PACKAGED_REF, so no
choice names a server path.

The Hugging Face cache is listed only locally: hosted, it also holds what the server's own
token fetched (private or gated repos), and offline nothing proves a repo public, so a
visitor is offered none of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.app.paths import engine_ref, resolved
from core.app.workspace import PACKAGED_REF, SESSIONS, Workspace, packaged_minilm
from core.errors import MergeDeskError
from core.io.safe_yaml import load_yaml

RECIPE_FILE = "mergekit_config.yml"  # what every merge writes beside its weights


@dataclass(frozen=True)
class ModelChoice:
    """One entry of a model picker."""

    label: str  # what a person reads
    ref: str  # what goes into the recipe
    source: str  # "packaged" | "models" | "hf-cache" | "outputs"
    folder: Path | None = None  # where it was found (None for a Hub id): what code compares, never the label


def find_models(ws: Workspace, *, hub_cache: Path | None = None) -> list[ModelChoice]:
    """Models to offer: packaged, models_dir, earlier outputs, then (local only) the Hugging Face cache.

    hub_cache: the cache folder to list; None = huggingface_hub's (HF_HUB_CACHE). A missing
    or unreadable cache lists nothing; hosted, it is never listed.
    """
    found = []
    packaged = packaged_minilm()
    if packaged is not None:
        found.append(ModelChoice("all-MiniLM-L6-v2 (packaged)", packaged_ref(ws), "packaged", packaged))
    for source, folder, note in (("models", ws.models_dir, ""), ("outputs", ws.outputs_dir, " (earlier merge)")):
        for model in _model_folders(folder):
            found.append(ModelChoice(f"{source}/{model.relative_to(folder)}{note}", _ref_for(model, ws), source, model))
    if not ws.hosted:
        found += [ModelChoice(f"{repo} (Hugging Face cache)", repo, "hf-cache")
                  for repo in _cached_hub_models(hub_cache)]
    return found


def packaged_ref(ws: Workspace) -> str:
    """How a recipe names the packaged model: its folder locally, PACKAGED_REF hosted (no server path shown);
    "" when the package is missing."""
    packaged = packaged_minilm()
    return "" if packaged is None else PACKAGED_REF if ws.hosted else str(packaged)


def latest_merge(ws: Workspace) -> Path | None:
    """The newest folder of ws.outputs_dir holding a mergekit_config.yml (by that file's time), or None."""
    recipes = list(ws.outputs_dir.glob(f"*/{RECIPE_FILE}")) if ws.outputs_dir.is_dir() else []
    newest = max(recipes, key=lambda p: p.stat().st_mtime, default=None)
    return None if newest is None else newest.parent


def merge_base(folder: Path) -> str | None:
    """The base_model of the merge in `folder` (else its first model) as its recipe wrote it; None if unreadable."""
    try:
        recipe = load_yaml((folder / RECIPE_FILE).read_text(encoding="utf-8"), source="a merge") or {}
        return str(recipe.get("base_model") or recipe["models"][0]["model"])
    except (OSError, UnicodeDecodeError, MergeDeskError, AttributeError, KeyError, IndexError, TypeError):
        return None


def choice_for(ref: str | None, choices: list[ModelChoice], ws: Workspace) -> ModelChoice | None:
    """The choice naming the same folder as `ref` (a path from the current folder or, hosted, from the root)."""
    if not ref:
        return None
    places = [resolved(Path(ref))] + ([resolved(ws.root / ref)] if not Path(ref).is_absolute() else [])
    folders = {place for place in places if place is not None and place.is_dir()}
    return next((c for c in choices if c.ref == ref or (c.folder is not None and resolved(c.folder) in folders)), None)


def same_model(a: str, b: str) -> bool:
    """Whether two checked references (core.app.paths.check_model_ref) open the same model: same folder, or same id."""
    folders = [resolved(Path(ref)) if Path(ref).is_dir() else None for ref in (a, b)]
    return folders[0] == folders[1] if None not in folders else a.strip() == b.strip()


def _model_folders(folder: Path) -> list[Path]:
    """Folders holding config.json, one or two levels down (models/x, models/org/x); no partials,
    and none reached through a symlink loop (models/x/self -> . would list x twice)."""
    if not folder.is_dir():
        return []
    found = [p.parent for depth in ("*/config.json", "*/*/config.json") for p in folder.glob(depth)]
    return sorted(p for p in found if not p.name.endswith(".partial") and SESSIONS not in p.relative_to(folder).parts
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts)  # e.g. sweep scratch
                  and not _loops_back(p, folder))


def _loops_back(path: Path, folder: Path) -> bool:
    """Whether a folder between `folder` and `path` (or path itself) is a symlink to itself or an ancestor."""
    for link in (p for p in (path, *path.parents) if folder in p.parents and p.is_symlink()):
        target = resolved(link)
        if target is None or any(target == resolved(up) for up in link.parents):
            return True
    return False


def _cached_hub_models(hub_cache: Path | None) -> list[str]:
    from huggingface_hub import scan_cache_dir

    try:
        cache = scan_cache_dir(hub_cache)
    except Exception:  # noqa: BLE001 - no cache yet, or an unreadable one: nothing to offer
        return []
    return sorted(repo.repo_id for repo in cache.repos if repo.repo_type == "model"
                  and any(f.file_name == "config.json" for rev in repo.revisions for f in rev.files))


def _ref_for(folder: Path, ws: Workspace) -> str:
    """How a found folder is written in a recipe: relative to root when hosted, else as the engine opens it."""
    return str(folder.relative_to(ws.root)) if ws.hosted else engine_ref(folder.resolve())
