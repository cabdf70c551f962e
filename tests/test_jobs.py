"""ui.jobs: every Stop button stops only its own visitor's job of its own kind.

A visitor who reads the source can call any Stop event and pick any session hash. The tests run
visitor A's real merge, sweep, weights-from-data and demo build, and have visitor B press each
Stop while it runs: A's job must finish as if nothing happened. Then A's own Stop must end it
(with nothing half written), and a Stop with nothing running must say so and change nothing.
The core cancel checks (data_weights, demo_events, the training loop) are tested directly too.
"""
import functools
import json
import threading
from dataclasses import replace
from typing import NamedTuple

import gradio as gr
import pytest

import core.cocktail.weights
import ui.demo_panel
from core.app.workspace import Workspace
from core.cocktail.weights import data_weights, read_examples
from core.demo.build import DemoSpec, demo_events, demo_folder
from core.demo.train import TrainConfig, train_cross_encoder
from core.errors import MergeCancelled
from tests.test_demo import tiny_examples, write_set
from ui import jobs
from ui.common import keyed
from ui.demo_panel import build_demo, stop_demo
from ui.layout import build_app
from ui.merge.panel import merge, stop
from ui.merge.recipe_form import new_form
from ui.merge.weights_panel import fill_weights, stop_weights
from ui.sweep.panel import run_sweep, stop_sweep

A, B = "visitor-a", "visitor-b"
STOPPERS = {"merge": stop, "sweep": stop_sweep, "weights": stop_weights, "demo": stop_demo}
STOP_NAMES = {handler.__name__ for handler in STOPPERS.values()}
QUERIES = [{"query": "the model", "docs": ["hello world", "the model said", "good day"], "labels": [0, 1, 0]}]
EXAMPLES = [{"query": "the model", "pos": ["the model said hello"], "neg": ["hello world", "good day"]}]
TINY = TrainConfig(epochs=2, lr=1e-3, batch_size=4, group_size=3, max_length=32, warmup=0.0)  # 4 steps on 8 queries
SPECS = (DemoSpec("tiny-ce", "cross-encoder", "general", None, TINY, "a tiny cross-encoder"),
         DemoSpec("tiny-ce-2", "cross-encoder", "general", "tiny-ce", TINY, "its fine-tune"))


def visitor(session: str) -> gr.Request:
    return gr.Request(session_hash=session)


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path.resolve()
    return Workspace(root, root / "models", root / "outputs")


def jsonl(path, rows) -> str:
    path.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    return str(path)


def linear_yaml(models) -> str:
    rows = "".join(f"  - model: {m}\n    parameters: {{weight: 1}}\n" for m in models)
    return f"merge_method: linear\nmodels:\n{rows}"


# --- the registry -------------------------------------------------------------------------------

def test_stop_sets_only_the_flag_of_its_own_session_and_kind():
    with jobs.running(A, "merge") as a_merge, jobs.running(A, "sweep") as a_sweep, \
            jobs.running(B, "merge") as b_merge:
        assert jobs.stop(B, "merge") and b_merge.is_set()
        assert not a_merge.is_set() and not a_sweep.is_set()
        assert not jobs.stop(B, "sweep") and not jobs.stop("visitor-c", "merge")
        assert not a_merge.is_set() and not a_sweep.is_set()
        jobs.stop_session(A)  # the page was closed: all of A's jobs, none of B's others
        assert a_merge.is_set() and a_sweep.is_set()
    assert not any(jobs.is_running(s, k) for s in (A, B) for k in ("merge", "sweep"))


def test_a_job_removes_only_its_own_flag_however_it_ends():
    with pytest.raises(ValueError):
        with jobs.running(A, "merge"):
            raise ValueError("the handler failed")
    assert not jobs.is_running(A, "merge")

    def handler():
        with jobs.running(A, "sweep"):
            yield "working"

    generator = handler()
    next(generator)
    assert jobs.is_running(A, "sweep")
    generator.close()  # what gradio does when the visitor closes the page
    assert not jobs.is_running(A, "sweep")

    first = jobs.start(A, "demo")
    second = jobs.start(A, "demo")  # a second job of the kind replaces the first as the one Stop reaches
    jobs.finish(A, "demo", first)
    assert jobs.is_running(A, "demo") and jobs.stop(A, "demo") and second.is_set() and not first.is_set()
    jobs.finish(A, "demo", second)
    assert not jobs.is_running(A, "demo")


