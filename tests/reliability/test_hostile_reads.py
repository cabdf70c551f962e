"""A hosted visitor tries to read the operator's files or models, or another visitor's: each test is one attempt.

The attacks: a bare name (`base`, `app.py`) that is a folder or file beside the app; a model
whose own files (weight index, modules.json, tokenizer_config.json) name files outside its
folder; Hub downloads made with the server's token or served from the server's cache; and
the loaded-model cache seen or emptied by another session. They go through the handlers a
visitor reaches (Check, Merge, the playground, the zip download) and the launched app's
queue. Each refusal is paired with a control showing the same path works where it is
allowed. Run with -s to see the counts.
"""
import json
import os
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
import torch
from huggingface_hub.errors import OfflineModeIsEnabled
from safetensors.torch import load_file

import core.model_cache
import core.rerank.model
from core.app.models import find_models
from core.app.sessions import session_workspace
from core.app.workspace import Workspace
from core.errors import MergeDeskError
from core.io.checkpoint import Checkpoint
from core.rerank.model import load_reranker
from tests.app_server import browser_event, fn_index, launched
from tests.reliability.test_sandbox import DOCS, PAIR, _hosted, _linear, _run_merge, _visitor
from ui.merge.panel import plan
from ui.merge.result_export import make_zip
from ui.playground import loaded_markdown, rerank_compare

SERVER_TOKEN = "hf_server_secret"  # the Space's own HF_TOKEN: must never be sent for a visitor


@pytest.fixture
def site(tmp_path, llama_family, bert_cls_family, monkeypatch):
    """A hosted app run from its own folder (as on a Space: root = cwd) holding the operator's files beside models/."""
    ws = _hosted(tmp_path / "app")
    shutil.copytree(llama_family[0], ws.models_dir / "llama")
    shutil.copytree(llama_family[1], ws.models_dir / "tuned")
    shutil.copytree(bert_cls_family[0], ws.models_dir / "ce")
    ws.outputs_dir.mkdir()
    shutil.copytree(llama_family[2], ws.root / "base")  # the operator's own model, beside models/
    (ws.root / "app.py").write_text("SECRET = 'operator'\n")
    monkeypatch.chdir(ws.root)
    return ws


def _zip_names(archive: str) -> list[str]:
    with zipfile.ZipFile(archive) as bundle:
        return bundle.namelist()


def test_a_bare_name_beside_the_app_is_a_path_and_is_refused(site):
    """`base` and `app.py` exist in the engine's folder: as model or base_model they are paths, not passes."""
    ws = site
    recipes = {"base_model: base": "merge_method: task_arithmetic\nbase_model: base\n" + PAIR.split("\n", 1)[1],
               "models: base": _linear("base", "models/llama"),
               "models: app.py": _linear("models/llama", "app.py"),
               "tokenizer_source: app.py": PAIR + "tokenizer_source: app.py\n"}
    refused = 0
    for name, recipe in recipes.items():
        report = plan(recipe, "stolen", "cpu", ws, _visitor("visitor"))
        assert report.startswith("**✗ Not ready:**") and "not allowed here" in report, (name, report)
        status = _run_merge(recipe, "stolen", ws, "visitor")
        assert status.startswith("✗") and "not allowed here" in status, (name, status)
        refused += 1
    with pytest.raises(gr.Error, match="not allowed here"):
        rerank_compare("base", "models/ce", "q", DOCS, None, "cpu", False, ws, _visitor("visitor"))
    assert not (ws.outputs_dir / "sessions" / "visitor" / "stolen").exists()
    # Control: `tokenizer_source: base` keeps mergekit's meaning (the base model), and the merge's zip holds
    # only the merge, which the visitor may download.
    ok = PAIR.replace("merge_method: linear", "merge_method: task_arithmetic\nbase_model: models/llama")
    assert _run_merge(ok + "tokenizer_source: base\n", "mine", ws, "visitor").startswith("**✓ Merged**")
    mine = ws.outputs_dir / "sessions" / "visitor" / "mine"
    names = _zip_names(make_zip(str(mine), ws, _visitor("visitor")).value["path"])
    assert "mine/model.safetensors" in names and not any("app.py" in n for n in names)
    print(f"\nreliability hostile reads: {len(recipes)} recipes naming files beside the app × 2 entry points "
          f"(Check, Merge): {refused} refused at both; tokenizer_source: base still merges")


