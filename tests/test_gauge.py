"""The memory gauge: figures and text from plain samples, and the timer's wiring in gradio."""
import threading
import time

import gradio as gr
import httpx
import plotly.graph_objects as go
import pytest

import core.monitor as monitor
from core.monitor import GpuMemory, JobState, MemoryMonitor, MemorySample
from tests.scripted_memory import ScriptedMemory
from ui.gauge import build_gauge, gauge_figure, gauge_text, refresh_gauge

GB, MB = 10**9, 10**6
GPU_SEEN = GpuMemory(0, "Fake H100", used=30 * GB, total=80 * GB, allocated=2 * GB, reserved=3 * GB)
GPU_NO_NVML = GpuMemory(1, "Fake A10", used=None, total=24 * GB, allocated=0, reserved=0)


def sample(at=100.0, anon=412 * MB, gpus=()):
    return MemorySample(time=at, anon=anon, file=1_200 * MB, ram_used=3_100 * MB, ram_limit=24 * GB,
                        ram_source="cgroup", gpus=gpus)


def trace(figure, name):
    (found,) = [t for t in figure.data if t.name == name]
    return found


def test_no_samples_no_job():
    figure = gauge_figure([], None)
    assert isinstance(figure, go.Figure) and figure.data == ()
    assert figure.layout.height == 220
    assert "no memory sample yet" in [a.text for a in figure.layout.annotations]


def test_bars_show_the_latest_sample_in_gb():
    figure = gauge_figure([sample(anon=999 * MB), sample(at=101.0)], None)
    assert trace(figure, "real (anon)").x == (0.412,)
    assert trace(figure, "file-backed (mapped)").x == (1.2,)
    assert "mmap'ed checkpoints" in trace(figure, "file-backed (mapped)").customdata[0]
    assert trace(figure, "RAM used").x == (3.1,) and trace(figure, "RAM used").y == ("RAM 3.10 GB / 24.0 GB",)
    assert trace(figure, "RAM free").x == pytest.approx((20.9,))
    assert not [t for t in figure.data if t.name.startswith("GPU")]
    assert "xaxis2" not in figure.layout.to_plotly_json()  # one panel: no timeline without a job


def test_gpu_bars_split_used_memory_by_owner():
    figure = gauge_figure([sample(gpus=(GPU_SEEN, GPU_NO_NVML))], None)
    assert trace(figure, "GPU: this process").x == (2.0, 0.0)
    assert trace(figure, "GPU: cached").x == (1.0, 0.0)
    assert trace(figure, "GPU: others").x == (27.0, 0.0)  # unknown without NVML: drawn as not ours
    assert trace(figure, "GPU free").x == (50.0, 24.0)
    assert "nvidia-ml-py" in trace(figure, "GPU free").customdata[1]


def test_timeline_covers_the_job_and_marks_its_peak():
    samples = [sample(at=99.0 + i, anon=(400 + 50 * i) * MB, gpus=(GPU_SEEN,)) for i in range(7)]
    job = JobState("merge my-model", started=100.0, finished=104.0, start_anon=450 * MB,
                   peak_anon=650 * MB, peak_gpu_allocated=(2 * GB,))
    figure = gauge_figure(samples, job)
    line = trace(figure, "real (anon) over time")
    assert line.x == (0.0, 1.0, 2.0, 3.0, 4.0)  # samples before the start and after the end left out
    assert line.y == (450.0, 500.0, 550.0, 600.0, 650.0)
    assert trace(figure, "GPU allocated over time").y == (2000.0,) * 5
    assert [s.y0 for s in figure.layout.shapes] == [650.0]
    texts = [a.text for a in figure.layout.annotations]
    assert "peak 650 MB" in texts and "merge my-model · done in 4 s" in texts


def test_summary_line():
    job = JobState("merge my-model", started=100.0, finished=None, start_anon=412 * MB,
                   peak_anon=598 * MB, peak_gpu_allocated=(2 * GB, 0))
    text = gauge_text(sample(gpus=(GPU_SEEN, GPU_NO_NVML)), job)
    assert text.startswith("Process **412 MB** real + 1.20 GB mapped · RAM 3.10 GB / 24.0 GB (cgroup)")
    assert "GPU 0 30.0 GB / 80.0 GB, 2.00 GB ours · GPU 1 ? / 24.0 GB" in text
    assert text.endswith('running "merge my-model": peak 598 MB real (+186 MB), GPU 2.00 GB / 0 B')
    assert " · " not in gauge_text(sample(), None).split("RAM")[1]


def test_refresh_samples_and_draws(monkeypatch):
    memory = ScriptedMemory([400 * MB, 500 * MB, 450 * MB])
    monkeypatch.setattr(monitor, "sample_memory", memory)
    watcher = MemoryMonitor(interval=0.001)
    text, figure = refresh_gauge(watcher)
    assert len(watcher.samples()) == 1 and text.startswith("Process **")
    with watcher.job("rerank"):
        memory.wait_for(4)  # the refresh, the job's first sample, two of the thread's
    text, figure = refresh_gauge(watcher)
    assert 'last job "rerank"' in text
    assert len(trace(figure, "real (anon) over time").x) >= 2


def gauge_app():
    """A page with a blocking queued "merge" and the gauge; returns (app, merge dep, tick dep, events)."""
    started, release = threading.Event(), threading.Event()

    def slow_merge():
        started.set()
        release.wait(30)
        return "done"

    with gr.Blocks() as app:
        button, result = gr.Button("Merge"), gr.Textbox()
        button.click(slow_merge, outputs=result, concurrency_limit=1)
        build_gauge(MemoryMonitor())
    by_trigger = {d["targets"][0][1]: d for d in app.config["dependencies"]}
    return app, by_trigger["click"], by_trigger["tick"], (started, release)


def test_the_tick_is_private_unqueued_and_quiet():
    app, merge, tick, _ = gauge_app()
    assert (tick["api_visibility"], tick["queue"], tick["show_progress"]) == ("private", False, "hidden")
    assert list(app.get_api_info(all_endpoints=True)["named_endpoints"]) == ["/slow_merge"]
    text, figure, timer = app.fns[tick["id"]].fn()
    assert text.startswith("Process **") and isinstance(figure, go.Figure) and isinstance(timer, gr.Timer)


@pytest.mark.slow
def test_the_gauge_answers_while_merges_hold_the_queue():
    app, merge, tick, (started, release) = gauge_app()
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(prevent_thread_lock=True, quiet=True)
    api = url.rstrip("/") + "/gradio_api"
    try:
        with httpx.Client(timeout=10) as http:
            for session in ("running", "waiting"):  # one merge runs, one waits behind it
                joined = http.post(f"{api}/queue/join", json={
                    "data": [], "fn_index": merge["id"], "session_hash": session, "trigger_id": merge["targets"][0][0]})
                assert joined.status_code == 200
            assert started.wait(10)
            began = time.perf_counter()
            answer = http.post(f"{api}/run/predict", json={  # what the browser sends for a queue=False event
                "data": [], "fn_index": tick["id"], "session_hash": "viewer", "trigger_id": tick["targets"][0][0]})
            assert answer.status_code == 200 and time.perf_counter() - began < 5
            assert answer.json()["data"][0].startswith("Process **")
            listed = http.get(f"{api}/info", params={"all_endpoints": True}).json()["named_endpoints"]
            assert list(listed) == ["/slow_merge"]
    finally:
        release.set()
        app.close()
