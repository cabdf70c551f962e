"""MergeDesk web app: builds the page from ui/ and launches it; nothing else.

    python app.py                      # http://127.0.0.1:7860; local paths and Hub ids may be merged
    python app.py --hosted             # shared-app rules: Hub ids and workspace folders only, per-visitor outputs
    python app.py --host 0.0.0.0 --port 8080

GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured when --host / --port are not given;
SPACE_ID (set on Hugging Face Spaces) implies --hosted; MERGEDESK_HOME moves models/ and outputs/.
"""
from __future__ import annotations

import argparse
import os

import gradio as gr

from core import ASSETS
from core.app.workspace import Workspace, default_workspace
from ui.common import QUEUE
from ui.layout import build_app
from ui.merge.panel import serve_downloads_in_place
from ui.session_jobs import SPACE_PROXIES, limit_visitor_jobs

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", neutral_hue="slate",
                       font=["ui-sans-serif", "system-ui", "sans-serif"])  # system fonts: nothing fetched
CSS = (ASSETS / "style.css").read_text(encoding="utf-8")


def serve(workspace: Workspace, *, host: str | None = None, port: int | None = None,
          prevent_thread_lock: bool = False) -> gr.Blocks:
    """Build, queue and launch the app; host/port None fall back to GRADIO_SERVER_NAME/PORT, then gradio's.
    The queue holds at most workspace.max_jobs events, and one visitor at most max_session_jobs heavy ones.
    Downloads are written where gradio serves them without a copy (serve_downloads_in_place)."""
    app = build_app(serve_downloads_in_place(workspace))
    # Hosted: every call goes through the queue (gradio's /run route would skip its size, the
    # per-visitor cap and the lanes), and gradio's run history, which lends loopback requests the
    # machine's Hugging Face token, is off.
    app.queue(max_size=workspace.max_jobs, default_concurrency_limit=4, api_open=not workspace.hosted)
    if workspace.max_session_jobs is not None:
        limit_visitor_jobs(app, lane=QUEUE, limit=workspace.max_session_jobs, apis=("plan",),
                           proxies=SPACE_PROXIES if os.environ.get("SPACE_ID") else ())
    app.launch(server_name=host, server_port=port, theme=THEME, css=CSS, prevent_thread_lock=prevent_thread_lock,
               max_file_size=workspace.max_upload_bytes, run_history=False if workspace.hosted else None)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MergeDesk: merge Hugging Face checkpoints in the browser.")
    parser.add_argument("--hosted", action="store_true",
                        help="shared-app rules: Hub ids and workspace folders only, per-visitor outputs with a size cap")
    parser.add_argument("--host", help="address to listen on (default GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args(argv)
    hosted = args.hosted or bool(os.environ.get("SPACE_ID"))
    serve(default_workspace(hosted=hosted), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
