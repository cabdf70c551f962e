"""How many bytes a Hub download would write, asked before it starts; a visitor's download is bounded.

    check_download_size("org/name", ["*.safetensors", "*.json"], token=False)   # raises CheckpointError if too big

Why: a hosted visitor names any public Hub id, and the snapshot lands in the server's shared Hugging
Face cache, outside their workspace and its 5 GB cap. Without a bound, one visitor asking for a
140 GB model fills the Space's disk for everyone. A visitor's output is capped at 5 GB anyway, so an
input much larger than VISITOR_DOWNLOAD_BYTES could not give a merge they may keep. The sizes come
from the Hub's file listing (list_repo_tree); the files counted are those snapshot_download's
allow_patterns would take (fnmatch on the repo path, as huggingface_hub matches them).
"""
from __future__ import annotations

import fnmatch

from core.errors import CheckpointError
from core.units import human

VISITOR_DOWNLOAD_BYTES = 10 * 1000**3  # one Hub model a hosted visitor may fetch (the files that would be taken)


def download_bytes(repo_id: str, patterns: list[str], *, token: str | bool | None) -> int:
    """Bytes of the files of `repo_id` that match `patterns`, from the Hub's listing (sizes as the Hub states them)."""
    from huggingface_hub import list_repo_tree

    return sum(entry.size or 0 for entry in list_repo_tree(repo_id, recursive=True, token=token)
               if getattr(entry, "size", None) is not None
               and any(fnmatch.fnmatch(entry.path, pattern) for pattern in patterns))


def check_download_size(repo_id: str, patterns: list[str], *, token: str | bool | None,
                        limit: int = VISITOR_DOWNLOAD_BYTES) -> None:
    """Refuse, in one line, a download of more than `limit` bytes."""
    size = download_bytes(repo_id, patterns, token=token)
    if size > limit:
        raise CheckpointError(f"{repo_id!r} is {human(size)} to download, more than the {human(limit)} one model "
                              "may take on this app: pick a smaller model, or run MergeDesk on your own machine")
