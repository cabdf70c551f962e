"""What a hosted visitor may spend: bytes kept (outputs and downloads together) and pairs scored per job."""
from __future__ import annotations

from pathlib import Path

from core.app.workspace import Workspace
from core.errors import OutputError, RerankError
from core.units import human


def visitor_bytes(ws: Workspace) -> int:
    """What a visitor's folders hold now: outputs (merges, sweep scratch) and downloads (zips, recipes)."""
    return folder_bytes(ws.outputs_dir) + (folder_bytes(ws.downloads_dir) if ws.downloads_dir else 0)


def check_quota(ws: Workspace, incoming_bytes: int, *, replacing: tuple[Path, ...] = (), job: str = "the merge") -> None:
    """Refuse a job that would push visitor_bytes over the cap; the files and folders it replaces are freed by it,
    so they do not count (re-exporting a report, or overwriting an output, needs room for the difference only)."""
    if ws.max_output_bytes is None:
        return
    used = visitor_bytes(ws) - sum(path_bytes(path) for path in replacing)
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


def path_bytes(path: Path) -> int:
    """A file's size, or a folder's total (0 when it does not exist)."""
    return path.stat().st_size if path.is_file() and not path.is_symlink() else folder_bytes(path)


def folder_bytes(folder: Path) -> int:
    """Total size of the files under folder (0 when it does not exist)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and not f.is_symlink())
