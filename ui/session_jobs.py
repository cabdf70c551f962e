"""Hosted mode: cap how many heavy jobs one visitor may have queued or running at once.

    limit_session_jobs(app, lane="gpu", limit=2)     # after the page is built, before launch

Merges, comparisons, sweeps and weights-from-data share one lane that runs a single job at a
time for everybody. The queue's own max_size caps all visitors together, so without a
per-visitor cap one tab (or a script) could fill the queue and lock everyone else out. Each
event of the lane gets a gradio validator, which runs when a job asks to join the queue:
with `limit` of the same session's jobs already queued or running in the lane, the new one
is refused with one line and never queued.

The count reads gradio 6's queue bookkeeping (`_queue.pending_event_ids_session`,
`event_ids_to_events`); tests/reliability/test_sandbox.py fails if a gradio upgrade moves it.
"""
from __future__ import annotations

import inspect
import typing

import gradio as gr


def limit_session_jobs(app: gr.Blocks, *, lane: str, limit: int) -> None:
    """Give every event of concurrency lane `lane` a validator that refuses a session's job number limit + 1."""
    for fn in app.fns.values():
        if fn.concurrency_id == lane:
            fn.validator = _admission(app, fn.fn, len(fn.inputs), lane, limit)


def session_jobs(app: gr.Blocks, session_hash: str, lane: str) -> int:
    """How many of this session's events of `lane` are queued or running now."""
    queue = app._queue
    events = [queue.event_ids_to_events.get(i) for i in queue.pending_event_ids_session.get(session_hash, ())]
    return sum(1 for event in events if event is not None and event.fn.concurrency_id == lane)


def _admission(app: gr.Blocks, handler, n_inputs: int, lane: str, limit: int):
    """A validator taking the handler's inputs plus the gr.Request (gradio passes both, reading the
    signature and annotations given here); it returns one "no remark" (None) per input, which accepts."""
    hints = typing.get_type_hints(handler)
    signature = inspect.signature(handler)
    if not any(gr.Request in (hint, *typing.get_args(hint)) for hint in hints.values()):
        extra = inspect.Parameter("session_request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                  annotation=gr.Request)
        signature = signature.replace(parameters=[*signature.parameters.values(), extra])
        hints = {**hints, "session_request": gr.Request}

    def admit(*args, **kwargs):
        request = next((value for value in signature.bind_partial(*args, **kwargs).arguments.values()
                        if isinstance(value, gr.Request)), None)
        if request is not None and session_jobs(app, request.session_hash, lane) >= limit:
            raise gr.Error(f"you already have {limit} jobs queued or running: wait for one to finish "
                           "(or stop it) before starting another", print_exception=False)
        return (None,) * n_inputs

    admit.__signature__, admit.__annotations__ = signature, hints
    return admit