def _outside_shard(folder: Path, outside: Path, mode: str) -> str:
    """Move the first shard of folder's index out to `outside`; rewrite the index to name it there."""
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    shutil.move(folder / shard, outside)
    named = os.path.relpath(outside, folder) if mode == "relative" else str(outside)
    index["weight_map"] = {k: (named if v == shard else v) for k, v in index["weight_map"].items()}
    index_file.write_text(json.dumps(index))
    return named


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_a_weight_index_naming_a_file_outside_the_model_is_refused(tmp_path, llama_sharded_family, mode):
    """The engine and the reranker loader both read the index: neither may follow it out of the folder."""
    folder = shutil.copytree(llama_sharded_family[1], tmp_path / "evil")
    named = _outside_shard(folder, tmp_path / "outside.safetensors", mode)
    for load in (Checkpoint.open, lambda ref: load_reranker(ref, cached=False)):
        with pytest.raises(MergeDeskError, match="lies outside the model's folder") as caught:
            load(str(folder))
        assert str(folder) in str(caught.value) and repr(named) in str(caught.value)
        assert "\n" not in str(caught.value)
    # Control: the untouched sharded model opens, and so does a Hugging Face cache snapshot whose files
    # are links into the cache's blob store.
    Checkpoint.open(str(llama_sharded_family[1])).close()
    repo = tmp_path / "hub" / "models--org--name"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in llama_sharded_family[1].iterdir():
        shutil.copy(file, repo / "blobs" / file.name)
        (snapshot / file.name).symlink_to(Path("../../blobs") / file.name)
    cached = Checkpoint.open(str(snapshot))
    assert len(cached.tensors) == len(Checkpoint.open(str(llama_sharded_family[1])).tensors)
    print(f"\nreliability hostile reads: a shard path out of the model ({mode}) × 2 loaders (engine, reranker): refused")


def test_a_pickle_index_naming_a_file_outside_the_model_is_refused(tmp_path, bert_cls_family):
    folder = shutil.copytree(bert_cls_family[1], tmp_path / "evil", ignore=shutil.ignore_patterns("*.safetensors"))
    weights = load_file(bert_cls_family[1] / "model.safetensors")
    torch.save(weights, tmp_path / "outside.bin")
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {k: "../outside.bin"
                                                                                     for k in weights}}))
    with pytest.raises(MergeDeskError, match="pytorch_model.bin.index.json names '../outside.bin'"):
        Checkpoint.open(str(folder))


