"""The demo build's memory: each model trains in a child process, and the gauge that shows memory.

Checked: a child-built model has the weights training in this process gives (same seed, same
threads) while this process's real memory stays where it was; Stop ends the child at once and leaves
no NAME.partial even mid-save; a MergeDeskError in the child arrives as the same one-line error, a
killed child as one line too; the gauge polls slowly when idle and its header and RAM bar agree.
"""
import os
import signal
import threading
from dataclasses import replace

import psutil
import pytest
from safetensors.torch import load_file

import core.demo.build
from core.demo.build import DATA_DIR, DemoSpec, demo_events, demo_folder
from core.demo.train import TrainConfig, TrainStep, finish, train_cross_encoder
from core.errors import MergeCancelled, MergeDeskError, RerankError
from core.io.staging import staged_output
from core.monitor import MemoryMonitor, MemorySample
from tests.test_demo import TINY, tiny_examples, write_set
from ui.gauge import BUSY_INTERVAL, IDLE_INTERVAL, gauge_figure, gauge_interval, gauge_text

MB = 10**6
QUICK = replace(TINY, max_steps=3)


def rss_anon() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def build(models_dir, data_dir, spec, base, **options):
    return list(demo_events(models_dir, data_dir=data_dir, specs=(spec,), base=base, **options))


def test_a_child_built_model_is_the_one_this_process_would_train(bert_st_family, tmp_path):
    write_set(tmp_path / "data", "general", tiny_examples(8))
    spec = DemoSpec("tiny-ce", "cross-encoder", "general", None, QUICK, "a tiny cross-encoder")
    monitor, before = MemoryMonitor(), rss_anon()
    with monitor.job("build"):
        events = build(tmp_path / "models", tmp_path / "data", spec, bert_st_family[0], seed=3)
    assert rss_anon() - before < 300 * MB
    assert [(e.state, e.done, e.planned) for e in events] == [("training", 1, 3), ("training", 2, 3),
                                                              ("training", 3, 3), ("saved", 3, 3)]
    here = finish(train_cross_encoder(bert_st_family[0], tiny_examples(8), replace(QUICK, seed=3))).model.state_dict()
    saved = load_file(demo_folder(tmp_path / "models", "tiny-ce") / "model.safetensors")
    assert saved and all(name in here and here[name].equal(tensor) for name, tensor in saved.items())


@pytest.mark.slow
def test_a_minilm_build_leaves_this_process_as_it_was(tmp_path):
    """The packaged 22M-parameter MiniLM, two small steps: trained here this peaked ~600 MB above the start."""
    spec = DemoSpec("mini-ce", "cross-encoder", "general", None,
                    TrainConfig(batch_size=2, group_size=2, max_length=32, max_steps=2), "a MiniLM cross-encoder")
    monitor, before = MemoryMonitor(), rss_anon()
    with monitor.job("build"):
        build(tmp_path, DATA_DIR, spec, None)
    assert monitor.job_state().peak_anon - before < 100 * MB
    assert rss_anon() - before < 300 * MB


def stuck_in_save(job):
    """A build_model that gets as far as writing NAME.partial and then hangs there (run in the child)."""
    with staged_output(job.out, overwrite=True) as partial:
        (partial / "model.safetensors").write_bytes(b"half")
        yield TrainStep(1, 2, 0.5, 0.0)
        threading.Event().wait()


def killed_after_a_step(job):
    yield TrainStep(1, 2, 0.5, 0.0)
    os.kill(os.getpid(), signal.SIGKILL)


def test_stop_ends_the_child_at_once_and_leaves_no_partial(bert_st_family, tmp_path, monkeypatch):
    write_set(tmp_path / "data", "general", tiny_examples(8))
    monkeypatch.setattr(core.demo.build, "build_model", stuck_in_save)
    spec = DemoSpec("tiny-ce", "cross-encoder", "general", None, QUICK, "a tiny cross-encoder")
    cancel, children = threading.Event(), []
    with pytest.raises(MergeCancelled, match="demo build stopped"):
        for _ in demo_events(tmp_path, data_dir=tmp_path / "data", specs=(spec,), base=bert_st_family[0],
                             cancel=cancel):
            assert (tmp_path / "demo" / "tiny-ce.partial").is_dir()
            children += psutil.Process().children()
            cancel.set()
    assert children and not any(psutil.pid_exists(child.pid) for child in children)
    assert list((tmp_path / "demo").iterdir()) == []


def test_an_error_in_the_child_arrives_as_the_same_one_line(bert_st_family, tmp_path, monkeypatch):
    write_set(tmp_path / "data", "general", tiny_examples(8))
    spec = DemoSpec("tiny-ce", "cross-encoder", "general", None, replace(QUICK, group_size=1), "no negatives")
    with pytest.raises(RerankError, match="training needs group_size ≥ 2") as raised:
        build(tmp_path, tmp_path / "data", spec, bert_st_family[0])
    assert "\n" not in str(raised.value)
    monkeypatch.setattr(core.demo.build, "build_model", killed_after_a_step)
    with pytest.raises(MergeDeskError, match=r"^training tiny-ce was killed by signal 9 \(out of memory\?\)") as raised:
        build(tmp_path, tmp_path / "data", replace(spec, config=QUICK), bert_st_family[0])
    assert "\n" not in str(raised.value) and not (tmp_path / "demo" / "tiny-ce").exists()


def test_the_gauge_polls_fast_only_while_a_job_runs():
    monitor = MemoryMonitor()
    assert gauge_interval(monitor.busy()) == IDLE_INTERVAL > BUSY_INTERVAL
    with monitor.job("outer"):
        with monitor.job("inner"):
            assert gauge_interval(monitor.busy()) == BUSY_INTERVAL
        assert monitor.busy()  # the latest job ended, the one it overlapped still runs
    assert gauge_interval(monitor.busy()) == IDLE_INTERVAL


def test_the_gauge_header_and_ram_bar_give_the_same_figures():
    sample = MemorySample(time=1.0, anon=268 * MB, file=122 * MB, ram_used=1_253 * MB, ram_limit=25_276 * MB,
                          ram_source="system", gpus=())
    header = gauge_text(sample, None)
    bars = {t.name: t for t in gauge_figure([sample], None).data}
    assert "RAM 1.25 GB / 25.3 GB (system)" in header
    assert bars["RAM used"].y == bars["RAM free"].y == ("RAM 1.25 GB / 25.3 GB",)
    assert bars["RAM used"].text == ("1.25 GB used",) and bars["RAM free"].text == ("24.0 GB free",)
