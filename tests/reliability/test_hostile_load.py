"""A visitor tries to lock everyone else out of the hosted app; each test performs one such attack.

Attacks: joins of the heavy lane fired at once, from one session hash or from many minted ones;
one job as big as the visitor likes (passages, α's, uploads); disk filled with zips, exported
recipes and sweep scratch that the size cap did not count and page close did not remove; and one
visitor's slow form edit holding up everybody else's. Several visitors act at the same moment
(threads), as on a real Space. Run with -s to see the counts.
"""
import ipaddress
import json
import os
import shutil
import threading
import time
from pathlib import Path

import gradio as gr
import httpx
import pytest
from starlette.requests import Request

import ui.merge.form
import ui.merge.weights_panel
import ui.playground
import ui.sweep.panel
from core.app.sessions import cleanup_stale_sessions, session_workspace
from core.app.workspace import Workspace, default_workspace
from core.errors import MergeDeskError
from tests.app_server import fn_index, launched, local_workspace
from ui.merge.form import export_recipe
from ui.merge.panel import STALE_SESSION_S, end_session, make_zip, merge, serve_downloads_in_place
from ui.merge.recipe_form import new_form
from ui.playground import rerank_compare
from ui.session_jobs import SPACE_PROXIES, client_address, visitor_key
from ui.sweep.panel import run_sweep

DOCS = "the model said hello\nworld"
PAIR = "merge_method: linear\nmodels:\n" + "".join(f"  - model: models/{name}\n    parameters: {{weight: 1}}\n"
                                                    for name in ("llama", "tuned"))


def _hosted(root: Path, **limits) -> Workspace:
    root = root.resolve()
    return Workspace(root, root / "models", root / "outputs", hosted=True, **limits)


def _visitor(session: str) -> gr.Request:
    return gr.Request(session_hash=session)


def _events(blocks) -> list:
    """gradio's table of queued and running events (read here so that the old code can be tested too)."""
    return list(blocks._queue.event_ids_to_events.values())


def _wait_for_quiet(blocks) -> None:
    deadline = time.monotonic() + 60
    while _events(blocks):
        assert time.monotonic() < deadline, "the held jobs never finished"
        time.sleep(0.02)


@pytest.fixture
def held_lane(tmp_path, bert_cls_family, monkeypatch):
    """A launched hosted app (2 heavy jobs per visitor, 8 in the queue) whose comparisons wait on a gate."""
    gate = threading.Event()
    real_compare = ui.playground.compare

    def held_compare(*args, **kwargs):
        assert gate.wait(60), "the test never released the gate"
        return real_compare(*args, **kwargs)

    monkeypatch.setattr(ui.playground, "compare", held_compare)
    ws = _hosted(tmp_path / "served", max_jobs=8, max_session_jobs=2)
    shutil.copytree(bert_cls_family[0], ws.models_dir / "ce")
    with launched(ws) as (blocks, _):
        try:
            yield blocks, gate
        finally:
            gate.set()


