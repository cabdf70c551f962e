"""Holes an adversarial review of hosted mode found after the issue-16 fixes, each now closed: a visitor
here reads the source, calls events by number over HTTP and mints session ids. Each test performs the
attack and failed before its fix. Run with -s to see what each attack reached.
"""
import json
import shutil
import threading
import time
from pathlib import Path

import gradio as gr
import httpx
import pytest

import ui.merge.panel
import ui.playground
import ui.sweep.panel
from core.app.quota import visitor_bytes
from core.app.sessions import session_workspace
from core.app.workspace import Workspace
from core.errors import CheckpointError
from tests.app_server import fn_index, launched
from ui.gauge import refresh_gauge
from ui.playground import rerank_compare
from ui.sweep.panel import run_sweep

DOCS = "the model said hello\nworld"
HUB_PAIR = ("merge_method: linear\nmodels:\n  - model: someone/big-a\n    parameters: {weight: 1}\n"
            "  - model: someone/big-b\n    parameters: {weight: 1}\n")


def _hosted(root: Path, **limits) -> Workspace:
    root = root.resolve()
    return Workspace(root, root / "models", root / "outputs", hosted=True, **limits)


def _join(blocks, index: int, data: list, session: str, address: str) -> httpx.Response:
    return httpx.post(f"{blocks.local_url}gradio_api/queue/join", timeout=30,
                      json={"data": data, "fn_index": index, "session_hash": session, "event_data": None,
                            "trigger_id": None},
                      headers={"X-Forwarded-For": address})  # loopback: uvicorn takes it as the peer


