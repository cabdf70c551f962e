"""Tiny Llama checkpoints whose vocabularies differ, as real fine-tunes' do, for the vocabulary-alignment tests.

Each function copies a model folder from tests/model_factory.build_family and changes its
tokenizer and its token-indexed tensors (model.embed_tokens.weight, lm_head.weight) together:
- `with_added_tokens`: a chat fine-tune that adds tokens (special ones, as `<|im_start|>`, or
  ordinary ones), its embedding grown by one seeded random row per token;
- `with_fewer_tokens`: a consistent smaller tokenizer (its last words dropped, rows cut to match);
- `padded`: the same tokenizer, the embedding padded with random rows to a multiple of `multiple`.
config.json's vocab_size always says the row count, as resize_token_embeddings leaves it.
`build_vocab_family` makes the family the vocabulary tests share.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

from tests.model_factory import build_family

TOKEN_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def _copy(folder: Path, out: Path) -> Path:
    shutil.copytree(folder, out)
    return out


def _set_rows(out: Path, change) -> None:
    """Replace each token tensor by change(tensor, its generator); config vocab_size follows the rows."""
    file = out / "model.safetensors"
    weights = load_file(file)
    for i, name in enumerate(TOKEN_TENSORS):
        if name in weights:
            weights[name] = change(weights[name], torch.Generator().manual_seed(100 + i)).contiguous()
    save_file(weights, file, metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["vocab_size"] = weights[TOKEN_TENSORS[0]].shape[0]
    (out / "config.json").write_text(json.dumps(config, indent=2))


def with_added_tokens(folder: Path, out: Path, tokens: list[str], *, special: bool = True,
                      template: str | None = None) -> Path:
    """A fine-tune of `folder` that adds `tokens` to its tokenizer and one random row per token, after its real ones.

    Rows past the tokenizer (the factory's padding) are dropped first, as resize_token_embeddings does."""
    _copy(folder, out)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    before = len(tokenizer)
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    else:
        tokenizer.add_tokens(tokens)
    if template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out)
    added = len(tokenizer) - before
    _set_rows(out, lambda w, g: torch.cat([w[:before], 0.02 * torch.randn((added, w.shape[1]), generator=g)]))
    return out


def with_fewer_tokens(folder: Path, out: Path, drop: int) -> Path:
    """`folder` with the last `drop` words of its WordLevel tokenizer gone and its token rows cut to the rest."""
    _copy(folder, out)
    data = json.loads((out / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    keep = len(vocab) - drop
    data["model"]["vocab"] = {tok: i for tok, i in vocab.items() if i < keep}
    (out / "tokenizer.json").write_text(json.dumps(data))
    _set_rows(out, lambda w, g: w[:keep])
    return out


def padded(folder: Path, out: Path, multiple: int = 64) -> Path:
    """`folder` with its token rows cut to its tokenizer and padded with random rows up to a multiple of `multiple`."""
    _copy(folder, out)
    real = len(transformers.AutoTokenizer.from_pretrained(out))
    rows = -(-real // multiple) * multiple
    _set_rows(out, lambda w, g: torch.cat([w[:real], torch.randn((rows - real, w.shape[1]), generator=g)]))
    return out


def build_vocab_family(root: Path, chat_tokens: list[str], template: str) -> dict[str, Path]:
    """{base, chat, small, pad}: a Llama base (108 tokens, 120 rows), a fine-tune adding `chat_tokens` (special, with
    `template` as its chat template), one lacking the base's last 5 words, one padded to 128 rows."""
    base, a, b = build_family(root / "family", "llama")
    return {"base": base, "chat": with_added_tokens(a, root / "chat", chat_tokens, template=template),
            "small": with_fewer_tokens(b, root / "small", 5), "pad": padded(b, root / "pad")}