def _burst(blocks, sessions: list[str], address: str) -> list[int]:
    """/queue/join for rerank_compare from every session at the same instant (a barrier); the status codes."""
    index = fn_index(blocks, "rerank_compare")
    data = ["models/ce", "models/ce", "the model", DOCS, None, "cpu", False]
    data += [None] * (len(blocks.fns[index].inputs) - len(data))  # the states (workspace, kept result): server-side
    barrier, codes = threading.Barrier(len(sessions)), [None] * len(sessions)

    def join(n: int) -> None:
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            codes[n] = client.post(f"{blocks.local_url}gradio_api/queue/join",
                                   json={"data": data, "fn_index": index, "session_hash": sessions[n],
                                         "event_data": None, "trigger_id": None},
                                   headers={"X-Forwarded-For": address}).status_code  # loopback: uvicorn trusts it

    threads = [threading.Thread(target=join, args=(n,)) for n in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return codes


@pytest.mark.parametrize("minted", [False, True], ids=["one-session-hash", "a-new-hash-per-join"])
def test_simultaneous_joins_from_one_address_admit_exactly_its_quota(held_lane, minted):
    blocks, gate = held_lane
    admitted = []
    for round_ in range(3):  # the old check raced; three bursts make a lucky pass unlikely
        sessions = [f"greedy{round_}-{n}" if minted else "greedy" for n in range(8)]
        codes = _burst(blocks, sessions, "203.0.113.9")
        admitted.append(codes.count(200))
        assert sorted(codes) == [200] * 2 + [400] * 6, codes
        other = _burst(blocks, ["patient"], "198.51.100.7")  # another visitor still gets in
        assert other == [200]
        gate.set()
        _wait_for_quiet(blocks)
        gate.clear()
    hashes = "8 session hashes" if minted else "1 session hash"
    print(f"\nreliability hostile load: 3 bursts of 8 simultaneous joins ({hashes}"
          f", one address), quota 2: admitted {admitted}; another address admitted each time")


def _request(peer: str, forwarded: str | None = None, session: dict | None = None) -> Request:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    scope = {"type": "http", "client": (peer, 40000), "headers": headers}
    return Request({**scope, "session": session} if session is not None else scope)


def test_the_fairness_key_is_what_a_visitor_cannot_mint():
    """Behind a Space's proxy (peer 10.x), forged X-Forwarded-For entries lie left of the one the proxy adds."""
    space = [ipaddress.ip_network(net) for net in SPACE_PROXIES]
    real = visitor_key(_request("10.16.3.80", "203.0.113.9"), None, space)
    forged = [visitor_key(_request("10.16.3.80", f"6.6.6.{n}, 203.0.113.9"), None, space) for n in range(5)]
    assert real == "address:203.0.113.9" and set(forged) == {real}
    assert visitor_key(_request("10.16.3.81", "198.51.100.7"), None, space) == "address:198.51.100.7"  # a neighbour
    assert visitor_key(_request("10.1.1.1", "203.0.113.9, 10.2.2.2"), None, space) == real  # two proxy hops
    # Off a Space nothing is trusted beyond what uvicorn already did: the header cannot change the key.
    assert visitor_key(_request("203.0.113.9", "1.2.3.4"), None, []) == "address:203.0.113.9"
    assert client_address("2001:db8:1:2:aaaa::1", "", []) == client_address("2001:db8:1:2:ffff::9", "", [])
    assert client_address("2001:db8:1:3::1", "", []) != client_address("2001:db8:1:2::1", "", [])
    oauth = {"oauth_info": {"userinfo": {"preferred_username": "ada"}}}
    assert visitor_key(_request("10.16.3.80", "203.0.113.9", oauth), None, space) == "user:ada"
    assert visitor_key(_request("203.0.113.9"), "bob", []) == "user:bob"


def test_one_job_cannot_be_as_big_as_the_visitor_likes(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEDESK_HOME", str(tmp_path))
    hosted = default_workspace(hosted=True)

    def reached(*args, **kwargs):
        raise MergeDeskError("reached the models")

    monkeypatch.setattr(ui.playground, "load_reranker", reached)
    monkeypatch.setattr(ui.sweep.panel, "sweep_points", reached)
    monkeypatch.setattr(ui.sweep.panel, "preview", reached)  # a hosted sweep previews its scratch merge first
    monkeypatch.setattr(ui.merge.weights_panel, "data_weights", reached)
    many = "\n".join(f"passage {n}" for n in range(6001))
    with pytest.raises(gr.Error, match="6,001 passages pasted; the box takes at most 5,000"):  # the box's own bound
        rerank_compare("a/b", "a/c", "q", many, None, "cpu", False, hosted, _visitor("v"))
    uploaded = tmp_path / "many.jsonl"  # the same passages as a file meet the pairs bound
    uploaded.write_text(json.dumps({"query": "q", "docs": [f"passage {n}" for n in range(6001)]}) + "\n")
    with pytest.raises(gr.Error) as caught:
        rerank_compare("a/b", "a/c", "", "", str(uploaded), "cpu", False, hosted, _visitor("v"))
    assert caught.value.message == ("this comparison (6,001 passages × 2 models) scores 12,002 (query, passage) "
                                    "pairs; a job on this app may score at most 12,000: use fewer passages, queries "
                                    "or α's, or run MergeDesk on your machine")
    alphas = ", ".join(f"{n / 20:g}" for n in range(21))
    demo = ui.sweep.panel.demo_set_names()
    with pytest.raises(gr.Error, match=r"this sweep \(\d[\d,]* passages × 21 merges\) scores .* at most 12,000"):
        next(run_sweep("a/b", "a/c", "linear", "cpu", demo, None, alphas, hosted, _visitor("v")))
    examples = tmp_path / "examples.jsonl"
    examples.write_text("".join(json.dumps({"input": f"q{n}", "output": "a"}) + "\n" for n in range(6001)))
    form = new_form("linear", models=("a/b", "a/c"))
    outcome, _ = ui.merge.weights_panel.fill_weights(form, str(examples), 5.0, "cpu", hosted, _visitor("v"))
    assert outcome.startswith("✗ these examples (6,001 texts × 2 models) scores 12,002"), outcome
    # Controls: the default sweep of the demo sets fits, and a local app takes any size.
    local = local_workspace(tmp_path)
    assert ui.merge.weights_panel.fill_weights(form, str(examples), 5.0, "cpu", local, _visitor("v"))[0] == \
        "✗ reached the models"
    for workspace in (hosted, local_workspace(tmp_path)):
        with pytest.raises(gr.Error, match="reached the models"):
            list(run_sweep("a/b", "a/c", "linear", "cpu", demo, None, "0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, "
                           "0.9, 1", workspace, _visitor("v")))
    with pytest.raises(gr.Error, match="reached the models"):
        rerank_compare("a/b", "a/c", "", "", str(uploaded), "cpu", False, local_workspace(tmp_path), _visitor("v"))
    print("\nreliability hostile load: 6,001 passages, a 21-α demo sweep and 6,001 weight examples refused before a "
          "model is loaded; the 11-α demo sweep admitted")


def test_an_upload_bigger_than_the_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEDESK_HOME", str(tmp_path))
    with launched(default_workspace(hosted=True)) as (blocks, _):
        url = f"{blocks.local_url}gradio_api/upload"
        big = httpx.post(url, files={"files": ("q.jsonl", b"x" * (10 * 1000**2 + 1))}, timeout=60)
        small = httpx.post(url, files={"files": ("q.jsonl", b'{"query": "q", "docs": ["d"]}\n')}, timeout=60)
    print(f"\nreliability hostile load: 10 MB + 1 byte upload answered {big.status_code}; "
          f"a small one {small.status_code}")
    assert big.status_code == 413 and small.status_code == 200


def _files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file())


def test_what_a_visitor_writes_counts_in_their_cap_and_leaves_with_them(tmp_path, llama_family, monkeypatch):
    """Zips and exported recipes fill the cap; page close, and the stale sweep, remove every file written."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))  # every temp file lands where it can be seen
    (tmp_path / "tmp").mkdir()
    one_merge = sum(f.stat().st_size for f in llama_family[0].glob("*.safetensors"))
    ws = serve_downloads_in_place(_hosted(tmp_path / "site", max_output_bytes=int(2.5 * one_merge)))  # as served
    for name, family in (("llama", llama_family[0]), ("tuned", llama_family[1])):
        shutil.copytree(family, ws.models_dir / name)

    def act(session: str) -> str:
        statuses = [status for status, *_ in merge(PAIR, "first", "cpu", False, 0, ws, _visitor(session))]
        assert statuses[-1].startswith("**✓ Merged**")
        archive = make_zip(str(session_workspace(ws, session).outputs_dir / "first"), ws, _visitor(session))
        assert archive.visible
        for _ in range(3):  # one file, overwritten: not three
            assert export_recipe(PAIR, ws, _visitor(session)).visible
        try:
            for status, *_ in merge(PAIR, "second", "cpu", False, 0, ws, _visitor(session)):
                pass
        except gr.Error as error:
            return error.message
        return status

    refusal = act("alice")
    assert refusal.startswith("not enough room in this workspace") and "\n" not in refusal
    written = _files(tmp_path / "tmp", ws.outputs_dir)
    assert len(written) >= 4, written
    end_session(ws, _visitor("alice"))
    assert _files(tmp_path / "tmp", ws.outputs_dir) == []
    assert export_recipe("x" * 300_000, ws, _visitor("alice")).visible is False  # bounded
    # The stale sweep: a visitor who never closed the page.
    act("bob")
    old = time.time() - STALE_SESSION_S - 60
    for path in [*(tmp_path / "tmp").rglob("*"), *ws.outputs_dir.rglob("*")]:
        os.utime(path, (old, old))
    cleanup_stale_sessions(ws, STALE_SESSION_S)
    assert _files(tmp_path / "tmp", ws.outputs_dir) == []
    print(f"\nreliability hostile load: merge + zip + 3 exports filled a {2.5:g}-merge cap (next merge refused); "
          f"{len(written)} files written, 0 left after page close, 0 after the stale sweep")


def test_a_sweep_merges_inside_the_visitors_folder(tmp_path, bert_cls_family, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    ws = _hosted(tmp_path / "site")
    for n in (0, 1):
        shutil.copytree(bert_cls_family[n], ws.models_dir / f"ce{n}")
    labelled = tmp_path / "tmp" / "gradio" / "mine.jsonl"  # where gradio keeps uploads
    labelled.parent.mkdir()
    labelled.write_text(json.dumps({"query": "q", "docs": ["a", "b"], "labels": [1, 0]}) + "\n")
    monkeypatch.setattr("core.cocktail.sweep.fits_in_memory", lambda *args, **kwargs: False)  # the streamed ("disk") way
    import core.cocktail.sweep_merges
    real_merge, written = core.cocktail.sweep_merges.merge, []

    def spy(recipe, out, **kwargs):
        written.append(Path(out))
        return real_merge(recipe, out, **kwargs)

    monkeypatch.setattr(core.cocktail.sweep_merges, "merge", spy)
    steps = list(run_sweep("models/ce0", "models/ce1", "linear", "cpu", [], [str(labelled)], "0, 1", ws,
                           _visitor("v")))
    mine = session_workspace(ws, "v").outputs_dir
    assert "✓ Swept" in steps[-1][0] and len(written) == 2
    assert all(mine in path.parents for path in written), written
    assert _files(mine) == [] and _files(tmp_path / "tmp") == [labelled]


def _form_index(blocks, label_or_id: str) -> int:
    block = next(b for b in blocks.blocks.values()
                 if getattr(b, "elem_id", None) == label_or_id or getattr(b, "label", None) == label_or_id)
    return next(i for i, fn in blocks.fns.items() if (block._id, "change") in fn.targets)


def _join(blocks, index: int, value: str, session: str) -> str:
    """Ask for one form edit as the page does (it goes through the queue); its event id."""
    body = {"data": [None, value], "fn_index": index, "session_hash": session, "event_data": None, "trigger_id": None}
    answer = httpx.post(f"{blocks.local_url}gradio_api/queue/join", json=body, timeout=20)
    answer.raise_for_status()
    return answer.json()["event_id"]


def _outputs(blocks, session: str, count: int) -> dict:
    """Read the session's one event stream (the page opens one) until `count` events end: event id → outputs."""
    done = {}
    with httpx.stream("GET", f"{blocks.local_url}gradio_api/queue/data", params={"session_hash": session},
                      timeout=60) as events:
        for line in events.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed":
                done[message["event_id"]] = message["output"]["data"]
                if len(done) == count:
                    return done
    raise AssertionError(f"the stream ended after {len(done)} of {count} results")


def test_a_slow_form_edit_holds_up_only_its_own_visitor(tmp_path, monkeypatch):
    holding, gate, entered = threading.Event(), threading.Event(), []
    real_set_field = ui.merge.form.set_field

    def held_set_field(form, name, value):
        entered.append(value)
        if value == "models/hold":
            holding.set()
            assert gate.wait(60)
        return real_set_field(form, name, value)

    monkeypatch.setattr(ui.merge.form, "set_field", held_set_field)  # before launch: the handlers capture it
    with launched(local_workspace(tmp_path)) as (blocks, _):
        base, dtype = _form_index(blocks, "base-model"), _form_index(blocks, "Working dtype")
        results = {}
        first = _join(blocks, base, "models/hold", "alice")
        alice = threading.Thread(target=lambda: results.update(_outputs(blocks, "alice", 2)))
        alice.start()
        try:
            assert holding.wait(30)
            second = _join(blocks, dtype, "float16", "alice")

            def bob_edits():
                event = _join(blocks, base, "models/bob", "bob")
                results["bob"] = _outputs(blocks, "bob", 1)[event]

            bob = threading.Thread(target=bob_edits)
            started = time.monotonic()
            bob.start()
            bob.join(15)
            waited = time.monotonic() - started
            assert "bob" in results, f"bob's edit waited {waited:.0f} s behind alice's held one"
            assert "base_model: models/bob" in results["bob"][1]
            assert "float16" not in entered  # alice's second edit waits for her first
        finally:
            gate.set()
            alice.join(30)
    print(f"\nreliability hostile load: while one visitor's form edit was held, another's took {waited:.2f} s; "
          "the held visitor's next edit ran after it and kept both")
    assert "base_model: models/hold" in results[first][1]
    assert "base_model: models/hold" in results[second][1] and "dtype: float16" in results[second][1]
