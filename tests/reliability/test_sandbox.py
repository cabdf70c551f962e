"""Hosted mode is a sandbox: each test here tries to break out of it and checks that it cannot.

Attacks go through the entry points a visitor reaches (the merge tab's plan/merge, the
playground's rerank_compare, and the launched app's queue with hand-made requests), not only
through core.app (paths.py, sessions.py, quota.py). Each break-out is paired with a control showing that the same input
does work where it is allowed (local mode, or the visitor's own folder), so a refusal is the
sandbox's doing and not a broken fixture. Run with -s to see the counts.
"""
import ast
import json
import shutil
import threading
import time
from pathlib import Path

import gradio as gr
import httpx
import pytest
import torch
from gradio_client import Client
from safetensors.torch import load_file

import ui.playground
from core.app.models import find_models
from core.app.paths import check_model_ref
from core.app.sessions import session_workspace
from core.app.workspace import Workspace
from core.errors import MergeDeskError
from core.io.checkpoint import Checkpoint
from core.rerank.model import load_reranker
from tests.app_server import browser_event, fn_index, free_port, launched
from ui.merge.panel import end_session, make_zip, merge, plan
from ui.playground import rerank_compare
from ui.session_jobs import limit_visitor_jobs, visitor_jobs

DOCS = "the model said hello\nworld"
PAIR = "merge_method: linear\nmodels:\n" + "".join(f"  - model: models/{name}\n    parameters: {{weight: 1}}\n"
                                                    for name in ("llama", "tuned"))


def _hosted(root, **limits) -> Workspace:
    root = root.resolve()
    return Workspace(root, root / "models", root / "outputs", hosted=True, **limits)


def _visitor(session: str) -> gr.Request:
    return gr.Request(session_hash=session)


def _linear(*models) -> str:
    return "merge_method: linear\nmodels:\n" + "".join(f"  - model: {m}\n    parameters: {{weight: 1}}\n"
                                                        for m in models)


def _run_merge(recipe: str, name: str, ws: Workspace, session: str) -> str:
    """Run the merge handler to its end; its last status line (a gr.Error becomes '✗ …')."""
    status = ""
    try:
        for status, *_ in merge(recipe, name, "cpu", False, 0, ws, _visitor(session)):
            pass
    except gr.Error as error:
        return f"✗ {error.message}"
    return status


@pytest.fixture
def site(tmp_path, llama_family, bert_cls_family):
    """A hosted workspace holding one LLM and one cross-encoder, and a real model outside it."""
    ws = _hosted(tmp_path / "site")
    shutil.copytree(llama_family[0], ws.models_dir / "llama")
    shutil.copytree(llama_family[1], ws.models_dir / "tuned")
    shutil.copytree(bert_cls_family[0], ws.models_dir / "ce")
    ws.outputs_dir.mkdir()
    outside = shutil.copytree(bert_cls_family[1], tmp_path / "outside" / "secret-model")
    return ws, outside


def _attacks(ws: Workspace, outside) -> list[str]:
    """Model references that point out of the workspace; several are real, loadable models."""
    (ws.models_dir / "to-root").symlink_to("/root")
    (ws.models_dir / "to-outside").symlink_to(outside)  # a valid model, just not ours
    (ws.models_dir / "relative-up").symlink_to("../../outside/secret-model")
    (ws.models_dir / "nest").mkdir()
    (ws.models_dir / "nest" / "deeper").symlink_to(outside.parent)
    shutil.copytree(ws.models_dir / "ce", ws.outputs_dir / "sessions" / "neighbour" / "theirs")
    inner = shutil.copytree(ws.models_dir / "ce", ws.models_dir / "inner-link",
                            ignore=shutil.ignore_patterns("*.safetensors"))
    (inner / "model.safetensors").symlink_to(outside / "model.safetensors")  # a real folder, one file links out
    (ws.outputs_dir / "sessions" / "visitor").mkdir()
    return ["/etc", "/root", str(outside), "../../etc", "models/../../outside/secret-model", "models/../..",
            "file:///etc/passwd", "file://" + str(outside), "https://example.com/model", "~/.ssh", "~root",
            "..\\..\\etc", "models\\..\\..\\etc", "C:\\Windows", "models/to-root", "models/to-outside",
            "models/relative-up", "models/nest/deeper/secret-model", "outputs", "outputs/sessions",
            "outputs/sessions/neighbour/theirs", "models/inner-link"]