@pytest.mark.parametrize("kind", STOPPERS)
def test_stop_with_nothing_running_says_so_in_one_line_and_changes_nothing(kind):
    with jobs.running(A, "merge") as other:  # another visitor's job, of one of the kinds
        assert STOPPERS[kind](visitor(B)) == "Nothing is running."
        assert not other.is_set() and jobs.is_running(A, "merge") and not jobs.is_running(B, kind)


# --- each kind's real job: B's Stop leaves it alone, A's own Stop ends it -------------------------

def test_merge_stops_only_for_its_own_visitor(workspace, llama_family):
    reply, outcome = _merge(workspace, llama_family, B, "b")
    assert reply == "Nothing is running." and outcome.startswith("**✓ Merged**")
    assert (workspace.outputs_dir / "b" / "model.safetensors").exists()
    reply, outcome = _merge(workspace, llama_family, A, "a")
    assert reply == "Stopping after the current tensor…" and outcome.startswith("**■ Stopped.**")
    assert not (workspace.outputs_dir / "a").exists() and not list(workspace.outputs_dir.glob("*.partial"))


def _merge(ws, models, stopper: str, name: str) -> tuple[str, str]:
    """A's merge, with `stopper` pressing Stop after its first tensor: (Stop's reply, A's last status)."""
    reply = None
    for status, *_ in merge(linear_yaml(models), name, "cpu", False, 0, ws, visitor(A)):
        if "tensor 1/" in status and reply is None:
            reply = stop(visitor(stopper))
    return reply, status


def test_sweep_stops_only_for_its_own_visitor(workspace, bert_cls_family, tmp_path):
    sets = [jsonl(tmp_path / "mine.jsonl", QUERIES)]
    models = [str(bert_cls_family[0]), str(bert_cls_family[1])]
    for stopper, reply, outcome in ((B, "Nothing is running.", "**✓ Swept** 2 α's"),
                                    (A, "Stopping after the current α…", "**■ Stopped.**")):
        replies, steps = [], []
        for step in run_sweep(*models, "linear", "cpu", [], sets, "0, 1", workspace, visitor(A)):
            steps.append(step.status)
            if step.status.startswith("1/2") and not replies:
                replies.append(stop_sweep(visitor(stopper)))
        assert replies == [reply] and steps[-1].startswith(outcome), steps
    assert not jobs.is_running(A, "sweep")


def test_weights_from_data_stop_only_for_their_own_visitor(workspace, bert_cls_family, tmp_path, monkeypatch):
    examples = jsonl(tmp_path / "few.jsonl", EXAMPLES)
    form = new_form("linear", models=tuple(str(f) for f in bert_cls_family[:2]))
    real_load, replies = core.cocktail.weights.load_reranker, []

    def load_and_press_stop(*args, **kwargs):  # a Stop click while the first model is scored
        if not replies:
            replies.append(stop_weights(visitor(stopper)))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(core.cocktail.weights, "load_reranker", load_and_press_stop)
    stopper = B
    message, filled = fill_weights(form, examples, 5, "cpu", workspace, visitor(A))
    assert replies == ["Nothing is running."] and message.startswith("✓ Weights set") and filled is not None
    stopper, replies[:] = A, []
    message, filled = fill_weights(form, examples, 5, "cpu", workspace, visitor(A))
    assert replies == ["Stopping after the current model…"] and filled is None
    assert message == "■ Stopped: the weights are unchanged."
    assert not jobs.is_running(A, "weights")


def test_the_demo_build_stops_only_for_its_own_visitor(workspace, bert_st_family, tmp_path, monkeypatch):
    write_set(tmp_path / "data", "general", tiny_examples(8))
    monkeypatch.setattr(ui.demo_panel, "demo_events", functools.partial(
        demo_events, data_dir=tmp_path / "data", specs=SPECS, base=bert_st_family[0]))
    for stopper, reply, outcome in ((B, "Nothing is running.", "**✓ Demo models ready**"),
                                    (A, "Stopping after the current training step…", "**■ Stopped.**")):
        replies, lines = [], []
        for line in build_demo(replace(workspace, models_dir=tmp_path / stopper), visitor(A)):
            lines.append(line)
            if "step 1/" in line and not replies:
                replies.append(stop_demo(visitor(stopper)))
        assert replies == [reply] and lines[-1].startswith(outcome), lines
    assert (demo_folder(tmp_path / B, "tiny-ce-2") / "config.json").exists()
    assert not any((tmp_path / A).rglob("config.json"))
    assert not list((tmp_path / A).rglob("*.partial"))


# --- the core cancel checks ---------------------------------------------------------------------

