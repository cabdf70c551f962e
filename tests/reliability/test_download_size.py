"""A hosted visitor cannot fill the server's disk with one Hub id: the download's size is asked first.

The attack: a visitor types a public 140 GB Hub id into a picker (or a recipe) and presses Check.
Before, the snapshot was downloaded into the server's shared Hugging Face cache, outside the
visitor's 5 GB cap, and only then read. Now the Hub's file listing is asked for the size of the
files the download would take, and a visitor's request over VISITOR_DOWNLOAD_BYTES is refused in
one line before any file is fetched. The app's own operator (token None) is not bounded.
"""
from types import SimpleNamespace

import pytest

from core.errors import CheckpointError
from core.io.download_size import VISITOR_DOWNLOAD_BYTES, download_bytes
from core.io.reference import resolve_reference

GB = 1000**3


class SizedHub:
    """huggingface_hub's calls for one public repo whose files have the given sizes (and one cached folder)."""

    def __init__(self, snapshot, sizes: dict[str, int]):
        self.snapshot, self.sizes = snapshot, sizes
        self.downloads: list[object] = []  # the token of each snapshot_download call

    def install(self, monkeypatch):
        import huggingface_hub

        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(huggingface_hub, "auth_check", lambda repo_id, *, token=None, **_: None)
        monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, *, token=None, **_: list(self.sizes))
        monkeypatch.setattr(huggingface_hub, "list_repo_tree", lambda repo_id, *, recursive=False, token=None, **_:
                            [SimpleNamespace(path=name, size=size) for name, size in self.sizes.items()])
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        return self

    def snapshot_download(self, repo_id, *, token=None, allow_patterns=None, **_):
        self.downloads.append(token)
        return str(self.snapshot)


HUGE = {"config.json": 900, "tokenizer.json": 2_000_000, "README.md": 5_000,
        **{f"model-{i:05d}-of-00030.safetensors": 4_700_000_000 for i in range(1, 31)},
        "original/consolidated.pth": 140 * GB}  # not taken: the .pth matches no pattern


def test_only_the_files_the_download_takes_count():
    with pytest.MonkeyPatch.context() as patch:
        SizedHub(None, HUGE).install(patch)
        taken = download_bytes("org/huge", ["*.safetensors", "*.json"], token=False)
    assert taken == 30 * 4_700_000_000 + 900 + 2_000_000


def test_a_visitor_is_refused_a_huge_model_before_any_file_is_fetched(bert_cls_family, monkeypatch):
    hub = SizedHub(bert_cls_family[0], HUGE).install(monkeypatch)
    for visitor_token in (False, "hf_visitor"):  # anonymous, then signed in
        with pytest.raises(CheckpointError, match=r"'org/huge' is 141 GB to download, more than the 10.0 GB one model"):
            resolve_reference("org/huge", token=visitor_token)
    assert hub.downloads == []  # refused before snapshot_download


def test_a_visitor_gets_a_model_under_the_bound_and_the_operator_is_not_bounded(bert_cls_family, monkeypatch):
    small = {"config.json": 900, "model.safetensors": VISITOR_DOWNLOAD_BYTES - 10_000}
    hub = SizedHub(bert_cls_family[0], small).install(monkeypatch)
    assert resolve_reference("org/small", token=False) == bert_cls_family[0]
    hub.sizes = HUGE
    assert resolve_reference("org/huge", token=None) == bert_cls_family[0]  # the operator's own choice
    assert hub.downloads == [False, None]


def test_the_hosted_check_button_says_so_in_one_line(bert_cls_family, monkeypatch, tmp_path):
    from core.app.workspace import Workspace
    from ui.merge.panel import plan

    SizedHub(bert_cls_family[0], HUGE).install(monkeypatch)
    ws = Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs", hosted=True)
    recipe = ("merge_method: linear\nmodels:\n  - model: org/huge\n    parameters: {weight: 0.5}\n"
              "  - model: org/huge-2\n    parameters: {weight: 0.5}\n")
    report = plan(recipe, "x", "cpu", ws, SimpleNamespace(session_hash="v", headers={}, client=None))
    assert report.startswith("**✗ Not ready:**") and "'org/huge' is 141 GB to download" in report and "\n" not in report.strip()