class FakeHub:
    """huggingface_hub's auth_check / list_repo_files / snapshot_download for repos already in this machine's cache.

    Like the real ones: token=None means the ambient login (HF_TOKEN), False means none; the
    listing refuses a private repo to any other reader and raises OfflineModeIsEnabled when
    HF_HUB_OFFLINE=1; snapshot_download then falls back to the cache, which holds every repo
    here (the server fetched them all once, with its own token).
    """

    def __init__(self, repos: dict[str, tuple[Path, str | None]]):
        self.repos = repos  # repo id → (its cached snapshot folder, the only token that may read it; None: public)
        self.sent: list[tuple[str, str, object]] = []  # (function, repo id, token argument)

    def auth_check(self, repo_id, *, token=None, **_):
        self.sent.append(("auth_check", repo_id, token))
        self._refuse_unless_readable(repo_id, token)

    def list_repo_files(self, repo_id, *, token=None, **_):
        self.sent.append(("list_repo_files", repo_id, token))
        return sorted(p.name for p in self._refuse_unless_readable(repo_id, token).iterdir())

    def list_repo_tree(self, repo_id, *, recursive=False, token=None, **_):
        self.sent.append(("list_repo_tree", repo_id, token))
        folder = self._refuse_unless_readable(repo_id, token)
        return [SimpleNamespace(path=str(p.relative_to(folder)), size=p.stat().st_size)
                for p in sorted(folder.rglob("*")) if p.is_file()]

    def _refuse_unless_readable(self, repo_id, token) -> Path:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise OfflineModeIsEnabled("Cannot reach the Hub: offline mode is enabled")
        reader = os.environ.get("HF_TOKEN") if token is None else (token or None)
        folder, owner = self.repos.get(repo_id, (None, "nobody"))
        if owner is not None and reader != owner:
            raise RuntimeError(f"401 Client Error: Repository Not Found for url: .../{repo_id}")
        return folder

    def snapshot_download(self, repo_id, *, token=None, **_):
        self.sent.append(("snapshot_download", repo_id, token))
        if repo_id not in self.repos:
            raise RuntimeError(f"404 Client Error: {repo_id}")
        return str(self.repos[repo_id][0])  # downloaded, or (refused / offline) the cached copy


@pytest.fixture
def hub(site, tmp_path, monkeypatch, bert_cls_family):
    """A fake Hub whose private repo operator/private only the server's HF_TOKEN reads."""
    import huggingface_hub

    snapshots = tmp_path / "hub-cache"
    repos = {"operator/private": (shutil.copytree(site.models_dir / "tuned", snapshots / "private"), SERVER_TOKEN),
             "visitor/mine": (shutil.copytree(site.models_dir / "tuned", snapshots / "mine"), "hf_visitor"),
             "someone/public": (shutil.copytree(site.models_dir / "tuned", snapshots / "public"), None),
             "someone/public-ce": (shutil.copytree(bert_cls_family[1], snapshots / "public-ce"), None)}
    fake = FakeHub(repos)
    monkeypatch.setenv("HF_TOKEN", SERVER_TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "auth_check", fake.auth_check)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", fake.list_repo_files)
    monkeypatch.setattr(huggingface_hub, "list_repo_tree", fake.list_repo_tree)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    return fake


def _signed_in(token: str | None) -> dict:
    """The keyword gradio fills for a visitor signed in with Hugging Face (none for an anonymous one)."""
    return {"oauth_token": gr.OAuthToken(token=token, scope="read-repos", expires_at=0)} if token else {}


def test_a_visitor_cannot_pull_the_operators_private_repo_with_the_servers_token(site, hub):
    ws = site
    recipe = _linear("models/llama", "operator/private")
    tries = [None, "hf_visitor"]  # anonymous, then signed in with their own token
    for login in tries:
        report = plan(recipe, "x", "cpu", ws, _visitor("v"), **_signed_in(login))
        assert report.startswith("**✗ Not ready:**") and "'operator/private'" in report and "401" in report, (login,
                                                                                                            report)
        with pytest.raises(gr.Error, match="cannot get 'operator/private'"):
            rerank_compare("models/ce", "operator/private", "q", DOCS, None, "cpu", False, ws, _visitor("v"),
                           **_signed_in(login))
    sent = {token for _, _, token in hub.sent}
    print(f"\nreliability hostile reads: {len(hub.sent)} Hub calls for a visitor asking for the operator's private "
          f"repo ({len(tries)} logins × Check, playground): tokens sent {sorted(map(str, sent))}")
    assert sent <= {False, "hf_visitor"} and None not in sent and SERVER_TOKEN not in sent
    # Controls: a public repo (anonymous) and the visitor's own private one (their token) are fetched for them,
    # and the operator, running the app locally, still reaches their own repo with their login.
    assert plan(_linear("models/llama", "someone/public"), "x", "cpu", ws, _visitor("v")).startswith("**✓ Ready")
    assert plan(_linear("models/llama", "visitor/mine"), "x", "cpu", ws, _visitor("v"),
                **_signed_in("hf_visitor")).startswith("**✓ Ready")
    assert ("list_repo_files", "visitor/mine", "hf_visitor") in hub.sent
    local = Workspace(ws.root, ws.models_dir, ws.outputs_dir)
    assert plan(recipe, "x", "cpu", local).startswith("**✓ Ready")


