"""Getting a merged model out of the Merge tab: a .zip download or a push to a Hub model repo.

    zip_button.click(make_zip, [merged, ws], download)        # private events, wired in ui.merge.panel
    push_button.click(push, [repo, private, token, merged, ws], pushed)

Both take the output folder the last merge returned and work only on that: the archive goes into
the visitor's own downloads folder and counts in the hosted size cap; a push uses the visitor's
own token (hosted: their Hub sign-in, never the Space's). The work is core.app.export's.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from core.app.export import push_folder, zip_folder
from core.app.quota import check_quota, folder_bytes
from core.app.workspace import Workspace
from core.errors import MergeDeskError
from ui.common import request_workspace

ZIP_LIMIT = 2 * 1000**3  # bytes: larger outputs are pushed to the Hub or copied, not downloaded


def make_zip(folder: str | None, workspace: Workspace, request: gr.Request | None = None):
    """A .zip of the latest output in the visitor's downloads folder (below ZIP_LIMIT, and counted in the
    hosted size cap: the archive is as big as the folder)."""
    if not folder:
        gr.Warning("Merge a model first.")
        return gr.File(visible=False)
    ws = request_workspace(workspace, request)
    for old in ws.downloads_dir.glob("*.zip") if ws.downloads_dir.is_dir() else []:
        old.unlink()  # one archive per session at a time
    try:
        check_quota(ws, folder_bytes(Path(folder)), job="the .zip")
        archive = zip_folder(Path(folder), ws.downloads_dir / f"{Path(folder).name}.zip", max_bytes=ZIP_LIMIT)
    except MergeDeskError as error:
        gr.Warning(str(error))
        return gr.File(visible=False)
    return gr.File(str(archive), visible=True)


def push(repo: str, private: bool, token: str, folder: str | None, workspace: Workspace,
         oauth_token: gr.OAuthToken | None = None) -> str:
    """Upload the latest output to a Hub model repo (private by default); Markdown result."""
    if not folder:
        return "**✗** Merge a model first."
    secret = oauth_token.token if oauth_token else (token or "").strip() or (False if workspace.hosted else None)
    try:  # no token (hosted: not signed in; local: no saved login) is refused at once, in core.app.export
        url = push_folder(Path(folder), repo or Path(folder).name, private=bool(private), token=secret)
    except MergeDeskError as error:
        return f"**✗** {error}"
    return f"**✓ Pushed** to [{url}]({url})" + (" (private)" if private else "")
