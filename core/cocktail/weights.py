"""Merge weights from a few examples of the target task: each model's loss on them, then a softmax.

    result = data_weights(["base/", "cooking/", "legal/"], read_examples("few.jsonl"), tau=5)
    result.losses        # [1.92, 0.41, 2.30]: lower = the model already does this task better
    result.weights       # softmax(−loss / τ) = [0.31, 0.42, 0.28]: the linear merge's weights

This is LM-Cocktail's `mix_models_with_data` (https://arxiv.org/abs/2311.13534): weights =
softmax(−loss/τ), τ = 5 by default. The loss depends on what the examples are:
- `{"input": …, "output": …}` for decoders: the causal LM loss on the output tokens only; the
  text is tokenizer(input + " " + output) + [eos] and the first len(tokenizer(input)) tokens are
  not scored, as LM-Cocktail does. Mean over examples of each example's mean token loss
  (LM-Cocktail with batch size 1; its default averages batches of 2).
- `{"query": …, "pos": [...], "neg": [...]}` for rerankers (cross-encoders and LLM rerankers,
  which LM-Cocktail cannot weigh): for each positive, the cross-entropy of its score against the
  query's negatives' scores (softmax over the group), averaged over all positives.
- the same format for embedders: contrastive loss with temperature 0.05 as LM-Cocktail's, the
  positive's cosine against every other passage of the examples (the query's negatives and the
  other examples' passages: LM-Cocktail's in-batch negatives, with all examples as one batch).
  Differences from LM-Cocktail: the model's own pooling (LM-Cocktail always takes CLS), each
  positive counted (it takes pos[0]), all negatives used (it samples 7 at random).
Scores come from core.rerank.model (the same tokenization as the playground and `rerank`); models are
loaded one at a time and unloaded afterwards unless they were loaded before.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from core.errors import MergeCancelled, RerankError
from core.io.json_input import parse_json
from core.io.reference import resolve_reference
from core.rerank.model import Reranker, detect_kind, load_reranker, loaded_rerankers, unload

EMBEDDER_TEMPERATURE = 0.05  # LM-Cocktail's (and FlagEmbedding's training) contrastive temperature
DEFAULT_TAU = 5.0  # LM-Cocktail's default temperature of the weight softmax
DECODER_MAX_TOKENS = 2048  # LM-Cocktail's max_input_length for decoder examples
STOPPED = "weights from data stopped: no weights were changed"
LOSS_NAMES = {"decoder": "causal LM loss on the outputs", "embedder": "contrastive loss (τ 0.05, in-batch)",
              "reranker": "cross-entropy of each positive against its negatives"}


@dataclass(frozen=True)
class DataWeights:
    """Each model's loss on the examples and the merge weight derived from it."""

    models: list[str]
    kind: str  # "decoder" | "embedder" | "reranker": which loss was used
    losses: list[float]  # one per model, lower = better on the examples
    weights: list[float]  # softmax(−loss / tau), sums to 1
    tau: float

    def table(self) -> str:
        """Aligned text: model, loss, weight — what `python -m core weights` prints."""
        width = max(len("model"), *(len(m) for m in self.models))
        lines = [f"{'model':<{width}}  {'loss':>8}  {'weight':>7}"]
        lines += [f"{model:<{width}}  {loss:>8.4f}  {weight:>7.4f}"
                  for model, loss, weight in zip(self.models, self.losses, self.weights)]
        return "\n".join(lines + [f"loss: {LOSS_NAMES[self.kind]}; weights = softmax(-loss / {self.tau:g})"])


def weights_from_losses(losses: list[float], *, tau: float = DEFAULT_TAU) -> list[float]:
    """softmax(−loss / τ): a lower loss gets a larger weight; a larger τ flattens the weights.

    Example:
        >>> weights_from_losses([1.0, 2.0], tau=1.0)
        [0.7310585786300049, 0.2689414213699951]
    """
    if not losses:
        raise RerankError("no losses to turn into weights: give at least one model")
    check_tau(tau)
    if not all(math.isfinite(loss) for loss in losses):
        raise RerankError(f"a model's loss is not finite ({losses}): check the examples and the models")
    return torch.softmax(-torch.tensor(losses, dtype=torch.float64) / tau, dim=0).tolist()


def check_tau(tau: float) -> None:
    if not isinstance(tau, (int, float)) or not 0 < tau < math.inf:
        raise RerankError(f"tau must be a positive number, got {tau}")


