"""The live memory gauge: this process's real and mapped memory, the container's RAM, each GPU,
and the latest job's memory curve with its peak. A gr.Timer refreshes it every second while a job
runs and every IDLE_INTERVAL seconds otherwise (drawing the figure each second cost an idle page
~22% of a core).

    with gr.Blocks() as demo:
        build_gauge()        # a one-line summary and a ~220 px figure

The numbers come from core.monitor; this file only draws them (no tensor math). The timer's
event is private (absent from the API page and from what gradio clients list; not a lock, since
the browser itself calls it over HTTP) and runs outside the queue, so the gauge keeps moving
while a long merge holds the queue.
"""
from __future__ import annotations

from functools import partial

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.monitor import MONITOR, JobState, MemoryMonitor, MemorySample
from core.units import GB, MB, human

REAL, MAPPED, USED, FREE = "#3b6ea8", "#a8c5e6", "#b0b0b0", "#ececec"
GPU_MINE, GPU_CACHED = "#d9822b", "#f2c89b"
HEIGHT = 220  # px: the gauge sits above the panels and must not push them down


BUSY_INTERVAL, IDLE_INTERVAL = 1.0, 5.0  # seconds between two refreshes while a job runs / while none does


def refresh_gauge(monitor: MemoryMonitor = MONITOR) -> tuple[str, go.Figure]:
    """Take a sample, return (summary Markdown, figure)."""
    latest = monitor.tick()
    job = monitor.job_state()
    samples = monitor.samples(since=job.started if job else latest.time)
    return gauge_text(latest, job), gauge_figure(samples, job)


def gauge_interval(busy: bool) -> float:
    """Seconds until the next refresh: fast while a job runs (its curve moves), slow when idle."""
    return BUSY_INTERVAL if busy else IDLE_INTERVAL


def tick_gauge(monitor: MemoryMonitor = MONITOR) -> tuple[str, go.Figure, gr.Timer]:
    """The timer's handler: the gauge, and the timer's next interval (a job started since speeds it up
    within IDLE_INTERVAL seconds)."""
    return (*refresh_gauge(monitor), gr.Timer(gauge_interval(monitor.busy())))


def gauge_text(sample: MemorySample, job: JobState | None) -> str:
    """One line of Markdown.

    Example:
        Process **412 MB** real + 1.20 GB mapped · RAM 3.10 GB / 24.0 GB (cgroup) · running
        "merge my-model": peak 598 MB real (+186 MB)
    """
    parts = [f"Process **{human(sample.anon)}** real + {human(sample.file)} mapped",
             f"{ram_row(sample)} ({sample.ram_source})"]
    for gpu in sample.gpus:
        used = "?" if gpu.used is None else human(gpu.used)
        parts.append(f"GPU {gpu.index} {used} / {human(gpu.total)}, {human(gpu.allocated)} ours")
    if job is not None:
        status = "running" if job.finished is None else "last job"
        peak = f'{status} "{job.label}": peak {human(job.peak_anon)} real (+{human(job.peak_anon - job.start_anon)})'
        if job.peak_gpu_allocated:
            peak += ", GPU " + " / ".join(human(p) for p in job.peak_gpu_allocated)
        parts.append(peak)
    return " · ".join(parts)


def ram_row(sample: MemorySample) -> str:
    """'RAM 1.25 GB / 25.3 GB': the header's figures, and the name of the bar's RAM row, so the two agree
    (the bar's segments read used and free; free alone, 24.0 GB, was taken for the total)."""
    return f"RAM {human(sample.ram_used)} / {human(sample.ram_limit)}"


def gauge_figure(samples: list[MemorySample], job: JobState | None) -> go.Figure:
    """Bars for the latest sample (GB) and, once a job has run, its timeline (MB).

    Left: "this process" = real (anon) + file-backed (mapped, reclaimable); "RAM" = the
    container's (or system's) used + free up to the limit; one bar per GPU = this process's
    tensors + its allocator cache + other processes + free. Right: real memory over the
    seconds since the job started, GPU allocated (all GPUs) when there are any, and the
    job's peak as a dotted line.
    """
    widths = [1.0] if job is None else [0.45, 0.55]
    figure = make_subplots(rows=1, cols=len(widths), column_widths=widths, horizontal_spacing=0.1,
                           subplot_titles=_titles(samples, job))
    figure.update_annotations(font={"size": 12})  # the subplot titles
    if samples:
        for bar in _now_bars(samples[-1]):
            figure.add_trace(bar, row=1, col=1)
        figure.update_yaxes(autorange="reversed", row=1, col=1)
    else:
        figure.add_annotation(text="no memory sample yet", showarrow=False, x=0.5, y=0.5,
                              xref="x domain", yref="y domain")
    if job is not None:
        _add_timeline(figure, samples, job)
    figure.update_xaxes(title_text="GB", row=1, col=1)
    figure.update_layout(height=HEIGHT, barmode="stack", showlegend=False, font={"size": 11},
                         margin={"l": 10, "r": 10, "t": 28, "b": 10},
                         uniformtext={"minsize": 9, "mode": "hide"},
                         paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)")
    return figure


