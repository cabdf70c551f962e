"""Where a model reference's files are: a local folder as it is, or a Hub snapshot fetched on demand.

    folder = resolve_reference("org/name", token=visitor_token)   # a Path, or a one-line CheckpointError

A reference is a folder, else a Hub id (HUB_ID). A Hub download takes the weights (safetensors
preferred over .bin) and the side files a merge or a scorer needs (SIDE_FILES), nothing else. Whose
access is used is the caller's choice (`token`): the server's own (None) or a visitor's (a string,
or False for anonymous), which the Hub must confirm before any file, cached or not, is served.
Kept apart from core.io.checkpoint, which reads the tensors of a folder once it is found.
"""
from __future__ import annotations

import re
from pathlib import Path

from core.errors import CheckpointError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SIDE_FILES = ["*.json", "*.txt", "*.model", "*.jinja", "*.py", "1_Pooling/*", "2_Normalize/*"]


def resolve_reference(ref: str, *, token: str | bool | None = None) -> Path:
    """A local folder for `ref`: the folder itself, or a Hub snapshot downloaded on demand.

    token: None = whoever runs this process (huggingface_hub's HF_TOKEN or saved login, and
    its cache when offline). A string (a visitor's token) or False (anonymous) is someone
    else's access: it is the only token sent, and the Hub must confirm that it can read the
    repo before any file, cached or not, is used; offline, such a request is refused.
    """
    path = Path(ref).expanduser()
    if path.is_dir() and re.search(r"\.(partial|old-\d+)$", path.name):
        raise CheckpointError(f"model {ref!r} is an unfinished or replaced merge output, not a model: "
                              "run that merge again")
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise CheckpointError(f"model {ref!r} is a file: give the folder that holds config.json and the weights")
    if not HUB_ID.match(ref):
        raise CheckpointError(f"model {ref!r} not found: no such folder, and it is not a Hub id like 'org/name'")
    return _download(ref, token)


def _download(repo_id: str, token: str | bool | None) -> Path:
    """Fetch the weights (safetensors preferred over .bin) and side files of a Hub model.

    With a caller's own access (a token, or False for none), the Hub must confirm it first:
    snapshot_download alone falls back to the local cache when the Hub refuses a token, and so
    would serve a private repo that the server's own token once fetched. A gated repo lists its
    files to anyone, so the check is auth_check, which refuses a visitor who has not accepted
    the repo's terms (GatedRepoError). A visitor's download is also bounded in size before it
    starts (core.io.download_size).
    """
    from huggingface_hub import auth_check, list_repo_files, snapshot_download
    from huggingface_hub.errors import OfflineModeIsEnabled

    from core.io.download_size import check_download_size
    from core.io.hub import HubUnreachable, guard_hub_requests

    guard_hub_requests()
    cut_off = None  # the HubUnreachable that sent us to the cache, if any
    try:
        try:
            if token is not None:
                auth_check(repo_id, token=token)
            names = list_repo_files(repo_id, token=token)
            weights = ["*.safetensors"] if any(n.endswith(".safetensors") for n in names) else ["*.bin"]
            if token is not None:  # a visitor's download: bounded before it starts (core.io.download_size)
                check_download_size(repo_id, weights + SIDE_FILES, token=token)
        except OfflineModeIsEnabled as offline:  # HF_HUB_OFFLINE=1 or no answer: use what the local cache holds
            cut_off = offline if isinstance(offline, HubUnreachable) else None
            if token is not None:
                raise CheckpointError(f"cannot get {repo_id!r}: {cut_off or 'this app is offline'}, so it cannot "
                                      "check that you may read it; use a model under models/ or one of your merges"
                                      ) from None
            weights = ["*.safetensors", "*.bin"]
        return Path(snapshot_download(repo_id, allow_patterns=weights + SIDE_FILES, token=token))
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - network, auth, missing repo: all end the same way
        if cut_off is not None:
            raise CheckpointError(f"cannot get {repo_id!r}: {cut_off} and it is not in the local cache; give a "
                                  "local folder (python -m core demo builds some under models/demo/) or go online; "
                                  "HF_HUB_OFFLINE=1 uses the cache only, without trying the Hub") from None
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise CheckpointError(f"cannot get {repo_id!r} from the Hugging Face Hub ({reason}); check the id "
                              "and your network, or give a local folder") from None