def data_weights(models: list[str], examples: list[dict], *, tau: float = DEFAULT_TAU, device: str = "cpu",
                 batch_size: int = 16, max_length: int | None = None,
                 token: str | bool | None = None, cancel: threading.Event | None = None,
                 progress: Callable[[int, int, float], None] | None = None) -> DataWeights:
    """Loss of every model on `examples` and the LM-Cocktail weights softmax(−loss/τ).

    Args:
        models: folders or Hub ids, all of one kind (decoders, embedders or rerankers).
        examples: 5–50 typically; `{"input", "output"}` (decoders) or `{"query", "pos", "neg"}`.
        tau: temperature of the weight softmax (LM-Cocktail: 5).
        device: where the models run ("cpu", "auto", "cuda:N", …).
        token: Hugging Face access for Hub ids (None = this machine's login; see
            checkpoint.resolve_reference).
        cancel: set it to stop before the next model (or decoder example); raises MergeCancelled.
        progress: called after each model with (models weighed, models, seconds so far), for a
            progress line and its time left (core.progress.eta).
    """
    if not models:
        raise RerankError("give at least one model to weigh")
    check_tau(tau)  # before loading anything
    fmt = example_format(examples)
    model_kinds = {ref: detect_kind(resolve_reference(ref, token=token)) for ref in models}
    if len(set(model_kinds.values())) > 1:
        found = ", ".join(f"{ref} is a {kind}" for ref, kind in model_kinds.items())
        raise RerankError(f"weigh models of one kind: {found}")
    losses, loss_kind, started = [], "", time.monotonic()
    for ref in models:
        MergeCancelled.check(cancel, STOPPED)
        already = {id(r) for r in loaded_rerankers()}
        reranker = load_reranker(ref, device=device, max_length=max_length, token=token)
        try:
            loss_kind, loss = model_loss(reranker, examples, fmt, batch_size=batch_size,
                                         max_length=max_length or DECODER_MAX_TOKENS, cancel=cancel)
        finally:
            if id(reranker) not in already:
                unload(reranker)
        losses.append(loss)
        if progress is not None:
            progress(len(losses), len(models), time.monotonic() - started)
    MergeCancelled.check(cancel, STOPPED)
    return DataWeights(list(models), loss_kind, losses, weights_from_losses(losses, tau=tau), tau)


def model_loss(reranker: Reranker, examples: list[dict], fmt: str, *, batch_size: int = 16,
               max_length: int = 2048, cancel: threading.Event | None = None) -> tuple[str, float]:
    """(kind of loss, mean loss) of one loaded model on examples of format "lm" or "ranking"."""
    if fmt == "lm":
        if reranker.kind != "llm":
            raise RerankError(f"{reranker.ref!r} is a {reranker.kind}: input/output examples need a causal LM; "
                              'give {"query", "pos", "neg"} examples for rankers')
        return "decoder", decoder_loss(reranker.model, reranker.tokenizer, examples, max_length=max_length,
                                       cancel=cancel)
    if reranker.kind == "bi-encoder":
        return "embedder", embedder_loss(reranker, examples, batch_size=batch_size)
    return "reranker", reranker_loss(reranker, examples, batch_size=batch_size)


def reranker_loss(reranker: Reranker, examples: list[dict], *, batch_size: int = 16) -> float:
    """Mean over positives of −log softmax([pos, neg₁, …, negₖ])[pos] of the model's scores (logits)."""
    lonely = next((e["query"] for e in examples if not e.get("neg")), None)
    if lonely is not None:
        raise RerankError(f"example {lonely[:40]!r} has no negatives: a reranker's loss ranks each positive "
                          "against the query's \"neg\" passages")
    pairs = [(e["query"], doc) for e in examples for doc in e["pos"] + e["neg"]]
    scores = reranker.score_pairs(pairs, batch_size=batch_size)
    losses, start = [], 0
    for example in examples:
        stop = start + len(example["pos"]) + len(example["neg"])
        group = torch.tensor(scores[start:stop], dtype=torch.float64)  # (pos…, neg…)
        negatives = group[len(example["pos"]):]
        for positive in group[:len(example["pos"])]:
            losses.append(group_cross_entropy(positive, negatives))
        start = stop
    return sum(losses) / len(losses)


