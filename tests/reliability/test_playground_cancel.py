"""While the playground loads a model, the rest of the page still answers.

A slow load is injected: core.rerank.model._load waits on a gate that only the test opens. With a
comparison stuck in that load (holding the "gpu" lane), the memory gauge's tick, a /plan call
and the playground's "Unload models" button must all answer; only then is the gate opened and
the comparison checked against scores computed directly. No timing is asserted: the proof is
that the other calls finished while the load was provably still in progress.
"""
import threading

import httpx
import pytest

import core.rerank.model
from core.rerank.model import load_reranker
from tests.app_server import browser_event, fn_index, launched, local_workspace

BOUND_S = 60  # upper bound on any single wait; a hang fails the test instead of stalling the suite


@pytest.fixture
def served(tmp_path):
    with launched(local_workspace(tmp_path)) as (blocks, client):
        yield blocks, client


@pytest.fixture
def slow_load(monkeypatch):
    """core.rerank.model._load that waits for `gate`, after setting `loading`."""
    loading, gate = threading.Event(), threading.Event()
    real_load = core.rerank.model._load

    def gated_load(*args, **kwargs):
        loading.set()
        assert gate.wait(BOUND_S), "the test never opened the gate"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(core.rerank.model, "_load", gated_load)
    yield loading, gate
    gate.set()


def test_the_page_answers_while_a_model_loads(served, slow_load, bert_cls_family, llama_family):
    blocks, client = served
    loading, gate = slow_load
    core.rerank.model.unload()
    base, tuned = str(bert_cls_family[0]), str(bert_cls_family[1])
    docs = ["the model said hello", "world", "hello"]
    job = client.submit(base, tuned, "the model", "\n".join(docs), None, "cpu", False, api_name="/rerank_compare")
    assert loading.wait(BOUND_S), "the comparison never started loading"

    gauge = next(i for i, fn in blocks.fns.items() if fn.api_name == "refresh_gauge")
    tick = httpx.post(f"{blocks.local_url}gradio_api/run/predict", timeout=BOUND_S,
                      json={"data": [], "fn_index": gauge, "session_hash": "watcher"})
    assert tick.status_code == 200 and tick.json()["data"][0].startswith("Process **")
    recipe = "merge_method: linear\nmodels:\n" + "".join(
        f"  - model: {folder}\n    parameters: {{weight: 1}}\n" for folder in llama_family[:2])
    assert client.predict(recipe, "out", "cpu", api_name="/plan").startswith("**✓ Ready to merge.**")
    unloaded = browser_event(blocks, fn_index(blocks, "unload_all"), [None], "watcher", timeout=BOUND_S)
    assert unloaded["success"] and unloaded["output"]["data"] == ["No models loaded."]
    assert not job.done() and not gate.is_set()  # all three answered while the load was still held
    print("\nreliability playground: gauge tick, /plan and unload answered while a model load was held (3/3)")

    gate.set()
    _, table, *_ = job.result(timeout=BOUND_S)
    scores = {row[0]: row[3] for row in table["data"]}  # passage → B score
    expected = load_reranker(tuned).score("the model", docs)
    assert [scores[doc] for doc in docs] == pytest.approx(expected, abs=1e-4)
