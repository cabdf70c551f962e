"""Launch the real app on a free loopback port for a test, and talk to it as a browser would.

    with launched(workspace) as (blocks, client):      # client: gradio_client.Client
        client.predict(..., api_name="/plan")
        browser_event(blocks, fn_index, data, session)   # private events too

Used by tests/test_app_api.py and the tests/reliability/ suite; the server is closed on exit.
"""
from __future__ import annotations

import json
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
from gradio_client import Client

import app as mergedesk
from core.app.workspace import Workspace


def local_workspace(root: Path) -> Workspace:
    """The workspace of a local (not hosted) app rooted at `root`: models/ and outputs/ inside it."""
    root = root.resolve()
    return Workspace(root, root / "models", root / "outputs")


def free_port() -> int:
    """A port nothing listens on now (bound to port 0 on loopback, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def launched(workspace: Workspace) -> Iterator[tuple]:
    """The app for `workspace` on 127.0.0.1: (blocks, gradio_client.Client); closed afterwards."""
    port = free_port()
    blocks = mergedesk.serve(workspace, host="127.0.0.1", port=port, prevent_thread_lock=True)
    try:
        yield blocks, Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        blocks.close()


def fn_index(blocks, name: str) -> int:
    """The index of the (first) event whose api_name, else whose handler's name, is `name`."""
    return next((i for i, fn in blocks.fns.items() if fn.api_name == name),
                next((i for i, fn in blocks.fns.items() if getattr(fn.fn, "__name__", None) == name), None))


def browser_event(blocks, index: int, data: list, session: str, *, timeout: float = 30) -> dict:
    """Run one event the way the page does (queue join + event stream); private events included.
    Returns the process_completed message (check its "success")."""
    api = f"{blocks.local_url}gradio_api"
    httpx.post(f"{api}/queue/join", json={"data": data, "fn_index": index, "session_hash": session,
                                          "event_data": None, "trigger_id": None}).raise_for_status()
    with httpx.stream("GET", f"{api}/queue/data", params={"session_hash": session}, timeout=timeout) as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                return message
    raise AssertionError("the event stream ended without a result")
