"""One bounded cache holds the Playground's rerankers and the Generate tab's decoders, per owner.

The attack these tests make: a hosted visitor who reads the source calls the Generate tab's
events (generate_compare, then the Unload event) with their own session id. Before, decoders sat
in a process-wide two-model cache outside the 8 GB bound: a visitor's models pushed out another
visitor's, nobody could unload their own, and a closed page kept its decoders loaded.
"""
import threading
import time
from types import SimpleNamespace

import pytest

import core.model_cache
from core.app.workspace import Workspace
from core.llm.model import load_causal_lm, loaded_causal_lms, unload_causal_lms
from core.model_cache import LoadedModels
from core.rerank.model import load_reranker, loaded_rerankers, unload
from tests.app_server import local_workspace
from tests.model_factory import build_family
from ui.generation import generate_compare, unload_all
from ui.merge.panel import end_session

PROMPT = "the model said hello to the"


class Weights:
    """A stand-in model: only its size matters to the cache."""

    def __init__(self, nbytes):
        self.nbytes = nbytes


@pytest.fixture
def empty_cache():
    core.model_cache.MODELS.release()
    yield
    core.model_cache.MODELS.release()


@pytest.fixture(scope="module")
def hosted_site(tmp_path_factory):
    """A hosted workspace whose public models/ holds two Llamas and a cross-encoder."""
    ws = local_workspace(tmp_path_factory.mktemp("cache_site"))
    build_family(ws.models_dir, "llama", n_models=2, noise=0.5, seed=3)
    build_family(ws.models_dir, "bert-cls", n_models=1, seed=4)
    return Workspace(ws.root, ws.models_dir, ws.outputs_dir, hosted=True)


def visitor(name):
    return SimpleNamespace(session_hash=name, headers={}, client=SimpleNamespace(host="10.0.0.1"))


def test_least_recently_used_goes_first_and_a_big_model_stays_alone():
    cache = LoadedModels(limit_bytes=35)
    for name in "abc":
        cache.get((name,), None, lambda: Weights(10))
    cache.get(("a",), None, lambda: pytest.fail("a is cached: no second load"))  # a is now the newest
    cache.get(("d",), None, lambda: Weights(10))  # 40 > 35: b, the least recently used, goes
    assert list(cache._models) == [("c",), ("a",), ("d",)]
    cache.get(("huge",), None, lambda: Weights(100))
    assert set(cache._models) == {("huge",)}


def test_an_owner_lets_go_of_its_hold_only():
    cache = LoadedModels(limit_bytes=100)
    shared = cache.get(("m",), "alice", lambda: Weights(1))
    assert cache.get(("m",), "bob", lambda: Weights(1)) is shared  # one copy for both
    cache.get(("own",), "bob", lambda: Weights(1))
    assert cache.loaded("alice") == [shared] and len(cache.loaded("bob")) == 2
    cache.release(owner="bob")
    assert cache.loaded("bob") == [] and cache.loaded() == [shared]
    cache.release(owner="alice")
    assert cache.loaded() == []


def test_after_a_failed_load_the_same_model_is_still_loaded_by_one_caller_at_a_time():
    """A waits-behind-a-failure race: the first load fails; the caller that waited behind it loads
    next, and a newcomer must wait for that load, not start a second one beside it (the old cache
    dropped the key's lock after the failure, so the newcomer made a fresh lock and loaded too)."""
    cache, key = LoadedModels(10**9), ("reranker", "m")
    first_started, release_first = threading.Event(), threading.Event()
    running, most_at_once, results = [0], [0], []
    gate = threading.Lock()

    def load(fail=False):
        with gate:
            running[0] += 1
            most_at_once[0] = max(most_at_once[0], running[0])
        try:
            if fail:
                first_started.set()
                release_first.wait(5)
                raise OSError("disk hiccup")
            time.sleep(0.3)  # a slow load, long enough for the newcomer to arrive while it runs
            return Weights(10)
        finally:
            with gate:
                running[0] -= 1

    def ask(fail=False):
        try:
            results.append(cache.get(key, "someone", lambda: load(fail)))
        except OSError:
            results.append("failed")

    failing = threading.Thread(target=ask, args=(True,))
    failing.start()
    first_started.wait(5)
    waiting = threading.Thread(target=ask)  # queues behind the failing load
    waiting.start()
    time.sleep(0.1)
    release_first.set()
    failing.join(5)
    time.sleep(0.05)  # the waiting caller is loading now
    newcomer = threading.Thread(target=ask)
    newcomer.start()
    waiting.join(5)
    newcomer.join(5)
    assert most_at_once[0] == 1
    assert results[0] == "failed" and results[1] is results[2]  # the newcomer got the waiting caller's model


def test_rerankers_and_decoders_share_one_bound(hosted_site, empty_cache, monkeypatch):
    models = hosted_site.models_dir
    reranker = load_reranker(str(models / "bert-cls-0"))
    decoder = load_causal_lm(str(models / "llama-0"))
    assert loaded_rerankers() == [reranker] and loaded_causal_lms() == [decoder]
    monkeypatch.setattr(core.model_cache.MODELS, "limit_bytes", decoder.nbytes + reranker.nbytes // 2)
    second = load_causal_lm(str(models / "llama-1"))  # over the bound: the reranker (oldest) goes first
    assert loaded_rerankers() == [] and loaded_causal_lms() == [second]
    unload()  # unloading rerankers leaves decoders alone
    assert loaded_causal_lms() == [second]
    unload_causal_lms()
    assert core.model_cache.MODELS.loaded() == []


def test_a_visitor_unloads_and_closes_only_their_own_decoders(hosted_site, empty_cache):
    alice, bob = visitor("alice"), visitor("bob")
    args = ("models/llama-0", "models/llama-1", PROMPT, 4, 0, 1, 0, "cpu", "auto", hosted_site)
    status, *_ = list(generate_compare(*args, request=alice))[-1]
    assert status.startswith("✓ Done")
    held = loaded_causal_lms("alice")
    assert len(held) == 2 and loaded_causal_lms("bob") == []
    list(generate_compare("models/llama-0", *args[1:], request=bob))  # bob shares alice's loaded copies
    assert loaded_causal_lms("bob") == held
    assert unload_all(hosted_site, bob) == "Models unloaded."  # the attack: bob's Unload, alice's models
    assert loaded_causal_lms("bob") == [] and loaded_causal_lms("alice") == held
    end_session(hosted_site, alice)  # alice closes the page: what she held is released
    assert loaded_causal_lms() == []
