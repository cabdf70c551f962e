"""The reranker's hot path: tokenize pairs once, sort by length, pad per batch, run the model.

    encoded = encode_cross_pairs(tokenizer, [("what is ties?", "TIES merges …")], max_length=512)
    scores = run_batches(encoded, forward, pad_id=0, device=cpu, batch_size=32)   # (n, ...) in input order

Tokenization is one batched call into the Rust tokenizer for all pairs (no per-pair tokenizer
calls, unlike FlagReranker under transformers 5, which decodes and re-encodes every pair).
Sorting by length before batching keeps padding small; each batch is padded only to its own
longest row. On CUDA out-of-memory the batch is halved and retried, down to one row.

The encoders reproduce the reference libraries' inputs token for token:
- cross-encoder (FlagReranker): the query is cut to 3/4 of max_length tokens on its own, then
  the pair is built with the tokenizer's special tokens, cutting only the passage;
- LLM reranker (FlagLLMReranker): [bos] "A: "query "\\n" "B: "passage "\\n" prompt, the passage
  cut so the query and passage fit max_length, and the score read at the last token;
- bi-encoder (sentence-transformers): each text alone, cut to the model's max_seq_length.
This module must not load models or know about caches: it gets a tokenizer and a forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from core.errors import RerankError

LLM_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to the "
              "query by providing a prediction of either 'Yes' or 'No'.")


@dataclass(frozen=True)
class Encoded:
    """Token ids of each row, ready to be padded into batches."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None = None  # BERT-style segment ids, when the model takes them
    pad_left: bool = False  # causal LMs read the last position, so their rows are padded on the left


def query_token_limit(max_length: int) -> int:
    """FlagReranker's default query budget: 3/4 of the pair's max_length."""
    return max_length * 3 // 4


def encode_cross_pairs(tokenizer, pairs: list[tuple[str, str]], *, max_length: int) -> Encoded:
    """Cross-encoder inputs: [CLS] query [SEP] passage [SEP] (or the model's own template)."""
    queries = _cut_queries(tokenizer, [q for q, _ in pairs], query_token_limit(max_length))
    encoded = tokenizer(queries, [d for _, d in pairs], truncation="only_second", max_length=max_length,
                        return_attention_mask=False)
    types = encoded.get("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    return Encoded(encoded["input_ids"], types)


def encode_llm_pairs(tokenizer, pairs: list[tuple[str, str]], *, max_length: int, prompt: str = LLM_PROMPT) -> Encoded:
    """LLM-reranker inputs, as FlagLLMReranker builds them: [bos] A: q \\n B: d \\n prompt."""
    def ids(texts, limit=None):
        return tokenizer(texts, add_special_tokens=False, truncation=limit is not None, max_length=limit)["input_ids"]

    sep, prompt_ids = ids(["\n"])[0], ids([prompt])[0]
    unique = list(dict.fromkeys(q for q, _ in pairs))
    query_ids = dict(zip(unique, ids([f"A: {q}" for q in unique], query_token_limit(max_length))))
    passage_ids = ids([f"B: {d}" for _, d in pairs], max_length)
    bos = tokenizer.bos_token_id
    prefix = [bos] if bos is not None and bos != tokenizer.pad_token_id else []
    budget = max_length + len(sep) + len(prompt_ids)
    rows = []
    for (query, _), passage in zip(pairs, passage_ids):
        first, second = prefix + query_ids[query], sep + passage
        excess = len(first) + len(second) - budget
        if 0 < excess < len(second):  # cut only the passage side, as FlagEmbedding's only_second does
            second = second[:-excess]
        rows.append(first + second + sep + prompt_ids)
    return Encoded(rows, pad_left=True)


def encode_texts(tokenizer, texts: list[str], *, max_length: int) -> Encoded:
    """Bi-encoder inputs: each text alone, with special tokens, cut to max_length."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False)
    types = encoded.get("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    return Encoded(encoded["input_ids"], types)


def run_batches(encoded: Encoded, forward: Callable[[dict[str, torch.Tensor]], torch.Tensor], *, pad_id: int,
                device: torch.device, batch_size: int) -> torch.Tensor:
    """forward(batch) for every row, longest rows first; results (n, ...) in the input's order.

    forward gets input_ids, attention_mask (and token_type_ids) of shape (b, longest in batch)
    and returns one float tensor row per input row.
    """
    order = sorted(range(len(encoded.input_ids)), key=lambda i: -len(encoded.input_ids[i]))
    results: list[torch.Tensor | None] = [None] * len(order)
    start = 0
    with torch.inference_mode():
        while start < len(order):
            rows = order[start:start + batch_size]
            try:
                out = forward(_pad(encoded, rows, pad_id, device)).float().cpu()
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise RerankError(f"out of memory on {device} scoring one input of "
                                      f"{len(encoded.input_ids[rows[0]])} tokens: use a smaller max_length "
                                      "or another device") from None
                batch_size = max(1, batch_size // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            for row, value in zip(rows, out):
                results[row] = value
            start += len(rows)
    if not results:
        return torch.empty(0)
    return torch.stack(results)


def _pad(encoded: Encoded, rows: list[int], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One batch as tensors on `device`, padded to its longest row (left or right)."""
    width = max(len(encoded.input_ids[i]) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long) if encoded.token_type_ids is not None else None
    for k, i in enumerate(rows):
        length = len(encoded.input_ids[i])
        span = slice(width - length, width) if encoded.pad_left else slice(0, length)
        ids[k, span] = torch.tensor(encoded.input_ids[i])
        mask[k, span] = 1
        if types is not None:
            types[k, span] = torch.tensor(encoded.token_type_ids[i])
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}


def _cut_queries(tokenizer, queries: list[str], limit: int) -> list[str]:
    """Queries longer than `limit` tokens, cut to their first `limit` tokens (as text)."""
    unique = list(dict.fromkeys(queries))
    cut = {}
    for query, ids in zip(unique, tokenizer(unique, add_special_tokens=False)["input_ids"]):
        if len(ids) > limit:
            cut[query] = tokenizer.decode(ids[:limit], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return [cut.get(q, q) for q in queries]
