"""Taking a merge away: a zip to download, or a push to the Hugging Face Hub."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

from core.app.quota import folder_bytes
from core.errors import OutputError
from core.io.hub import guard_hub_requests
from core.units import human

NO_TOKEN = "no Hugging Face token found: sign in with Hugging Face or paste a write token"


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

    token: a token string, None for the locally saved login (HF_TOKEN or `hf auth login`), False for none at all:
    without one the push is refused before any request, as the Hub would refuse it after several.
    """
    from huggingface_hub import create_repo, get_token, upload_folder

    if token is False or (token is None and get_token() is None):
        raise OutputError(NO_TOKEN)
    guard_hub_requests()  # offline: one quick probe and one line, not five retries

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
