"""The stoppable jobs running now, by visitor session and kind: what every Stop button reaches.

    with running(session_id(request), "merge") as cancel:   # in the handler: core checks `cancel`
        for event in merge_events(..., cancel=cancel): ...
    stop = stopper("merge", "Stopping after the current tensor…")   # the Stop button's handler

Merge, sweep, weights-from-data and the demo build each hand core a threading.Event and core
checks it between tensors, α's, models or training steps. The flags live here, one per
(session, kind), so a Stop click sets only the flag of its own visitor's job of its own kind:
a visitor who calls a Stop event by number with a session hash they made up reaches the flags
of that made-up session, which are none. The session is gradio's session hash, cleaned
(ui.common.session_id); it is the visitor's page, not their account.

A second job of one kind in one session (only direct calls can start one: the "gpu" lane runs
one job at a time) replaces the first as the one Stop reaches; each job removes only its own
flag when it ends, however it ends (returns, raises, or its generator is closed).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import gradio as gr

from ui.common import session_id

NOTHING = "Nothing is running."
_FLAGS: dict[tuple[str, str], threading.Event] = {}  # (session, kind) → cancel flag of the job running now
_LOCK = threading.Lock()  # handlers start, stop and end in gradio's worker threads


def start(session: str, kind: str) -> threading.Event:
    """A fresh cancel flag for `session`'s job of `kind`, registered until finish()."""
    cancel = threading.Event()
    with _LOCK:
        _FLAGS[session, kind] = cancel
    return cancel


def finish(session: str, kind: str, cancel: threading.Event) -> None:
    """Forget `cancel`, unless a newer job of the same session and kind has replaced it."""
    with _LOCK:
        if _FLAGS.get((session, kind)) is cancel:
            del _FLAGS[session, kind]


@contextmanager
def running(session: str, kind: str) -> Iterator[threading.Event]:
    """start() on entry, finish() on any exit: a generator handler's `with` ends when gradio closes it."""
    cancel = start(session, kind)
    try:
        yield cancel
    finally:
        finish(session, kind, cancel)


def stop(session: str, kind: str) -> bool:
    """Set the flag of `session`'s running job of `kind`; False when it has none."""
    with _LOCK:
        cancel = _FLAGS.get((session, kind))
    if cancel is None:
        return False
    cancel.set()
    return True


def stop_session(session: str) -> None:
    """Set the flags of every job of `session` (its page was closed)."""
    with _LOCK:
        flags = [cancel for (owner, _), cancel in _FLAGS.items() if owner == session]
    for cancel in flags:
        cancel.set()


def is_running(session: str, kind: str) -> bool:
    with _LOCK:
        return (session, kind) in _FLAGS


def stopper(kind: str, stopping: str, name: str):
    """The Stop button's handler for jobs of `kind`: one line, `stopping` or "Nothing is running."
    `name` becomes its __name__ (events are told apart by their handler's name in tests)."""
    def handler(request: gr.Request | None = None) -> str:
        return stopping if stop(session_id(request), kind) else NOTHING

    handler.__name__ = handler.__qualname__ = name
    handler.__doc__ = f"Ask this session's running {kind} job to stop: {stopping}"
    return handler