def test_model_references_that_leave_the_workspace_are_refused_everywhere(site):
    ws, outside = site
    attacks = _attacks(ws, outside)
    visitor = session_workspace(ws, "visitor")
    refused = 0
    for ref in attacks:
        with pytest.raises(MergeDeskError) as caught:
            check_model_ref(ref, visitor)
        assert "\n" not in str(caught.value) and repr(ref) in str(caught.value)
        report = plan(_linear(ref, "models/llama"), "out", "cpu", ws, _visitor("visitor"))
        assert report.startswith("**✗ Not ready:**") and repr(ref) in report, (ref, report)
        with pytest.raises(gr.Error):
            rerank_compare(ref, "models/ce", "the model", DOCS, None, "cpu", False, ws, _visitor("visitor"))
        with pytest.raises(gr.Error):
            rerank_compare("models/ce", ref, "the model", DOCS, None, "cpu", False, ws, _visitor("visitor"))
        refused += 1
    print(f"\nreliability sandbox: {len(attacks)} model references tried × 4 entry points, "
          f"{refused} refused at every one")
    assert refused == len(attacks) >= 20
    # Controls: the model outside is loadable (local mode takes it), and inside folders work when hosted.
    local = Workspace(ws.root, ws.models_dir, ws.outputs_dir)
    assert plan(_linear(str(outside), str(ws.models_dir / "ce")), "out", "cpu", local).startswith("**✓ Ready")
    rerank_compare("models/ce", "models/ce", "the model", DOCS, None, "cpu", False, ws, _visitor("visitor"))
    assert plan(PAIR, "out", "cpu", ws, _visitor("visitor")).startswith("**✓")


@pytest.mark.parametrize("name", ["../../app.py", "../app.py", "/tmp/app.py", "..", ".", ".hidden", "a/b",
                                  "sessions", "x\\..\\..\\app.py", "app.py\x00", "ａｐｐ", "out.partial", ""])
def test_output_names_cannot_leave_the_session_folder(site, name):
    ws, _ = site
    before = sorted(p.relative_to(ws.root) for p in ws.root.rglob("*"))
    status = _run_merge(PAIR, name, ws, "visitor")
    assert status.startswith("✗") and "output name" in status and "\n" not in status
    assert sorted(p.relative_to(ws.root) for p in ws.root.rglob("*")) == before
    assert not (ws.root.parent / "app.py").exists()


def test_a_session_cannot_see_or_remove_another_sessions_outputs(site):
    ws, _ = site
    status = _run_merge(PAIR, "mine", ws, "alice")
    assert status.startswith("**✓ Merged**")
    alice = session_workspace(ws, "alice")
    theirs = alice.outputs_dir / "mine"
    assert check_model_ref("outputs/sessions/alice/mine", alice)  # control: alice reads her own output
    bob = session_workspace(ws, "bob")
    bob.outputs_dir.mkdir(parents=True)
    (bob.outputs_dir / "peek").symlink_to(theirs)
    for ref in ("outputs/sessions/alice/mine", str(theirs), "outputs/sessions/bob/peek", "outputs/mine"):
        assert plan(_linear(ref, "models/llama"), "x", "cpu", ws, _visitor("bob")).startswith("**✗ Not ready:**")
    assert all("alice" not in choice.ref for choice in find_models(bob))
    end_session(ws, _visitor("bob"))
    assert theirs.is_dir() and not bob.outputs_dir.exists()


@pytest.mark.parametrize("session", ["../../victim", "../victim", "..", "a/../../victim"])
def test_a_forged_session_hash_cannot_reach_outside_its_folders(site, tmp_path, monkeypatch, session):
    """gradio takes the session hash from the client; zips and cleanup must not follow it out."""
    ws, _ = site
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp" / "inner"))
    victim = tmp_path / "tmp" / "victim"
    victim.mkdir(parents=True)
    (victim / "precious").write_text("keep me")
    for folder in (tmp_path / "tmp" / "inner" / "mergedesk-downloads", ws.models_dir):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        make_zip(str(ws.models_dir / "llama"), ws, _visitor(session))
        end_session(ws, _visitor(session))
    except MergeDeskError as error:  # a hash with no usable characters is refused outright
        assert "session id" in str(error)
    assert (victim / "precious").read_text() == "keep me" and (ws.models_dir / "llama" / "config.json").exists()


def _evil_code(folder, marker) -> None:
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import BertConfig as EvilConfig, "
                                    "BertForSequenceClassification as EvilModel\n")