def test_data_weights_checks_cancel_before_each_model(bert_cls_family, monkeypatch, tmp_path):
    cancel, loaded = threading.Event(), []
    real_load = core.cocktail.weights.load_reranker

    def load_then_cancel(ref, **kwargs):
        loaded.append(ref)
        cancel.set()
        return real_load(ref, **kwargs)

    monkeypatch.setattr(core.cocktail.weights, "load_reranker", load_then_cancel)
    refs = [str(f) for f in bert_cls_family]
    with pytest.raises(MergeCancelled, match="no weights were changed"):
        data_weights(refs, EXAMPLES, cancel=cancel)
    assert loaded == refs[:1]
    loaded.clear()
    cancel.clear()
    with pytest.raises(MergeCancelled):  # set during the last model: no weights are handed back either
        data_weights(refs[:1], read_examples(jsonl(tmp_path / "few.jsonl", EXAMPLES)), cancel=cancel)
    assert loaded == refs[:1]


def test_training_checks_cancel_between_steps(bert_st_family):
    cancel = threading.Event()
    run = train_cross_encoder(bert_st_family[0], tiny_examples(8), TINY, cancel=cancel)
    assert next(run).step == 1
    cancel.set()
    with pytest.raises(MergeCancelled, match="nothing of this model was saved"):
        next(run)


def test_a_stopped_demo_build_keeps_the_saved_models_and_no_half_written_one(bert_st_family, tmp_path):
    write_set(tmp_path / "data", "general", tiny_examples(8))
    cancel, states = threading.Event(), []
    with pytest.raises(MergeCancelled, match="stopped"):
        for event in demo_events(tmp_path / "models", data_dir=tmp_path / "data", specs=SPECS,
                                 base=bert_st_family[0], cancel=cancel):
            states.append((event.model, event.state))
            if event.model == "tiny-ce-2" and event.step == 1:
                cancel.set()
    assert ("tiny-ce", "saved") in states and ("tiny-ce-2", "saved") not in states
    assert (demo_folder(tmp_path / "models", "tiny-ce") / "config.json").exists()
    assert not demo_folder(tmp_path / "models", "tiny-ce-2").exists()
    assert not list((tmp_path / "models").rglob("*.partial"))


# --- dict updates -------------------------------------------------------------------------------

class View(NamedTuple):
    status: str
    extra: object = gr.skip()


def test_keyed_matches_updates_to_components_by_name_and_refuses_what_an_event_does_not_show():
    with gr.Blocks():
        status, extra = gr.Markdown(), gr.Textbox()
        with pytest.raises(TypeError, match="no field typo"):  # when the page is built
            keyed(lambda: View("x"), View, status=status, typo=extra)
        handler, outputs = keyed(lambda: View("x"), View, extra=extra, status=status)
        partial, only_status = keyed(lambda shown: View("x", shown), View, status=status)
    assert outputs == [extra, status] and handler() == {status: "x", extra: gr.skip()}
    assert only_status == [status] and partial(gr.skip()) == {status: "x"}
    with pytest.raises(TypeError, match="set extra, which this event does not show"):
        partial("a value with nowhere to go")


def test_keyed_closes_the_handlers_generator_when_gradio_closes_its_own():
    closed = []

    def handler():
        try:
            yield View("first")
            yield View("second")
        finally:
            closed.append(True)

    with gr.Blocks():
        status, extra = gr.Markdown(), gr.Textbox()
        wired, _ = keyed(handler, View, status=status, extra=extra)
    generator = wired()
    assert next(generator)[status] == "first"
    generator.close()
    assert closed == [True]


def test_every_stop_answers_in_its_own_note_not_over_the_jobs_outcome(workspace):
    """Pressed after a job finished, Stop says "Nothing is running." beside the outcome, which stays."""
    blocks = build_app(workspace)
    stops = {fn.fn.__name__: fn for fn in blocks.fns.values() if getattr(fn.fn, "__name__", "") in STOP_NAMES}
    assert set(stops) == STOP_NAMES
    for name, fn in stops.items():
        outputs = [getattr(block, "elem_id", None) for block in fn.outputs]
        assert len(outputs) == 1 and outputs[0] and outputs[0].endswith("stop-note"), (name, outputs)
        jobs_outputs = {id(b) for other in blocks.fns.values() if other is not fn for b in other.outputs
                        if getattr(other.fn, "__name__", "") not in STOP_NAMES}
        assert id(fn.outputs[0]) not in jobs_outputs, name  # nothing else writes there
