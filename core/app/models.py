"""The models the pickers offer: the packaged MiniLM, models/, earlier outputs, the HF cache (local only).

    find_models(ws)                           # [ModelChoice(label, ref, source, folder), …]

The Hugging Face cache is listed only locally: hosted, it also holds what the server's own
token fetched (private or gated repos), and offline nothing proves a repo public, so a
visitor is offered none of it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.app.paths import engine_ref, resolved
from core.app.workspace import SESSIONS, Workspace, packaged_minilm


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
        found.append(ModelChoice("all-MiniLM-L6-v2 (packaged)", str(packaged), "packaged", packaged))
    for source, folder, note in (("models", ws.models_dir, ""), ("outputs", ws.outputs_dir, " (earlier merge)")):
        for model in _model_folders(folder):
            found.append(ModelChoice(f"{source}/{model.relative_to(folder)}{note}", _ref_for(model, ws), source, model))
    if not ws.hosted:
        found += [ModelChoice(f"{repo} (Hugging Face cache)", repo, "hf-cache")
                  for repo in _cached_hub_models(hub_cache)]
    return found


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
