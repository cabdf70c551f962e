"""Fine-tune a small encoder as a bi-encoder or a cross-encoder with torch + transformers only.

    examples = read_training_set("assets/demo/cooking/train.jsonl")
    steps = train_cross_encoder("models/demo/general-ce", examples, TrainConfig(epochs=2, seed=0))
    for step in steps: print(step.step, step.total, step.loss)      # one TrainStep per optimizer step
    trained = finish(train_cross_encoder(...))                          # or just run it: Trained(model, tokenizer, …)

The losses are the ones FlagEmbedding trains with, written from their formulas:
- bi-encoder: InfoNCE over cosine / temperature, each query against its positive, its hard
  negatives and every other query's passages (in-batch negatives); pooling and normalization
  are the folder's own (core.rerank.pooling), so training embeds texts exactly as scoring does.
- cross-encoder: groups of 1 positive + (group_size − 1) negatives, cross-entropy of the
  positive's logit against the group's (FlagEmbedding's reranker loss); pairs are tokenized as
  core.rerank.model scores them (FlagReranker's query cut), the head is a fresh one-logit classifier
  when the starting model has none.
Runs are deterministic for a seed on one device and thread count: the data order and negative
sampling use random.Random(seed + epoch), dropout and the new head use torch's generator seeded
inside fork_rng (the caller's RNG state is left alone). This module never writes files.
"""
from __future__ import annotations

import json
import math
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator

import torch

from core.devices import parse_device
from core.errors import MergeCancelled, RerankError
from core.rerank.encode import encode_cross_pairs, encode_texts
from core.rerank.pooling import read_pooling

STOPPED = "training stopped: nothing of this model was saved"


@dataclass(frozen=True)
class TrainConfig:
    """How one model is trained; the defaults are the demo's."""

    epochs: int = 1  # passes over the training queries
    lr: float = 5e-5  # AdamW peak learning rate (linear warmup, then linear decay to 0)
    batch_size: int = 16  # queries per optimizer step
    group_size: int = 8  # passages per query: 1 positive + group_size − 1 hard negatives
    max_length: int = 128  # tokens per pair (cross-encoder) or per text (bi-encoder)
    temperature: float = 0.05  # bi-encoder: cosine / temperature in the softmax (FlagEmbedding's)
    warmup: float = 0.1  # fraction of the steps spent warming the learning rate up
    weight_decay: float = 0.01  # AdamW
    seed: int = 0  # data order, negative sampling, dropout and the new head
    max_steps: int | None = None  # stop early (tests); None = all epochs


@dataclass(frozen=True)
class TrainExample:
    """One query with its relevant passages and hard negatives (FlagEmbedding's format)."""

    query: str
    pos: tuple[str, ...]
    neg: tuple[str, ...]


@dataclass(frozen=True)
class TrainStep:
    """Progress of a run: optimizer step `step` of `total` done, with that step's loss."""

    step: int
    total: int
    loss: float
    elapsed: float  # seconds since the run started


@dataclass
class Trained:
    """What a finished run hands back (the model stays in memory; core.demo.build saves it)."""

    model: torch.nn.Module
    tokenizer: object
    losses: list[float] = field(default_factory=list)  # one per step
    seconds: float = 0.0