def embedder_loss(reranker: Reranker, examples: list[dict], *, batch_size: int = 16,
                  temperature: float = EMBEDDER_TEMPERATURE) -> float:
    """Mean over positives of the InfoNCE loss: cos(q, pos)/t against cos(q, p)/t of every other passage."""
    passages = list(dict.fromkeys(doc for e in examples for doc in e["pos"] + e.get("neg", [])))
    pairs = [(e["query"], doc) for e in examples for doc in passages]
    cosines = torch.tensor(reranker.score_pairs(pairs, batch_size=batch_size), dtype=torch.float64)
    cosines = cosines.view(len(examples), len(passages)) / temperature  # (queries, passages)
    column = {doc: i for i, doc in enumerate(passages)}
    losses = []
    for row, example in zip(cosines, examples):
        positives = {column[doc] for doc in example["pos"]}
        negatives = row[[i for i in range(len(passages)) if i not in positives]]
        if not len(negatives):
            raise RerankError(f"example {example['query'][:40]!r} has no passage to rank its positives against: "
                              "add \"neg\" passages or more examples")
        losses += [group_cross_entropy(row[i], negatives) for i in sorted(positives)]
    return sum(losses) / len(losses)


def group_cross_entropy(positive: torch.Tensor, negatives: torch.Tensor) -> float:
    """−log(e^pos / (e^pos + Σ e^neg)): the positive's cross-entropy within its group."""
    return float(torch.logsumexp(torch.cat([positive.view(1), negatives]), dim=0) - positive)


def decoder_loss(model, tokenizer, examples: list[dict], *, max_length: int = 2048,
                 cancel: threading.Event | None = None) -> float:
    """Mean over examples of the mean cross-entropy of the output tokens (and eos) given the input."""
    device = next(model.parameters()).device
    losses = []
    with torch.inference_mode():
        for example in examples:
            MergeCancelled.check(cancel, STOPPED)
            ids, scored_from = lm_tokens(tokenizer, example["input"], example["output"])
            ids = ids[:max_length]
            if scored_from >= len(ids):
                raise RerankError(f"example {example['input'][:40]!r}: the input fills all {max_length} tokens, "
                                  "nothing of the output is left to score")
            tokens = torch.tensor([ids], device=device)
            logits = model(input_ids=tokens).logits[0, :-1].float()  # (len − 1, vocab): predicts tokens 1…
            targets = tokens[0, 1:]
            token_losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            losses.append(float(token_losses[scored_from - 1:].mean()))
    return sum(losses) / len(losses)


def lm_tokens(tokenizer, prompt: str, output: str) -> tuple[list[int], int]:
    """LM-Cocktail's layout: (ids of prompt + " " + output + eos, index of the first scored token)."""
    ids = tokenizer.encode(f"{prompt} {output}")
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids, max(1, len(tokenizer.encode(prompt)))


def example_format(examples: list[dict]) -> str:
    """ "lm" (input/output) or "ranking" (query/pos/neg), checking every example; one-line errors."""
    if not examples:
        raise RerankError("no examples: give a few (5–50) examples of the target task")
    fmt = "lm" if isinstance(examples[0], dict) and "input" in examples[0] else "ranking"
    for number, example in enumerate(examples, 1):
        if not isinstance(example, dict):
            raise RerankError(f"example {number} is not a JSON object")
        if fmt == "lm":
            if not all(isinstance(example.get(k), str) for k in ("input", "output")) or not example["output"]:
                raise RerankError(f'example {number}: expected {{"input": str, "output": str}} like the first one')
        else:
            _check_ranking_example(example, number)
    return fmt


def _check_ranking_example(example: dict, number: int) -> None:
    if not isinstance(example.get("query"), str) or not example["query"].strip():
        raise RerankError(f'example {number}: expected {{"query": str, "pos": [...], "neg": [...]}} '
                          '(or {"input": str, "output": str} for decoders)')
    for key in ("pos", "neg"):
        if not isinstance(example.get(key, []), list) or not all(isinstance(d, str) for d in example.get(key, [])):
            raise RerankError(f'example {number}: "{key}" must be a list of passages')
    if not example.get("pos"):
        raise RerankError(f"example {number} ({example['query'][:40]!r}) has no positive passage")


def read_examples(path: str | Path) -> list[dict]:
    """Examples from a JSONL file (one object per line; blank lines skipped), checked."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RerankError(f"cannot read examples {path}: {error}") from None
    examples = [parse_json(line, where=f"{path}:{n}", error=RerankError)
                for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    example_format(examples)
    return examples