def test_offline_a_visitor_is_offered_and_served_nothing_from_the_servers_cache(site, hub, tmp_path, monkeypatch):
    ws = site
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hf-cache" / "models--operator--private"
    (cache / "snapshots" / "abc").mkdir(parents=True)
    (cache / "snapshots" / "abc" / "config.json").write_text("{}")
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("abc")
    visitor = session_workspace(ws, "v")
    offered = [c.ref for c in find_models(visitor, hub_cache=tmp_path / "hf-cache")]
    assert "operator/private" not in offered and all(c.source != "hf-cache" for c in find_models(visitor))
    for repo in ("operator/private", "someone/public"):
        report = plan(_linear("models/llama", repo), "x", "cpu", ws, _visitor("v"))
        assert report.startswith("**✗ Not ready:**") and "offline" in report, report
        status = _run_merge(_linear("models/llama", repo), "stolen", ws, "v")
        assert status.startswith("✗") and "offline" in status
    assert not any(name == "snapshot_download" for name, _, _ in hub.sent)
    print(f"\nreliability hostile reads: offline, hosted: {len(offered)} models offered, none from the HF cache; "
          "2 cached repos asked for × 2 entry points (Check, Merge): 0 served")
    # Control: locally the cache is listed and served offline, as before.
    local = Workspace(ws.root, ws.models_dir, ws.outputs_dir)
    assert "operator/private" in [c.ref for c in find_models(local, hub_cache=tmp_path / "hf-cache")]
    assert plan(_linear("models/llama", "operator/private"), "x", "cpu", local).startswith("**✓ Ready")


@pytest.fixture
def empty_cache():
    core.rerank.model.unload()  # earlier tests load the same tiny models
    yield
    core.rerank.model.unload()


def test_a_session_sees_and_unloads_only_its_own_models(site, empty_cache):
    """Over the launched app's queue, two sessions at once: the "Loaded:" line and Unload are per session."""
    ws = site
    private = shutil.copytree(ws.models_dir / "ce", ws.outputs_dir / "sessions" / "alice" / "alices-private-merge")
    with launched(ws) as (blocks, _):
        compare, unload_all = fn_index(blocks, "rerank_compare"), fn_index(blocks, "unload_all")

        def run(session, model_b):
            message = browser_event(blocks, compare, ["models/ce", model_b, "the model", DOCS, None, "cpu", False,
                                                      None, None], session, timeout=120)
            assert message["success"], message
            return message["output"]["data"][4]  # the "Loaded:" line

        mine = "outputs/sessions/alice/alices-private-merge"
        run("alice", mine)  # alice first, so bob's request finds her model loaded …
        with ThreadPoolExecutor(2) as pool:  # … then both visitors at the same time
            alice, bob = pool.map(run, ["alice", "bob"], [mine, "models/ce"])
        unloaded = browser_event(blocks, unload_all, [None] * len(blocks.fns[unload_all].inputs), "bob")
    # bob's Unload (called by number, as any client can) left alice's models loaded, the one they share too.
    assert {r.folder for r in core.rerank.model.loaded_rerankers()} == {(ws.models_dir / "ce").resolve(), private.resolve()}
    still = loaded_markdown("alice")
    print(f"\nreliability hostile reads: 2 sessions comparing at once; bob's line: {bob!r}; "
          f"after bob's Unload, alice's: {still!r}")
    assert "alices-private-merge" in alice and "alices-private-merge" not in bob and "`ce`" in bob
    assert unloaded["success"] and unloaded["output"]["data"] == ["No models loaded."]
    assert "alices-private-merge" in still and "`ce`" in still
    core.rerank.model.unload(owner="alice")  # control: once nobody holds them, they are gone
    assert core.rerank.model.loaded_rerankers() == []