def _wait(condition, what: str, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def gated(monkeypatch):
    """A gate the held handlers wait on, and the list of calls currently inside them."""
    gate, inside, lock = threading.Event(), [], threading.Lock()

    def hold(name):
        with lock:
            inside.append(name)
        try:
            assert gate.wait(60), "the test never released the gate"
        finally:
            with lock:
                inside.remove(name)
    yield gate, inside, hold
    gate.set()


# ---------------------------------------------------------------------------------------------
# F1: /plan is outside the per-visitor cap, and one visitor's plans fill the whole queue.
# ---------------------------------------------------------------------------------------------
def test_one_visitors_plans_lock_everyone_out_of_the_queue(tmp_path, gated, monkeypatch):
    """A plan of Hub ids downloads both repos (core.io.reference._download) before it answers: minutes for a big
    repo. /plan is public, runs 4 at once and is not in the "gpu" lane, so limit_visitor_jobs never counts it;
    4 running + 8 waiting fill max_size=8 and every other visitor's join (page-load events included) is
    refused with 'Queue is full'."""
    gate, inside, hold = gated
    def slow_plan(*args, **kwargs):  # what a preview of two big Hub repos does: download them
        hold("plan")
        raise CheckpointError("the test's download ended")

    monkeypatch.setattr(ui.merge.panel, "preview", slow_plan)
    ws = _hosted(tmp_path / "served", max_jobs=8, max_session_jobs=2)
    with launched(ws) as (blocks, _):
        plan = fn_index(blocks, "plan")
        data = [HUB_PAIR, "out", "cpu", None]
        first = [_join(blocks, plan, data, f"greedy-{n}", "203.0.113.9").status_code for n in range(4)]
        _wait(lambda: len(inside) == 2, "two plans running")
        more = [_join(blocks, plan, data, f"greedy-{n}", "203.0.113.9").status_code for n in range(4, 12)]
        other = _join(blocks, fn_index(blocks, "rerank_compare"), ["models/ce", "models/ce", "q", DOCS, None, "cpu",
                                                                 False, None, None], "patient", "198.51.100.7")
        print(f"\nreliability visitor attacks: greedy visitor's 12 /plan joins answered {first + more}; another "
              f"visitor's comparison answered {other.status_code}")
        gate.set()
        assert first == [200, 200, 400, 400] and set(more) == {400}, first + more
        assert other.status_code == 200, "one visitor's plans filled the queue for everybody"


# ---------------------------------------------------------------------------------------------
# F2: hosted off a Space, gradio's REST route runs heavy events beside the queue.
# ---------------------------------------------------------------------------------------------
def test_hosted_off_a_space_the_rest_route_skips_the_queue_and_the_cap(tmp_path, gated, monkeypatch,
                                                                        bert_cls_family):
    """gradio sets api_open = (not on a Space) and app.py never passes api_open=False, so with `--hosted`
    (or SPACE_ID without SYSTEM=spaces) POST /gradio_api/run/<api_name> calls process_api directly: no
    max_size, no limit_visitor_jobs (it wraps queue.push only), no concurrency_limit=1 on the gpu lane."""
    gate, inside, hold = gated
    real = ui.playground.compare
    monkeypatch.setattr(ui.playground, "compare", lambda *a, **k: (hold("compare"), real(*a, **k))[1])
    monkeypatch.delenv("SYSTEM", raising=False)
    ws = _hosted(tmp_path / "served", max_jobs=8, max_session_jobs=2)
    shutil.copytree(bert_cls_family[0], ws.models_dir / "ce")
    with launched(ws) as (blocks, _):
        data = ["models/ce", "models/ce", "the model", DOCS, None, "cpu", False, None, None]
        codes = []

        def call(n):
            codes.append(httpx.post(f"{blocks.local_url}gradio_api/run/rerank_compare", timeout=90,
                                    json={"data": data, "session_hash": f"rest-{n}"}).status_code)

        threads = [threading.Thread(target=call, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        running = len(inside)
        gate.set()
        print(f"\nreliability visitor attacks: 4 REST calls from one address: {running} ran beside the queue; "
              f"answers {codes}")
        assert codes and all(code != 200 for code in codes), codes
        assert running <= 1, f"{running} heavy jobs of one visitor ran at once beside the queue"


# ---------------------------------------------------------------------------------------------
# F3: join + /cancel frees the visitor's slot while the job keeps running in its thread.
# ---------------------------------------------------------------------------------------------
def test_cancelled_jobs_keep_running_and_stack_past_the_cap(tmp_path, gated, monkeypatch, bert_cls_family):
    """README's known limit says a cancelled comparison 'still finishes in its worker thread'; it does not
    say that the cancel frees the slot at once, so join+cancel repeated stacks any number of heavy jobs
    (up to gradio's 40 worker threads) on the lane that should run one at a time. The same holds for
    weights from data and for a merge's first step (its quota plan, which downloads Hub repos)."""
    gate, inside, hold = gated
    real = ui.playground.compare
    monkeypatch.setattr(ui.playground, "compare", lambda *a, **k: (hold("compare"), real(*a, **k))[1])
    ws = _hosted(tmp_path / "served", max_jobs=8, max_session_jobs=2)
    shutil.copytree(bert_cls_family[0], ws.models_dir / "ce")
    with launched(ws) as (blocks, _):
        index = fn_index(blocks, "rerank_compare")
        data = ["models/ce", "models/ce", "the model", DOCS, None, "cpu", False, None, None]
        answers = []
        for n in range(5):
            before = len(inside)
            answer = _join(blocks, index, data, "canceller", "203.0.113.9")
            answers.append(answer.status_code)
            if answer.status_code != 200:
                break
            event = answer.json()["event_id"]
            _wait(lambda: len(inside) > before, "the comparison to start")
            httpx.post(f"{blocks.local_url}gradio_api/cancel", timeout=30,
                       json={"session_hash": "canceller", "fn_index": index, "event_id": event})
            _wait(lambda: event not in blocks._queue.event_ids_to_events, "gradio to drop the cancelled event")
        stacked = len(inside)
        gate.set()
        print(f"\nreliability visitor attacks: join+cancel rounds from one address answered {answers}: {stacked} "
              "comparisons running at once (cap 2)")
        assert answers == [200, 200, 400], answers
        assert stacked <= 2, f"{stacked} heavy jobs of one visitor run at once after join+cancel"


# ---------------------------------------------------------------------------------------------
# F4: a sweep's scratch merges are never checked against the visitor's size cap.
# ---------------------------------------------------------------------------------------------
def test_a_sweeps_scratch_merge_is_held_to_the_size_cap(tmp_path, bert_cls_family, monkeypatch):
    """README: the 5 GB cap covers 'a sweep's scratch merges'. merged_on_disk (core/cocktail/sweep_merges.py) writes a full
    merge per α into the session folder with no check_quota, so a model too big for memory (the case that
    picks the disk mode) writes its whole size, however big, past the cap."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    cap = 10_000  # bytes: far less than one merge of the test model
    ws = _hosted(tmp_path / "site", max_output_bytes=cap)
    for n in (0, 1):
        shutil.copytree(bert_cls_family[n], ws.models_dir / f"ce{n}")
    monkeypatch.setattr("core.cocktail.sweep.fits_in_memory", lambda *args, **kwargs: False)  # too big: the disk way
    import core.cocktail.sweep_merges
    real_merge, peak = core.cocktail.sweep_merges.merge, []

    def spy(recipe, out, **kwargs):
        folder = real_merge(recipe, out, **kwargs)
        peak.append(visitor_bytes(session_workspace(ws, "v")))
        return folder

    monkeypatch.setattr(core.cocktail.sweep_merges, "merge", spy)
    labelled = tmp_path / "tmp" / "gradio" / "mine.jsonl"  # where gradio keeps uploads
    labelled.parent.mkdir()
    labelled.write_text(json.dumps({"query": "q", "docs": ["a", "b"], "labels": [1, 0]}) + "\n")
    refused = None
    try:
        list(run_sweep("models/ce0", "models/ce1", "linear", "cpu", [], [str(labelled)], "0", ws,
                       gr.Request(session_hash="v")))
    except gr.Error as error:
        refused = error.message
    print(f"\nreliability visitor attacks F4: cap {cap:,} bytes; the sweep's scratch merge held {max(peak or [0]):,} bytes; "
          f"refusal: {refused!r}")
    assert max(peak or [0]) <= cap, f"the scratch merge wrote {max(peak):,} bytes past a {cap:,}-byte cap"


# ---------------------------------------------------------------------------------------------
# F5: the memory gauge shows every visitor what another visitor is running.
# ---------------------------------------------------------------------------------------------
def test_the_gauge_does_not_show_another_visitors_job(tmp_path, monkeypatch):
    """MONITOR is one per process and the gauge's label is the job's: 'merge <output name>', 'compare
    <model A> / <model B>' (a private Hub repo's name, read with the visitor's own token), 'sweep A → B'.
    Every visitor's timer (refresh_gauge, private but polled by every page) reads it."""
    entered, gate = threading.Event(), threading.Event()

    def held_load(*args, **kwargs):
        entered.set()
        gate.wait(30)
        raise ui.playground.MergeDeskError("stopped by the test")

    monkeypatch.setattr(ui.playground, "load_reranker", held_load)
    ws = _hosted(tmp_path / "site")
    alice = threading.Thread(target=lambda: pytest.raises(gr.Error, rerank_compare, "alice-org/secret-reranker",
                                                           "alice-org/secret-tuned", "q", DOCS, None, "cpu", False,
                                                           ws, gr.Request(session_hash="alice")))
    alice.start()
    try:
        assert entered.wait(30)
        seen_by_bob, _ = refresh_gauge()  # what bob's page polls every second
    finally:
        gate.set()
        alice.join(30)
    print(f"\nreliability visitor attacks F5: bob's gauge reads: {seen_by_bob[-90:]!r}")
    assert "secret-reranker" not in seen_by_bob, "another visitor's models are shown to everyone"


# ---------------------------------------------------------------------------------------------
# F6: a gated repo the server once downloaded is served from its cache to an anonymous visitor.
# ---------------------------------------------------------------------------------------------
def test_an_anonymous_visitor_is_not_served_a_gated_repo_from_the_servers_cache(tmp_path, monkeypatch,
                                                                              bert_cls_family):
    """_download (core/io/reference.py) takes list_repo_files as the access check, but the Hub lists a gated
    repo's files (and answers repo_info / the tree) to anyone: only the file downloads are gated. The real
    snapshot_download then asks hf_hub_download for each file at the resolved commit hash, which returns the
    cached pointer without any request when the file is in the cache, so the weights the operator's HF_TOKEN
    fetched once are opened for a visitor who never accepted the licence. Here the Hub's answers are those
    it gives for a gated repo to an anonymous caller; any file download (HEAD) is refused as gated."""
    import huggingface_hub
    import huggingface_hub.constants
    import huggingface_hub.file_download
    from huggingface_hub.errors import GatedRepoError
    from huggingface_hub.hf_api import HfApi, RepoFile

    from core.io.reference import resolve_reference

    repo, sha = "operator/gated-llama", "a" * 40
    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--operator--gated-llama" / "snapshots" / sha
    shutil.copytree(bert_cls_family[0], snapshot)  # what the server's own token downloaded earlier
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(sha)
    names = sorted(p.name for p in snapshot.iterdir())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    sent = []

    def listing(repo_id, *, token=None, **_):  # public for a gated repo
        sent.append(("list_repo_files", token))
        return names

    class Info:
        sha = "a" * 40

    def repo_info(self, repo_id, **kwargs):  # public for a gated repo (it says gated="manual")
        sent.append(("repo_info", kwargs.get("token", self.token)))
        return Info()

    def tree(self, repo_id, **kwargs):  # public for a gated repo
        sent.append(("list_repo_tree", self.token))
        return [RepoFile(path=name, size=(snapshot / name).stat().st_size, oid="0" * 40) for name in names]

    def gated_file(*args, **kwargs):  # the download itself: refused without an accepted licence
        sent.append(("HEAD file", kwargs.get("token")))
        raise GatedRepoError(f"401 Client Error: access to model {repo} is restricted; you must have access",
                             response=httpx.Response(401, request=httpx.Request("HEAD", "https://hf.co/x")))

    def auth_check(repo_id, *, token=None, **_):  # the Hub's access check: no accepted licence, no access
        sent.append(("auth_check", token))
        raise GatedRepoError(f"403 Client Error: access to model {repo} is restricted; you must accept its terms",
                             response=httpx.Response(403, request=httpx.Request("GET", "https://hf.co/x")))

    monkeypatch.setattr(huggingface_hub, "auth_check", auth_check)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", listing)
    monkeypatch.setattr(HfApi, "repo_info", repo_info)
    monkeypatch.setattr(HfApi, "list_repo_tree", tree)
    monkeypatch.setattr(huggingface_hub.file_download, "get_hf_file_metadata", gated_file)
    served = None
    try:
        served = resolve_reference(repo, token=False)  # hosted, not signed in (ui.common.hub_token)
    except Exception as error:  # noqa: BLE001 - a refusal of any kind is what the promise asks for
        print(f"\nreliability visitor attacks F6: refused: {error}")
    print(f"\nreliability visitor attacks F6: anonymous visitor asked for gated {repo}: served {served}; Hub calls {sent}")
    assert served is None, f"the gated repo's cached weights were served to an anonymous visitor: {served}"


# ---------------------------------------------------------------------------------------------
# F7: gradio's run-history routes act with the server's HF token for a request that arrives on loopback.
# ---------------------------------------------------------------------------------------------
def test_run_history_does_not_lend_the_servers_hub_token(tmp_path, monkeypatch):
    """gradio 6.31 mounts /gradio_api/run-history/* in every app unless launch(run_history=False); its
    resolve_token gives a request whose peer and Host are loopback the machine's own token (HF_TOKEN or the
    saved login; only on a Space is that skipped). Off a Space, a same-host reverse proxy (a plain nginx
    proxy_pass: Host 127.0.0.1:7860, the client's own X-Forwarded-For passed through) delivers every visitor
    that way, and /run-history/buckets, /connect (creates a bucket) and /records then run as the operator."""
    from huggingface_hub.hf_api import HfApi

    used = []

    def list_buckets(self, *args, token=None, **kwargs):
        used.append(token)
        return []

    monkeypatch.setattr(HfApi, "list_buckets", list_buckets, raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_server_secret")
    monkeypatch.delenv("SYSTEM", raising=False)
    with launched(_hosted(tmp_path / "served", max_jobs=8, max_session_jobs=2)) as (blocks, _):
        answer = httpx.get(f"{blocks.local_url}gradio_api/run-history/buckets", timeout=30,
                           headers={"X-Forwarded-For": "127.0.0.1"})  # what such a proxy passes on
    print(f"\nreliability visitor attacks F7: GET /run-history/buckets over loopback answered {answer.status_code}; tokens used {used}")
    assert "hf_server_secret" not in used, "a visitor's request ran on the Hub with the server's token"