def test_remote_code_in_a_model_folder_never_runs(site, tmp_path):
    ws, _ = site
    marker = tmp_path / "remote-code-ran"
    known = shutil.copytree(ws.models_dir / "ce", ws.models_dir / "known-type-with-auto-map")
    unknown = shutil.copytree(ws.models_dir / "ce", ws.models_dir / "custom-type")
    for folder, model_type in ((known, "bert"), (unknown, "evil-bert")):
        _evil_code(folder, marker)
        config = json.loads((folder / "config.json").read_text())
        config.update(model_type=model_type, auto_map={"AutoConfig": "evil.EvilConfig",
                                                       "AutoModelForSequenceClassification": "evil.EvilModel",
                                                       "AutoModel": "evil.EvilModel"})
        (folder / "config.json").write_text(json.dumps(config))
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    refs = ("models/known-type-with-auto-map", "models/custom-type")
    # A known architecture is loaded with transformers' own class: the folder's code is ignored.
    _, styled, *_ = rerank_compare("models/ce", refs[0], "the model", DOCS, None, "cpu", False, ws, _visitor("v"))
    expected = load_reranker(str(ws.models_dir / "ce")).score("the model", DOCS.splitlines())
    assert sorted(styled.data["B score"]) == pytest.approx(sorted(expected), abs=1e-4)
    with pytest.raises(gr.Error, match="cannot load") as caught:  # an unknown one is refused in one line
        rerank_compare("models/ce", refs[1], "the model", DOCS, None, "cpu", False, ws, _visitor("v"))
    assert "\n" not in caught.value.message
    assert not marker.exists()
    print(f"\nreliability sandbox: {len(refs)} models carrying auto_map code loaded or refused; "
          "the code ran 0 times")


def test_every_load_in_the_code_refuses_remote_code_and_pickled_code():
    """Static: each from_pretrained passes trust_remote_code=False, each torch.load weights_only=True."""
    root = Path(__file__).resolve().parents[2]
    loads = []
    for source in [root / "app.py", *sorted((root / "core").rglob("*.py")), *sorted((root / "ui").rglob("*.py"))]:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                flag = {"from_pretrained": ("trust_remote_code", False), "load": ("weights_only", True)}.get(
                    node.func.attr)
                is_torch_load = node.func.attr != "load" or ast.unparse(node.func.value) == "torch"
                if flag and is_torch_load:
                    given = {k.arg: k.value for k in node.keywords}
                    safe = isinstance(given.get(flag[0]), ast.Constant) and given[flag[0]].value is flag[1]
                    loads.append((f"{source.name}:{node.lineno}", safe))
    print(f"\nreliability sandbox: {len(loads)} from_pretrained / torch.load calls, "
          f"{sum(safe for _, safe in loads)} with the safe flag")
    assert len(loads) >= 5 and [where for where, safe in loads if not safe] == []


