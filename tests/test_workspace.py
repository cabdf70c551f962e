"""Workspace rules: what a hosted visitor may read and write, model discovery, sessions and quota."""
import os
import shutil
import time
from pathlib import Path

import pytest

from core.app.export import push_folder, zip_folder
from core.app.models import find_models
from core.app.paths import check_model_ref, check_recipe_refs
from core.app.quota import check_quota, folder_bytes
from core.app.sessions import cleanup_stale_sessions, remove_session, session_workspace
from core.app.workspace import Workspace, output_folder, packaged_minilm
from core.errors import MergeDeskError
from core.merge.recipe import parse_recipe


def _workspace(root: Path, *, hosted: bool, cap: int | None = None) -> Workspace:
    root = root.resolve()
    return Workspace(root, root / "models", root / "outputs", hosted=hosted, max_output_bytes=cap,
                     downloads_dir=root / "downloads")


@pytest.fixture
def hosted(tmp_path, llama_family):
    ws = _workspace(tmp_path, hosted=True)
    shutil.copytree(llama_family[0], ws.models_dir / "base")
    ws.outputs_dir.mkdir()
    return ws


@pytest.mark.parametrize("ref, problem", [
    ("/etc", "absolute paths are refused"),
    ("../../etc", "'..' is refused"),
    ("models/../../etc", "'..' is refused"),
    ("~/secrets", "absolute paths are refused"),
    ("file:///etc/passwd", "URLs"),
    ("https://example.com/model", "URLs"),
    ("", "a model is empty"),
    ("not a hub id", "not found"),
])
def test_hosted_refuses_paths_outside_the_workspace(hosted, ref, problem):
    with pytest.raises(MergeDeskError, match=problem) as caught:
        check_model_ref(ref, hosted)
    assert "\n" not in str(caught.value)


def test_hosted_refuses_a_symlink_that_leads_outside(hosted, tmp_path):
    (hosted.models_dir / "escape").symlink_to("/root")
    (hosted.models_dir / "dangling").symlink_to(tmp_path.parent / "nowhere")
    for ref in ("models/escape", "models/dangling"):
        with pytest.raises(MergeDeskError, match="outside this workspace"):
            check_model_ref(ref, hosted)


def test_hosted_accepts_hub_ids_workspace_folders_and_the_packaged_model(hosted):
    assert check_model_ref(" org/model-1.5 ", hosted) == "org/model-1.5"
    resolved = check_model_ref("models/base", hosted)
    assert Path(resolved).resolve() == (hosted.models_dir / "base").resolve()
    packaged = packaged_minilm()
    assert packaged is not None and (packaged / "model.safetensors").exists()
    assert check_model_ref(str(packaged), hosted) == str(packaged)


def test_local_mode_passes_any_reference_through(tmp_path):
    ws = _workspace(tmp_path, hosted=False)
    assert check_model_ref("  /etc  ", ws) == "/etc"
    assert check_model_ref("../x", ws) == "../x"


def test_recipe_refs_are_checked_everywhere(hosted):
    recipe = parse_recipe("merge_method: slerp\nbase_model: models/base\nmodels:\n  - model: models/base\n"
                          "  - model: org/other\nparameters: {t: 0.5}\ntokenizer_source: base\n")
    checked = check_recipe_refs(recipe, hosted)
    assert checked.base_model == checked.models[0].model and checked.models[1].model == "org/other"
    assert checked.tokenizer_source == "base" and len(checked.rows()) == 1
    with pytest.raises(MergeDeskError, match="absolute"):
        check_recipe_refs(parse_recipe("merge_method: linear\nmodels:\n  - model: x/y\n"
                                       "    parameters: {weight: 1}\ntokenizer_source: /etc\n"), hosted)


def test_vocabulary_words_are_kept_and_the_tokenizer_blocks_models_checked(hosted):
    union = parse_recipe("merge_method: linear\nmodels:\n  - model: org/a\n    parameters: {weight: 1}\n"
                         "tokenizer_source: union\n")
    assert check_recipe_refs(union, hosted).tokenizer_source == "union"
    block = parse_recipe("merge_method: linear\nmodels:\n  - model: models/base\n    parameters: {weight: 1}\n"
                         "tokenizer: {source: union, tokens: {'<a>': {source: models/base}}}\n")
    checked = check_recipe_refs(block, hosted)
    assert checked.tokenizer.source == "union"
    assert checked.tokenizer.tokens[0][1].source.model == checked.models[0].model != "models/base"
    with pytest.raises(MergeDeskError, match="absolute"):
        check_recipe_refs(parse_recipe("merge_method: linear\nmodels:\n  - model: x/y\n"
                                       "    parameters: {weight: 1}\ntokenizer: {source: /etc}\n"), hosted)


@pytest.mark.parametrize("name", ["../../app.py", "/tmp/x", ".hidden", "a/b", "", "x" * 101, "out.partial",
                                  "sessions", "tab\there"])
