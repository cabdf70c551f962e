"""A visitor who calls every Stop event by number, over HTTP, with session ids they made up, stops
nobody's job but their own (ui.jobs). tests/test_jobs.py runs the real jobs; here the real server
and its event numbers are what is attacked, while visitor A's jobs hold their registered flags.
"""
import pytest

from tests.app_server import browser_event, fn_index, launched, local_workspace
from ui import jobs

A = "visitoraaaa1"  # gradio's session hashes are letters and digits
STOPS = {"merge": ("stop", "Stopping after the current tensor…"),
         "sweep": ("stop_sweep", "Stopping after the current α…"),
         "weights": ("stop_weights", "Stopping after the current model…"),
         "demo": ("stop_demo", "Stopping after the current training step…")}
MINTED = ("visitorbbbb2", "local", "visitoraaaa", "VISITORAAAA1", "x" * 64)  # another page, direct calls, near misses


def _reply(blocks, index: int, session: str) -> str:
    message = browser_event(blocks, index, [], session)
    assert message["success"], message
    return message["output"]["data"][0]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with launched(local_workspace(tmp_path_factory.mktemp("stop-own-job"))) as (blocks, _):
        yield blocks


@pytest.mark.parametrize("kind", STOPS)
def test_minted_sessions_calling_a_stop_event_by_number_do_not_stop_the_visitors_job(app, kind):
    handler, stopping = STOPS[kind]
    index = fn_index(app, handler)
    assert app.fns[index].api_visibility == "private"
    with jobs.running(A, kind) as cancel:
        for session in MINTED:
            assert _reply(app, index, session) == "Nothing is running."
            assert not cancel.is_set(), f"session {session!r} stopped {A}'s {kind}"
        for other_kind, (other, _) in STOPS.items():  # A's own Stop of another kind
            if other_kind != kind:
                assert _reply(app, fn_index(app, other), A) == "Nothing is running." and not cancel.is_set()
        assert _reply(app, index, A) == stopping and cancel.is_set()
    assert not jobs.is_running(A, kind)
