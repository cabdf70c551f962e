"""Load on a launched app: queued merges and comparisons finish in order, right, and leave no memory behind.

Two merges and eight playground comparisons are sent through gradio_client (loopback only),
each one queued before the next is sent, while the first merge is held at a gate so all ten
wait together. They share one "gpu" lane (concurrency 1): they must run one at a time in the
order sent, and give the tensors of the linear formula and the scores of core.rerank.model called
directly. Then 50 comparisons with the real MiniLM cross-encoder, unloading every 5th, must
leave anonymous memory (RssAnon) within 50 MB of where it started, and every unloaded model
must be garbage: safetensors weights are file-backed (mmap), so RssAnon alone would not see a
leaked model; a weak reference to each one does. Run with -s for figures.
"""
import ctypes
import gc
import threading
import time
import weakref

import pytest
from gradio_client.utils import Status
from safetensors.torch import load_file

import core.rerank.model
import ui.merge.panel
import ui.playground
from core.monitor import sample_memory
from core.rerank.model import load_reranker
from tests.app_server import browser_event, fn_index, launched, local_workspace

pytestmark = pytest.mark.slow
BOUND_S = 60  # upper bound on any single wait, so a hang fails instead of stalling the suite
MB = 1e6
QUERIES = ["the model", "hello world", "merge the model", "what is new", "said hello", "the world",
           "good day", "find the model"]
DOCS = ["the model said hello", "world", "hello to the world", "merge"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workspace = local_workspace(tmp_path_factory.mktemp("load"))
    with launched(workspace) as (blocks, client):
        yield workspace, blocks, client


def _queued(job) -> None:
    """Wait until the server has put the job in its queue (or started it)."""
    deadline = time.monotonic() + BOUND_S
    while job.status().code in (Status.STARTING, Status.JOINING_QUEUE):
        assert time.monotonic() < deadline, "a job never reached the queue"
        time.sleep(0.01)


def test_merges_and_comparisons_share_one_lane_in_order(served, monkeypatch, llama_family, bert_cls_family):
    workspace, _, client = served
    ran, gate = [], threading.Event()
    real_compare, real_merge_events = ui.playground.compare, ui.merge.panel.merge_events

    def recorded_compare(models, items, **options):
        ran.append(("start", items[0].query))
        try:
            return real_compare(models, items, **options)
        finally:
            ran.append(("end", items[0].query))

    def recorded_merge(recipe, out, **options):
        ran.append(("start", out.name))
        if out.name == "merge-1":
            assert gate.wait(BOUND_S), "the test never released the first merge"
        yield from real_merge_events(recipe, out, **options)
        ran.append(("end", out.name))

    monkeypatch.setattr(ui.playground, "compare", recorded_compare)
    monkeypatch.setattr(ui.merge.panel, "merge_events", recorded_merge)
    recipes = {f"merge-{i}": "merge_method: linear\nmodels:\n" + "".join(
        f"  - model: {folder}\n    parameters: {{weight: {weight}}}\n"
        for folder, weight in zip(llama_family[i - 1:i + 1], (1, i))) for i in (1, 2)}
    base = str(bert_cls_family[0])
    order = ["merge-1", *QUERIES[:4], "merge-2", *QUERIES[4:]]
    jobs = {}
    for label in order:
        if label in recipes:
            jobs[label] = client.submit(recipes[label], label, "cpu", False, 0, api_name="/merge")
        else:
            tuned = str(bert_cls_family[1 + QUERIES.index(label) % 2])
            jobs[label] = client.submit(base, tuned, label, "\n".join(DOCS), None, "cpu", False,
                                        api_name="/rerank_compare")
        _queued(jobs[label])
    gate.set()
    results = {label: job.result(timeout=BOUND_S) for label, job in jobs.items()}

    assert ran == [(edge, label) for label in order for edge in ("start", "end")]  # one at a time, in order
    for label in QUERIES:
        _, table, *_ = results[label]
        scores = {row[0]: (row[1], row[3]) for row in table["data"]}  # passage → (A score, B score)
        tuned = str(bert_cls_family[1 + QUERIES.index(label) % 2])
        for reference, column in ((base, 0), (tuned, 1)):
            expected = load_reranker(reference).score(label, DOCS)
            assert [scores[doc][column] for doc in DOCS] == pytest.approx(expected, abs=1e-4), label
    for i in (1, 2):
        status, *_ = results[f"merge-{i}"]
        assert status.startswith("**✓ Merged**")
        merged = load_file(workspace.outputs_dir / f"merge-{i}" / "model.safetensors")
        first, second = (load_file(f / "model.safetensors") for f in llama_family[i - 1:i + 1])
        for name, tensor in merged.items():  # linear: Σ wᵢ·xᵢ / Σ wᵢ with weights (1, i)
            assert (tensor - (first[name] + i * second[name]) / (1 + i)).abs().max() < 1e-5, name
    print(f"\nreliability load: {len(order)} jobs queued together (2 merges, 8 comparisons), "
          f"{len(results)} completed in submission order, one at a time, results equal to core")


def _settled_anon() -> int:
    """RssAnon after collecting garbage and handing free heap pages back to the OS (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: measure without trimming
        pass
    return sample_memory().anon


def test_fifty_comparisons_leave_no_memory_behind(served, monkeypatch, minilm_cross_encoder, bert_cls_family):
    _, blocks, client = served
    unload = fn_index(blocks, "unload_all")
    model_a, model_b = str(minilm_cross_encoder), str(bert_cls_family[0])
    models, real_load = [], core.rerank.model._load

    def tracked_load(*args, **kwargs):  # a weak reference to every model the app loads
        reranker = real_load(*args, **kwargs)
        models.append(weakref.ref(reranker.model))
        return reranker

    monkeypatch.setattr(core.rerank.model, "_load", tracked_load)
    core.rerank.model.unload()  # start from an empty cache (earlier tests load the same tiny model)

    def compare(i: int):
        return client.predict(model_a, model_b, QUERIES[i % len(QUERIES)], "\n".join(DOCS), None, "cpu", False,
                              api_name="/rerank_compare")

    for i in range(3):  # warm up: tokenizers, torch kernels, gradio's caches
        compare(i)
    assert browser_event(blocks, unload, [None], "load-test")["success"]
    baseline = _settled_anon()
    for i in range(50):
        compare(i)
        if i % 5 == 4:
            alive = sum(ref() is not None for ref in models)
            assert browser_event(blocks, unload, [None], "load-test")["output"]["data"] == ["No models loaded."]
    after = _settled_anon()
    leaked = sum(ref() is not None for ref in models)
    print(f"\nreliability load: 50 comparisons (MiniLM cross-encoder + tiny BERT), "
          f"{len(models) // 2 - 1} load/unload cycles: RssAnon {baseline / MB:.0f} MB before, "
          f"{after / MB:.0f} MB after unloading (growth {(after - baseline) / MB:+.1f} MB); {leaked} of {len(models)} loaded models still alive")
    assert alive == 2 and len(models) == 2 * 11  # control: loaded models are seen (warm-up + 10 cycles)
    assert leaked == 0 and core.rerank.model.loaded_rerankers() == []
    assert after - baseline < 50 * MB