def test_the_model_cache_is_bounded_by_bytes(site, empty_cache, monkeypatch):
    ws = site
    folders = [shutil.copytree(ws.models_dir / "ce", ws.models_dir / f"ce-{i}") for i in range(4)]
    one = load_reranker(str(folders[0])).nbytes
    monkeypatch.setattr(core.model_cache.MODELS, "limit_bytes", int(2.5 * one))
    for folder in folders[1:]:
        load_reranker(str(folder), owner="visitor")
    kept = [r.folder.name for r in core.rerank.model.loaded_rerankers()]
    print(f"\nreliability hostile reads: cache cap 2.5 models ({2.5 * one / 1e6:.2f} MB), 4 loaded: kept {kept}")
    assert kept == ["ce-2", "ce-3"]  # the least recently used went first


def _evil_repos(ws: Workspace, snapshots: Path, bert_st_family) -> dict[str, Path]:
    """Public Hub repos (as downloaded) whose own files name the operator's files beside the app."""
    operator_st = shutil.copytree(bert_st_family[2], ws.root / "embedder")  # the operator's, outside models/
    shutil.copy(operator_st / "tokenizer.json", operator_st / "tokenizer.1.0.json")
    repos = {}
    index = shutil.copytree(ws.models_dir / "tuned", snapshots / "index")  # its index names base's weights
    names = load_file(index / "model.safetensors").keys()
    (index / "model.safetensors").unlink()
    (index / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {name: str(ws.root / "base" / "model.safetensors") for name in names}}))
    repos["evil/index"] = index
    modules = shutil.copytree(bert_st_family[1], snapshots / "modules")  # its Transformer module is the operator's
    listed = json.loads((modules / "modules.json").read_text())
    listed[0]["path"] = os.path.relpath(operator_st, modules)
    (modules / "modules.json").write_text(json.dumps(listed))
    repos["evil/modules"] = modules
    tokenizer = shutil.copytree(bert_st_family[1], snapshots / "tokenizer")  # its tokenizer file is the operator's
    config = json.loads((tokenizer / "tokenizer_config.json").read_text())
    config["fast_tokenizer_files"] = [os.path.relpath(operator_st / "tokenizer.1.0.json", tokenizer)]
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(config))
    repos["evil/tokenizer"] = tokenizer
    return repos


def test_a_hub_repo_whose_files_name_the_operators_files_is_refused(site, hub, tmp_path, bert_st_family):
    ws = site
    repos = _evil_repos(ws, tmp_path / "evil-snapshots", bert_st_family)
    hub.repos.update({repo: (folder, None) for repo, folder in repos.items()})
    refused = []
    report = plan(_linear("models/llama", "evil/index"), "x", "cpu", ws, _visitor("v"))
    assert report.startswith("**✗ Not ready:**") and "lies outside the model's folder" in report, report
    for repo in repos:
        with pytest.raises(gr.Error, match="lies outside the model's folder") as caught:
            rerank_compare("models/ce", repo, "the model", DOCS, None, "cpu", False, ws, _visitor("v"))
        assert "\n" not in caught.value.message
        refused.append(repo)
    print(f"\nreliability hostile reads: {len(repos)} public Hub repos naming the operator's files (weight index, "
          f"modules.json, tokenizer_config.json) × playground, + the index × Check: {len(refused)} + 1 refused")
    # Control: the same repos with their own files intact load for the visitor.
    hub.repos["good/st"] = (bert_st_family[1], None)
    rerank_compare("models/ce", "good/st", "the model", DOCS, None, "cpu", False, ws, _visitor("v"))