def build_gauge(monitor: MemoryMonitor = MONITOR) -> None:
    """Add the gauge to the current gr.Blocks context."""
    text, figure = refresh_gauge(monitor)  # drawn now, so the page never opens on an empty plot
    summary = gr.Markdown(text, elem_id="gauge-summary")
    plot = gr.Plot(figure, show_label=False, elem_id="gauge-plot")
    timer = gr.Timer(gauge_interval(monitor.busy()))
    # private: left off the API page and gradio clients' listing. queue=False: the browser POSTs
    # /gradio_api/run/predict and gets its answer beside the queue, so a merge holding a queue
    # slot (and the ones waiting behind it) does not freeze the gauge.
    timer.tick(partial(tick_gauge, monitor), outputs=[summary, plot, timer], api_name="refresh_gauge",
               api_visibility="private", queue=False, show_progress="hidden")


def _now_bars(sample: MemorySample) -> list[go.Bar]:
    """One bar trace per kind of memory; each spans the rows it applies to."""
    ram = ram_row(sample)
    ram_note = ("the container's usage, page cache included" if sample.ram_source == "cgroup"
                else "the system's total - available")
    bars = [
        _segment("real (anon)", ["this process"], [sample.anon], REAL,
                 ["anonymous memory: tensors and buffers, given back only when freed"]),
        _segment("file-backed (mapped)", ["this process"], [sample.file], MAPPED,
                 ["file-backed = mmap'ed checkpoints: page cache, reclaimable"]),
        _segment("RAM used", [ram], [sample.ram_used], USED, [f"{ram_note} ({sample.ram_source})"], suffix=" used"),
        _segment("RAM free", [ram], [max(sample.ram_limit - sample.ram_used, 0)], FREE,
                 [f"free up to the limit of {human(sample.ram_limit)}"], suffix=" free"),
    ]
    gpus = sample.gpus
    if gpus:
        rows = [f"GPU {gpu.index}" for gpu in gpus]
        others = [0 if gpu.used is None else max(gpu.used - gpu.reserved, 0) for gpu in gpus]
        free = [gpu.total - gpu.reserved - other for gpu, other in zip(gpus, others)]
        free_notes = [f"{gpu.name}: " + ("free" if gpu.used is not None
                      else "not ours; others' use unknown (install nvidia-ml-py)") for gpu in gpus]
        bars += [
            _segment("GPU: this process", rows, [gpu.allocated for gpu in gpus], GPU_MINE,
                     [f"{gpu.name}: live tensors of this process" for gpu in gpus]),
            _segment("GPU: cached", rows, [gpu.reserved - gpu.allocated for gpu in gpus], GPU_CACHED,
                     [f"{gpu.name}: held by this process's allocator for its next tensors" for gpu in gpus]),
            _segment("GPU: others", rows, others, USED,
                     [f"{gpu.name}: other processes and CUDA contexts" for gpu in gpus]),
            _segment("GPU free", rows, free, FREE, free_notes),
        ]
    return bars


def _segment(name: str, rows: list[str], values: list[int], color: str, notes: list[str], *,
             suffix: str = "") -> go.Bar:
    """A horizontal bar segment in GB with a hover note per row; suffix says what its label counts."""
    return go.Bar(name=name, y=rows, x=[value / GB for value in values], orientation="h",
                  marker_color=color, text=[human(value) + suffix for value in values], textposition="inside",
                  textangle=0,  # a label too long for its segment is hidden (uniformtext), not turned on its side
                  customdata=notes, hovertemplate="<b>%{fullData.name}</b>: %{text}<br>%{customdata}<extra></extra>")


def _add_timeline(figure: go.Figure, samples: list[MemorySample], job: JobState) -> None:
    window = [s for s in samples if s.time >= job.started and (job.finished is None or s.time <= job.finished)]
    seconds = [s.time - job.started for s in window]
    figure.add_trace(go.Scatter(x=seconds, y=[s.anon / MB for s in window], name="real (anon) over time", mode="lines",
                                line={"color": REAL, "width": 2},
                                hovertemplate="%{x:.1f} s: %{y:,.0f} MB real<extra></extra>"), row=1, col=2)
    if any(s.gpus for s in window):
        allocated = [sum(gpu.allocated for gpu in s.gpus) / MB for s in window]
        figure.add_trace(go.Scatter(x=seconds, y=allocated, name="GPU allocated over time", mode="lines",
                                    line={"color": GPU_MINE, "width": 2},
                                    hovertemplate="%{x:.1f} s: %{y:,.0f} MB on GPUs<extra></extra>"), row=1, col=2)
    figure.add_hline(y=job.peak_anon / MB, line={"dash": "dot", "color": REAL, "width": 1}, row=1, col=2,
                     annotation_text=f"peak {human(job.peak_anon)}", annotation_position="top left")
    figure.update_xaxes(title_text="seconds since the job started", row=1, col=2)
    figure.update_yaxes(title_text="MB", rangemode="tozero", row=1, col=2)  # from 0: noise stays small


def _titles(samples: list[MemorySample], job: JobState | None) -> list[str]:
    if job is None:
        return ["Memory now"]
    if job.finished is None:
        last = samples[-1].time if samples else job.started
        return ["Memory now", f"{job.label} · running {last - job.started:.0f} s"]
    return ["Memory now", f"{job.label} · done in {job.finished - job.started:.0f} s"]
