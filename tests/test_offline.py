"""Offline: a Hub id fails at once in one line (one probe, no retries), a cached one still opens for this
machine's user, a visitor is refused; and the example recipes say which run offline on the demo models.

The Hub is "unreachable" here because the probe's TCP connect is refused (socket.create_connection
patched), whatever the machine's real network; huggingface_hub's backoff sleeps are recorded, not slept.
"""
import logging
import shutil
import socket
import threading
import types

import huggingface_hub.constants
import huggingface_hub.utils._http
import pytest

from core import ASSETS
from core.cli.main import main
from core.demo.build import DEMO_FOLDER, DEMO_MODELS
from core.errors import CheckpointError
from core.io import hub
from core.io.checkpoint import Checkpoint
from core.io.reference import HUB_ID, resolve_reference
from core.merge.recipe import load_recipe
from ui.merge.form import example_names

RECIPES = ASSETS / "recipes"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def no_hub(monkeypatch):
    """HF_HUB_OFFLINE unset and every TCP connect refused; returns (probes made, backoff sleeps asked for)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read once, at import
    monkeypatch.setattr(hub, "_SEEN", {})
    probes, sleeps = [], []

    def refused(address, *args, **kwargs):
        probes.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(huggingface_hub.utils._http, "time", types.SimpleNamespace(sleep=sleeps.append))
    return probes, sleeps


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, bert_cls_family):
    """A Hugging Face cache (huggingface_hub's layout) holding org/cached; returns its snapshot folder."""
    cache = tmp_path / "hf-cache"
    snapshot = cache / "models--org--cached" / "snapshots" / SHA
    shutil.copytree(bert_cls_family[0], snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(SHA)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return snapshot


def test_a_hub_id_fails_at_once_in_one_line_after_one_probe(no_hub, caplog):
    probes, sleeps = no_hub
    for repo in ("org/name", "org/other", "Qwen/Qwen2.5-0.5B"):
        with pytest.raises(CheckpointError) as caught:
            resolve_reference(repo)
        message = str(caught.value)
        assert message.startswith(f"cannot get {repo!r}: the Hugging Face Hub cannot be reached (huggingface.co:443: ")
        assert "not in the local cache" in message and "local folder" in message and "HF_HUB_OFFLINE=1" in message
        assert "\n" not in message
    assert probes == [("huggingface.co", 443)], "one probe for every request of the three ids"
    assert sleeps == [] and not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_the_cli_prints_one_line_and_no_retry_noise(no_hub, capsys, caplog):
    caplog.set_level(logging.WARNING)
    assert main(["rerank", "--model", "org/name", "--query", "q", "--doc", "d"]) == 1
    assert main(["plan", str(RECIPES / "ties.yml")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("error: cannot get 'org/name': the Hugging Face Hub cannot be reached")
    assert err[1].startswith("error: cannot get 'Qwen/Qwen2.5-0.5B': the Hugging Face Hub cannot be reached")
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()] and no_hub[1] == []
    assert len(no_hub[0]) == 1


def test_a_cached_repo_still_opens_offline_for_this_machines_user(no_hub, hf_cache, bert_cls_family):
    assert resolve_reference("org/cached") == hf_cache
    checkpoint = Checkpoint.open("org/cached")
    assert set(checkpoint.tensors) == set(Checkpoint.open(str(bert_cls_family[0])).tensors)
    assert len(no_hub[0]) == 1 and no_hub[1] == []


@pytest.mark.parametrize("token", [False, "hf_visitor"])
def test_offline_a_visitor_is_refused_even_a_cached_repo(no_hub, hf_cache, token):
    with pytest.raises(CheckpointError, match=r"cannot get 'org/cached': the Hugging Face Hub cannot be reached "
                                              r"\(huggingface.co:443: .*\), so it cannot check that you may read it"):
        resolve_reference("org/cached", token=token)
    assert no_hub[1] == []


def test_hf_hub_offline_uses_the_cache_without_a_probe(no_hub, hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert resolve_reference("org/cached") == hf_cache
    with pytest.raises(CheckpointError, match="cannot get 'org/name' from the Hugging Face Hub"):
        resolve_reference("org/name")
    assert no_hub[0] == []


def test_the_answer_is_remembered_for_a_while_then_asked_again(monkeypatch):
    monkeypatch.setattr(hub, "_SEEN", {})
    clock, probes = [100.0], []
    monkeypatch.setattr(hub, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(hub, "_probe", lambda host, port: probes.append((host, port)) or "refused")
    assert hub.unreachable("h", 1) == "refused" and hub.unreachable("h", 1) == "refused" and len(probes) == 1
    clock[0] += hub.REMEMBER_S + 1
    assert hub.unreachable("h", 1) == "refused" and len(probes) == 2
    assert hub.unreachable("other", 1) == "refused" and len(probes) == 3


def test_the_probe_says_yes_to_a_listening_port_and_why_not_to_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert hub._probe("127.0.0.1", port) is None
    assert "refused" in hub._probe("127.0.0.1", port).lower()


def test_a_probe_that_hangs_in_the_resolver_gives_up_at_the_timeout(monkeypatch):
    release = threading.Event()

    def stuck(*args, **kwargs):  # a DNS lookup that hangs until the test ends
        release.wait(30)
        raise OSError("the lookup ended after the probe gave up")

    monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(socket, "create_connection", stuck)
    try:
        assert hub._probe("huggingface.co", 443) == "no answer within 0.05 s"
    finally:
        release.set()


def test_the_probe_goes_to_the_proxy_the_environment_names(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert hub.first_hop("https", "huggingface.co", None) == ("huggingface.co", 443)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert hub.first_hop("https", "huggingface.co", None) == ("proxy.internal", 3128)
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert hub.first_hop("https", "huggingface.co", 8443) == ("huggingface.co", 8443)


# ----- the example recipes ---------------------------------------------------------------------------------------
def test_every_example_is_labelled_and_the_picker_shows_it():
    labels = dict((name, label) for label, name in example_names())
    assert sorted(labels) == sorted(p.name for p in RECIPES.glob("*.yml"))
    offline = [name for name, label in labels.items() if label.endswith("· offline, demo models")]
    assert len(offline) >= 4 and list(labels)[:len(offline)] == offline, "offline examples come first"
    demo_names = {spec.name for spec in DEMO_MODELS}
    for name, label in labels.items():
        text = (RECIPES / name).read_text(encoding="utf-8")
        marks = [line for line in text.splitlines()
                 if line.startswith(("# offline:", "# needs the Hugging Face Hub"))]
        refs = load_recipe(RECIPES / name).inputs()
        assert len(marks) == 1, f"{name}: one label line, offline or Hub"
        if any(HUB_ID.match(ref) for ref in refs):
            assert marks[0].startswith("# needs the Hugging Face Hub") and label.endswith("· needs the Hub"), name
        else:
            assert marks[0].startswith("# offline:") and name in offline, name
            assert all(ref.startswith(f"./models/{DEMO_FOLDER}/") and ref.rsplit("/", 1)[1] in demo_names
                       for ref in refs), f"{name}: an offline example names only demo models: {refs}"


def test_the_offline_examples_plan_on_demo_shaped_models(tmp_path, monkeypatch, capsys, no_hub, bert_cls_family,
                                                         bert_st_family):
    """Tiny stand-ins in the demo's folders (cross-encoders: a BERT classifier family; bi-encoders: a
    sentence-transformers family), from the repo's working directory's point of view: models/demo/NAME."""
    demo = tmp_path / "models" / DEMO_FOLDER
    demo.mkdir(parents=True)
    family = {"cross-encoder": iter(bert_cls_family), "bi-encoder": iter(bert_st_family)}
    for spec in DEMO_MODELS:
        (demo / spec.name).symlink_to(next(family[spec.kind]), target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    offline = [name for label, name in example_names() if label.endswith("offline, demo models")]
    for name in offline:
        assert main(["plan", str(RECIPES / name)]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert f"method      {load_recipe(RECIPES / name).merge_method} " in out and "tensors" in out, name
    assert no_hub[0] == [], "an offline example never asks for the Hub"