class _Payload:
    """Unpickling this runs open(marker, "w"): what a malicious pytorch_model.bin would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_pickle_with_code_is_refused_and_never_runs(site, tmp_path, llama_family):
    ws, _ = site
    marker = tmp_path / "pickle-code-ran"
    folder = ws.models_dir / "pickled"
    shutil.copytree(ws.models_dir / "ce", folder, ignore=shutil.ignore_patterns("*.safetensors"))
    weights = load_file(ws.models_dir / "ce" / "model.safetensors")
    torch.save({**weights, "evil": _Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(MergeDeskError, match="not a plain tensor state dict"):
        Checkpoint.open(str(folder))
    report = plan(_linear("models/pickled", "models/ce"), "x", "cpu", ws, _visitor("v"))
    assert report.startswith("**✗ Not ready:**") and "safely" in report
    with pytest.raises(gr.Error, match="cannot load"):
        rerank_compare("models/ce", "models/pickled", "q", DOCS, None, "cpu", False, ws, _visitor("v"))
    assert not marker.exists()
    print("\nreliability sandbox: a pickle holding code × 3 entry points (engine, Check, playground): "
          "refused 3, the code ran 0 times")
    # Control: the same tensors pickled plainly load through the merge engine.
    torch.save(weights, folder / "pytorch_model.bin")
    clean = Checkpoint.open(str(folder))
    assert set(clean.tensors) == set(weights) and torch.equal(clean.read("classifier.weight"),
                                                             weights["classifier.weight"])
    clean.close()


def test_the_output_size_cap_refuses_a_merge_and_leaves_nothing(site, llama_family):
    ws, _ = site
    one_merge = sum(f.stat().st_size for f in llama_family[0].glob("*.safetensors"))
    capped = _hosted(ws.root, max_output_bytes=int(1.5 * one_merge) + 10_000)
    assert _run_merge(PAIR, "first", capped, "v").startswith("**✓ Merged**")
    status = _run_merge(PAIR, "second", capped, "v")
    assert status.startswith("✗") and "not enough room in this workspace" in status
    assert sorted(p.name for p in session_workspace(capped, "v").outputs_dir.iterdir()) == ["first"]


@pytest.fixture
def hosted_app(tmp_path, bert_cls_family):
    ws = _hosted(tmp_path / "served", max_jobs=8, max_session_jobs=2)
    shutil.copytree(bert_cls_family[0], ws.models_dir / "ce")
    with launched(ws) as (blocks, client):
        yield ws, blocks, client


def test_the_launched_app_ignores_a_forged_workspace_and_refuses_paths(hosted_app):
    """A client may send anything in the slot of the server-side workspace state; it is not used."""
    _, blocks, _ = hosted_app
    forged = {"root": "/", "models_dir": "/", "outputs_dir": "/tmp", "hosted": False}
    message = browser_event(blocks, fn_index(blocks, "plan"), [_linear("/etc", "/root"), "x", "cpu", forged], "s1")
    assert message["success"] and "absolute paths are refused" in message["output"]["data"][0]


def test_the_launched_app_serves_no_server_file_to_a_visitor(hosted_app):
    """Neither the file route nor a forged upload reads files of the server or the workspace."""
    ws, blocks, _ = hosted_app
    secrets = ["/etc/passwd", str(ws.models_dir / "ce" / "config.json"), str(Path(__file__).resolve())]
    for path in secrets:
        answer = httpx.get(f"{blocks.local_url}gradio_api/file={path}", timeout=30)
        assert answer.status_code in (403, 404) and "root:" not in answer.text, path
    forged = [{"path": path, "meta": {"_type": "gradio.FileData"}} for path in secrets]
    for upload in forged:
        try:  # refused when joining the queue (HTTP 4xx) or when run: either way, no result
            message = browser_event(blocks, fn_index(blocks, "rerank_compare"),
                                    ["models/ce", "models/ce", "", "", upload, "cpu", False, None, None], "s2")
        except httpx.HTTPStatusError as refusal:
            assert refusal.response.status_code < 500, upload
            continue
        assert not message["success"], upload
    print(f"\nreliability sandbox: {len(secrets)} server files asked for by URL and {len(forged)} as forged uploads: "
          "0 served")


def test_one_session_may_hold_only_its_quota_of_heavy_jobs(hosted_app, monkeypatch):
    ws, blocks, _ = hosted_app
    gate, started = threading.Event(), threading.Event()
    real_compare = ui.playground.compare

    def held_compare(*args, **kwargs):
        started.set()
        assert gate.wait(60), "the test never released the gate"
        return real_compare(*args, **kwargs)

    monkeypatch.setattr(ui.playground, "compare", held_compare)
    api, index = f"{blocks.local_url}gradio_api", fn_index(blocks, "rerank_compare")
    data = ["models/ce", "models/ce", "the model", DOCS, None, "cpu", False, None, None]

    def join(session, address="127.0.0.1"):  # uvicorn takes X-Forwarded-For from a loopback peer
        return httpx.post(f"{api}/queue/join", json={"data": data, "fn_index": index, "session_hash": session,
                                                     "event_data": None, "trigger_id": None},
                          headers={"X-Forwarded-For": address}, timeout=30)
    try:
        answers = [join("greedy").status_code]
        assert started.wait(60)
        answers += [join("greedy").status_code, join("greedy").status_code, join("greedy").status_code]
        assert visitor_jobs(blocks, "address:127.0.0.1") == 2
        other = join("patient", "198.51.100.7").status_code
    finally:
        gate.set()
    print(f"\nreliability sandbox: session quota 2: joins answered {answers}; another session {other}")
    assert answers == [200, 200, 400, 400] and other == 200


def test_the_job_quota_counts_handlers_with_or_without_a_request_parameter():
    """A lane handler that takes no gr.Request still gets its session counted by the validator."""
    gate = threading.Event()

    def plain(text):  # no gr.Request parameter
        assert gate.wait(60)
        return text

    def with_request(text, request: gr.Request):
        return plain(text)

    with gr.Blocks() as app:
        box, out = gr.Textbox(), gr.Textbox()
        gr.Button().click(plain, box, out, api_name="plain", concurrency_id="gpu", concurrency_limit=1)
        gr.Button().click(with_request, box, out, api_name="with_request", concurrency_id="gpu", concurrency_limit=1)
    app.queue()
    limit_visitor_jobs(app, lane="gpu", limit=1)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        for endpoint in ("/plain", "/with_request"):
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            first = client.submit("a", api_name=endpoint)
            deadline = time.monotonic() + 60
            while visitor_jobs(app, "address:127.0.0.1") < 1:
                assert time.monotonic() < deadline, "the first job never joined the queue"
                time.sleep(0.01)
            with pytest.raises(Exception, match="400"):
                client.predict("b", api_name=endpoint)
            gate.set()
            assert first.result(timeout=60) == "a"
            gate.clear()
    finally:
        gate.set()
        app.close()
