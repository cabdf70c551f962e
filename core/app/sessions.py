"""Per-visitor folders of a hosted app: named from the (untrusted) session id, removed when the tab
closes or they go stale.

    session_workspace(ws, request.session_hash)   # outputs and downloads in folders of their own
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from core.app.workspace import SESSIONS, Workspace
from core.errors import MergeDeskError


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


def _newest_mtime(folder: Path) -> float:
    times = [folder.stat().st_mtime] + [p.lstat().st_mtime for p in folder.rglob("*")]
    return max(times)