def read_training_set(path: str | Path) -> list[TrainExample]:
    """FlagEmbedding JSONL ({"query", "pos": [...], "neg": [...]} per line) as TrainExamples.

    Every query needs a positive and a negative; anything else is a one-line RerankError.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RerankError(f"cannot read training set {path}: {error}") from None
    examples = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            example = TrainExample(item["query"], tuple(item["pos"]), tuple(item["neg"]))
        except (ValueError, KeyError, TypeError):
            raise RerankError(f"{path}:{number}: expected {{\"query\", \"pos\": [...], \"neg\": [...]}}") from None
        if not example.pos or not example.neg:
            raise RerankError(f"{path}:{number}: query {example.query[:40]!r} needs a positive and a negative")
        examples.append(example)
    if not examples:
        raise RerankError(f"training set {path} is empty")
    return examples


def train_bi_encoder(base: str | Path, examples: list[TrainExample], config: TrainConfig, *,
                     device: str = "cpu",
                     cancel: threading.Event | None = None) -> Generator[TrainStep, None, Trained]:
    """Contrastive fine-tune of the embedding model in `base` (a sentence-transformers or plain folder)."""
    import transformers

    encoder = read_pooling(Path(base))

    def embed(model, tokenizer, texts):
        encoder.model = model
        encoded = encode_texts(tokenizer, encoder.prepare(texts), max_length=config.max_length)
        vectors = encoder.embed(_pad(tokenizer, encoded, target))
        return torch.nn.functional.normalize(vectors, dim=-1)

    def loss_of(model, tokenizer, batch):
        queries = embed(model, tokenizer, [query for query, _ in batch])  # (b, hidden)
        passages = embed(model, tokenizer, [p for _, group in batch for p in group])  # (b · group, hidden)
        scores = queries @ passages.T / config.temperature  # (b, b · group): own group + in-batch negatives
        positives = torch.arange(len(batch), device=target) * config.group_size  # each group starts with its positive
        return torch.nn.functional.cross_entropy(scores, positives)

    target = parse_device(device)
    return (yield from _run(lambda: transformers.AutoModel.from_pretrained(Path(base) / encoder.module_path,
                                                                            trust_remote_code=False),
                            Path(base) / encoder.module_path, examples, config, target, loss_of, cancel))


def train_cross_encoder(base: str | Path, examples: list[TrainExample], config: TrainConfig, *,
                        device: str = "cpu",
                     cancel: threading.Event | None = None) -> Generator[TrainStep, None, Trained]:
    """Listwise fine-tune of a one-logit cross-encoder; a bi-encoder `base` gets a new head."""
    import transformers

    def loss_of(model, tokenizer, batch):
        pairs = [(query, passage) for query, group in batch for passage in group]
        encoded = encode_cross_pairs(tokenizer, pairs, max_length=config.max_length)
        logits = model(**_pad(tokenizer, encoded, target)).logits.view(len(batch), config.group_size)
        return torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long, device=target))

    target = parse_device(device)
    load = lambda: transformers.AutoModelForSequenceClassification.from_pretrained(  # noqa: E731
        base, num_labels=1, trust_remote_code=False)
    return (yield from _run(load, Path(base), examples, config, target, loss_of, cancel))


def finish(run: Generator[TrainStep, None, Trained]) -> Trained:
    """Drive a training generator to its end and return what it trained."""
    while True:
        try:
            next(run)
        except StopIteration as done:
            return done.value


def planned_steps(queries: int, config: TrainConfig) -> int:
    """Optimizer steps a run over `queries` examples takes: whole batches per epoch, capped by max_steps.

    Example:
        >>> planned_steps(191, TrainConfig(epochs=2, batch_size=16))
        24
        >>> planned_steps(8, TrainConfig(batch_size=4, max_steps=1))
        1
    """
    steps = math.ceil(queries / config.batch_size) * config.epochs
    return steps if config.max_steps is None else min(config.max_steps, steps)


def training_batches(examples: list[TrainExample], config: TrainConfig, epoch: int) -> list[list[tuple[str, list[str]]]]:
    """One epoch of batches: (query, [positive, negatives…]) groups in a seeded order.

    The positive is drawn from `pos`, the negatives without repeats from `neg` (cycled when a
    query has fewer than group_size − 1, as FlagEmbedding does), all from random.Random(seed + epoch).
    """
    rng = random.Random(config.seed * 1000 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    wanted = config.group_size - 1
    groups = []
    for index in order:
        example = examples[index]
        pool = list(example.neg) * math.ceil(wanted / len(example.neg))
        groups.append((example.query, [rng.choice(example.pos), *rng.sample(pool, wanted)]))
    return [groups[i:i + config.batch_size] for i in range(0, len(groups), config.batch_size)]


def _run(load, tokenizer_folder: Path, examples, config: TrainConfig, device: torch.device,
         loss_of, cancel: threading.Event | None) -> Generator[TrainStep, None, Trained]:
    """The shared loop: seed, load, AdamW with warmup/decay, one TrainStep per optimizer step;
    `cancel` set ends it before the next step with MergeCancelled."""
    import transformers

    if config.group_size < 2 or config.batch_size < 1 or config.epochs < 1:
        raise RerankError("training needs group_size ≥ 2 (a positive and a negative), batch_size ≥ 1 and epochs ≥ 1")
    total = planned_steps(len(examples), config)
    started = time.monotonic()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        transformers.logging.set_verbosity_error()  # "newly initialized: classifier.*" is expected here
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_folder, trust_remote_code=False)
        model = load().to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        schedule = transformers.get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup * total), total)
        losses: list[float] = []
        for epoch in range(config.epochs):
            for batch in training_batches(examples, config, epoch):
                if len(losses) == total:
                    break
                MergeCancelled.check(cancel, STOPPED)
                loss = loss_of(model, tokenizer, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                yield TrainStep(len(losses), total, losses[-1], time.monotonic() - started)
    return Trained(model.eval(), tokenizer, losses, time.monotonic() - started)


def _pad(tokenizer, encoded, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch of encoded rows as right-padded tensors (with attention mask) on `device`."""
    features = {"input_ids": encoded.input_ids}
    if encoded.token_type_ids is not None:
        features["token_type_ids"] = encoded.token_type_ids
    batch = tokenizer.pad(features, padding=True, return_tensors="pt")
    return {name: tensor.to(device) for name, tensor in batch.items()}
