"""How likely a causal LM finds some texts: per-text log-likelihood and perplexity.

    texts = read_texts(pasted="first text\\n\\nsecond text")       # or read_texts(path="set.jsonl")
    scores = score_texts(lm, texts)                                # [TextScore(tokens, log_likelihood, …), …]

A text is tokenized as the tokenizer does by default (a Llama tokenizer prepends <s>); every
token after the first is predicted from the ones before it, so `tokens` counts len(ids) - 1 and
log_likelihood = Σ log p(token | earlier tokens) in nats; perplexity = exp(-log_likelihood / tokens).
Texts are scored in batches, sorted by length and right-padded; padding is masked out and, the
mask being causal, no real token sees it, so a text's value does not depend on its batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import GenerationError
from core.io.json_input import parse_json
from core.llm.model import CausalLM
from core.llm.settings import LOCAL, Limits

BATCH_TOKENS = 8192  # padded tokens one forward pass may hold (logits: BATCH_TOKENS × vocab floats)
JSONL_EXAMPLE = '{"text": "…"}'


@dataclass(frozen=True)
class TextScore:
    """One text under one model."""

    tokens: int  # tokens predicted (the first token of the text has no context and is not scored)
    log_likelihood: float  # Σ log p, natural log; ≤ 0
    perplexity: float  # exp(-log_likelihood / tokens)


def read_texts(*, pasted: str | None = None, path: str | Path | None = None, limits: Limits = LOCAL) -> list[str]:
    """Texts from a JSONL file (one {"text": ...} per line) or pasted (a blank line between texts).

    Example:
        >>> read_texts(path="set.jsonl")          # line 3 is {"txt": "hi"}
        GenerationError: set.jsonl line 3: expected an object with a "text" string, like {"text": "…"}
    """
    if path:
        try:
            content = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise GenerationError(f"cannot read {Path(path).name}: {error}") from None
        texts = _parse_jsonl(content, Path(path).name, limits)
    else:
        blocks, block = [], []
        for line in (pasted or "").splitlines() + [""]:
            if line.strip():
                block.append(line)
            elif block:
                blocks.append("\n".join(block))
                block = []
        texts = blocks
    if not texts:
        raise GenerationError("no text to score: paste some text (a blank line between texts) or upload a JSONL "
                              f"file of {JSONL_EXAMPLE} lines")
    _check_size(texts, limits)
    return texts


def score_texts(lm: CausalLM, texts: list[str], *, batch_tokens: int = BATCH_TOKENS) -> list[TextScore]:
    """One TextScore per text, in the order given."""
    encoded = [lm.tokenizer(text)["input_ids"] for text in texts]
    for number, ids in enumerate(encoded, start=1):
        if len(ids) < 2:
            raise GenerationError(f"text {number} gives {len(ids)} token under {lm.ref}: a text needs at least two "
                                  "to score one (write a few words)")
        if len(ids) > lm.max_tokens:
            raise GenerationError(f"text {number} has {len(ids)} tokens, more than the {lm.max_tokens} positions of "
                                  f"{lm.ref}: split it into shorter texts")
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    results: dict[int, TextScore] = {}
    for batch in _batches(sorted(range(len(texts)), key=lambda i: len(encoded[i])), encoded, batch_tokens):
        sums = _log_likelihoods([encoded[i] for i in batch], lm, pad)
        for i, total in zip(batch, sums):
            count = len(encoded[i]) - 1
            results[i] = TextScore(count, total, math.exp(-total / count))
    return [results[i] for i in range(len(texts))]


def mean_score(scores: list[TextScore]) -> tuple[float, float]:
    """(mean log-likelihood, mean perplexity) over texts, each text weighing the same."""
    return (sum(s.log_likelihood for s in scores) / len(scores), sum(s.perplexity for s in scores) / len(scores))


def _log_likelihoods(rows: list[list[int]], lm: CausalLM, pad: int) -> list[float]:
    """Σ log p(token_t | tokens_<t) for t ≥ 1 of each row, right-padded into one forward pass."""
    width = max(map(len, rows))
    ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=lm.device)  # (b, width)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=lm.device)
    with torch.inference_mode():
        logits = lm.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (b, width - 1, vocab)
        picked = logits.log_softmax(dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (b, width - 1)
        return (picked * mask[:, 1:]).sum(dim=-1).tolist()


def _batches(order: list[int], encoded: list[list[int]], batch_tokens: int):
    """Consecutive runs of `order` (shortest first) whose padded size stays within batch_tokens."""
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * len(encoded[i]) > batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _parse_jsonl(content: str, name: str, limits: Limits) -> list[str]:
    texts = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        item = parse_json(line, where=where, error=GenerationError)
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise GenerationError(f"{where}: expected an object with a \"text\" string, like {JSONL_EXAMPLE}")
        if not item["text"].strip():
            raise GenerationError(f"{where}: the text is empty")
        texts.append(item["text"])
        if len(texts) > limits.max_texts:
            break  # _check_size says how many are allowed
    return texts


def _check_size(texts: list[str], limits: Limits) -> None:
    if len(texts) > limits.max_texts:
        raise GenerationError(f"more than {limits.max_texts:,} texts: at most {limits.max_texts:,} are scored here; "
                              "use a smaller set")
    chars = sum(map(len, texts))
    if chars > limits.max_chars:
        raise GenerationError(f"the texts have {chars:,} characters; at most {limits.max_chars:,} here: use fewer "
                              "or shorter texts")