def test_output_names_that_could_escape_are_refused(tmp_path, name):
    ws = _workspace(tmp_path, hosted=False)
    with pytest.raises(MergeDeskError, match="output name"):
        output_folder(name, ws)
    assert not (tmp_path / "app.py").exists()


def test_output_folder_lives_in_outputs(tmp_path):
    ws = _workspace(tmp_path, hosted=False)
    assert output_folder(" my-merge_v1.2 ", ws) == ws.outputs_dir / "my-merge_v1.2"


def test_find_models_lists_every_source(tmp_path, llama_family):
    ws = _workspace(tmp_path, hosted=False)
    shutil.copytree(llama_family[1], ws.models_dir / "org" / "tuned")
    shutil.copytree(llama_family[0], ws.outputs_dir / "merged")
    shutil.copytree(llama_family[0], ws.outputs_dir / "half.partial")
    (ws.models_dir / "not-a-model").mkdir()
    cache = tmp_path / "hf-cache" / "models--org--cached" / "snapshots" / "abc"
    cache.mkdir(parents=True)
    (cache / "config.json").write_text("{}")
    (cache.parent.parent / "refs").mkdir()
    (cache.parent.parent / "refs" / "main").write_text("abc")
    found = {choice.source: choice for choice in find_models(ws, hub_cache=tmp_path / "hf-cache")}
    assert set(found) == {"packaged", "models", "outputs", "hf-cache"}
    assert found["packaged"].ref == str(packaged_minilm())
    assert Path(found["models"].ref).resolve() == (ws.models_dir / "org" / "tuned").resolve()
    assert found["models"].label == "models/org/tuned"
    assert Path(found["outputs"].ref).name == "merged" and len(find_models(ws, hub_cache=tmp_path / "hf-cache")) == 4
    assert found["hf-cache"].ref == "org/cached"


def test_find_models_without_folders_or_cache(tmp_path):
    found = find_models(_workspace(tmp_path, hosted=True), hub_cache=tmp_path / "missing")
    assert [c.source for c in found] == ["packaged"]


def test_sessions_are_separate_and_cleaned(hosted):
    one = session_workspace(hosted, "abc/../123")
    assert one.outputs_dir == hosted.outputs_dir / "sessions" / "abc123" and one.models_dir == hosted.models_dir
    other = session_workspace(hosted, "zzz")
    (other.outputs_dir / "m").mkdir(parents=True)
    (other.outputs_dir / "m" / "w.bin").write_bytes(b"x")
    with pytest.raises(MergeDeskError, match="outside this workspace"):
        check_model_ref("outputs/sessions/zzz/m", one)
    assert check_model_ref("outputs/sessions/zzz/m", other)
    (one.outputs_dir / "fresh").mkdir(parents=True)
    old = time.time() - 7200
    for path in [other.outputs_dir, *other.outputs_dir.rglob("*")]:
        os.utime(path, (old, old))
    assert cleanup_stale_sessions(hosted, 3600) == [other.outputs_dir]
    assert one.outputs_dir.exists() and not other.outputs_dir.exists()
    remove_session(one)
    assert not one.outputs_dir.exists() and hosted.models_dir.exists()
    with pytest.raises(MergeDeskError, match="session id"):
        session_workspace(hosted, "../..")


def test_quota_names_used_cap_and_needed(tmp_path):
    ws = _workspace(tmp_path, hosted=True, cap=3_000_000)
    (ws.outputs_dir / "old").mkdir(parents=True)
    (ws.outputs_dir / "old" / "w").write_bytes(b"0" * 2_000_000)
    check_quota(ws, 1_000_000)
    with pytest.raises(MergeDeskError, match=r"2.00 MB used of its 3.00 MB cap and the merge needs 1.50 MB"):
        check_quota(ws, 1_500_000)
    check_quota(ws, 2_500_000, replacing=(ws.outputs_dir / "old",))
    check_quota(ws, 2_500_000, replacing=(ws.outputs_dir / "old" / "w",))  # a replaced file is freed too
    check_quota(_workspace(tmp_path, hosted=False), 10**15)


def test_zip_holds_the_folder_and_refuses_big_ones(tmp_path, llama_family):
    import zipfile

    archive = zip_folder(llama_family[0], tmp_path / "z" / "m.zip", max_bytes=10**9)
    names = zipfile.ZipFile(archive).namelist()
    assert f"{llama_family[0].name}/config.json" in names and any(n.endswith(".safetensors") for n in names)
    with pytest.raises(MergeDeskError, match="more than the"):
        zip_folder(llama_family[0], tmp_path / "big.zip", max_bytes=folder_bytes(llama_family[0]) - 1)


def test_push_offline_fails_in_one_line(tmp_path, llama_family, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(MergeDeskError, match="cannot push to the Hugging Face Hub") as caught:
        push_folder(llama_family[0], "me/merged", private=True, token="hf_fake")
    assert "\n" not in str(caught.value)
    with pytest.raises(MergeDeskError, match="not valid"):
        push_folder(llama_family[0], "../x", private=True, token="hf_fake")
