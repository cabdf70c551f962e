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
from pathlib import Path

import gradio as gr
import pytest
import torch
from huggingface_hub.errors import OfflineModeIsEnabled
from safetensors.torch import load_file, save_file

from core.checkpoint import Checkpoint
from core.errors import MergeDeskError
from core.rerank import load_reranker
from tests.reliability.test_sandbox import DOCS, PAIR, _hosted, _linear, _run_merge, _visitor
from ui.merge_panel import make_zip, plan
from ui.playground import rerank_compare

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
    names = _zip_names(make_zip(str(mine), _visitor("visitor")).value["path"])
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
    print(f"\nreliability hostile reads: a {mode} shard path out of the model × 2 loaders (engine, reranker): refused")


def test_a_pickle_index_naming_a_file_outside_the_model_is_refused(tmp_path, bert_cls_family):
    folder = shutil.copytree(bert_cls_family[1], tmp_path / "evil", ignore=shutil.ignore_patterns("*.safetensors"))
    weights = load_file(bert_cls_family[1] / "model.safetensors")
    torch.save(weights, tmp_path / "outside.bin")
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {k: "../outside.bin"
                                                                                     for k in weights}}))
    with pytest.raises(MergeDeskError, match="pytorch_model.bin.index.json names '../outside.bin'"):
        Checkpoint.open(str(folder))
