"""How an embedding model turns token vectors into one text vector: read from its folder.

    encoder = read_pooling(Path("all-MiniLM-L6-v2"))
    encoder.modes, encoder.max_seq_length      # ("mean",), 256
    vectors = encoder.embed(batch)             # (b, hidden) — called by core.rerank.encode.run_batches

A sentence-transformers folder says it in modules.json (Transformer → Pooling → Normalize):
1_Pooling/config.json holds either the legacy booleans (`pooling_mode_mean_tokens: true`) or
sentence-transformers ≥ 5's `pooling_mode: "mean"`; sentence_bert_config.json the max length
and lower-casing. A plain transformers folder gets sentence-transformers' own default, mean
pooling. Modules that change the vector beyond pooling (Dense, …) are refused rather than
silently skipped, since scores would differ from sentence-transformers'. A module's `path`
must name a folder inside the model's own (checkpoint.own_file): a downloaded modules.json
saying `../../elsewhere` is refused.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import RerankError
from core.io.checkpoint import own_file

LEGACY_MODES = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_lasttoken": "lasttoken"}  # in sentence-transformers' concatenation order
KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")


@dataclass
class SentenceEncoder:
    """Pooling of a bi-encoder; `model` is attached once the weights are loaded."""

    modes: tuple[str, ...] = ("mean",)
    max_seq_length: int | None = None  # tokens per text; None: the reranker's default
    lower_case: bool = False
    module_path: str = ""  # the Transformer module's folder inside the model folder
    model: object = None

    def prepare(self, texts: list[str]) -> list[str]:
        """Texts as the tokenizer should see them."""
        return [t.lower() for t in texts] if self.lower_case else texts

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(b, hidden · len(modes)) pooled vectors of one padded batch."""
        tokens = self.model(**batch).last_hidden_state.float()  # (b, seq, hidden)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (b, seq, 1)
        pooled = []
        for mode in self.modes:
            if mode == "cls":
                pooled.append(tokens[:, 0])
            elif mode == "max":
                pooled.append(tokens.masked_fill(mask == 0, float("-inf")).max(dim=1).values)
            elif mode == "lasttoken":
                last = batch["attention_mask"].sum(1) - 1  # right padding: last real token
                pooled.append(tokens[torch.arange(tokens.shape[0]), last])
            else:
                counts = mask.sum(1).clamp(min=1e-9)
                pooled.append((tokens * mask).sum(1) / (counts if mode == "mean" else counts.sqrt()))
        return torch.cat(pooled, dim=-1)


def read_pooling(folder: Path) -> SentenceEncoder:
    """The pooling a folder declares (sentence-transformers files), or mean pooling."""
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return SentenceEncoder()
    encoder = SentenceEncoder()
    for module in _json(modules_file, list):
        if not isinstance(module, dict):
            raise RerankError(f"{modules_file}: each module must be a JSON object")
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        name = module.get("path", "")
        path = own_file(folder, name, str(folder), named_by="modules.json") if name != "" else folder
        if kind not in KNOWN_MODULES:
            raise RerankError(f"{folder}: sentence-transformers module {kind!r} is not supported "
                              f"(only {', '.join(KNOWN_MODULES)})")
        if kind == "Transformer":
            encoder.module_path = name
            settings = path / "sentence_bert_config.json"
            if settings.exists():
                config = _json(settings, dict)
                encoder.max_seq_length = config.get("max_seq_length")
                encoder.lower_case = bool(config.get("do_lower_case", False))
        elif kind == "Pooling":
            encoder.modes = _pooling_modes(_json(path / "config.json", dict), folder)
    return encoder


def _pooling_modes(config: dict, folder: Path) -> tuple[str, ...]:
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for key, mode in LEGACY_MODES.items() if config.get(key)]
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    unknown = [m for m in modes if m not in LEGACY_MODES.values()]
    if unknown or not modes:
        raise RerankError(f"{folder}: pooling {unknown or 'none'} is not supported "
                          f"(use one of {', '.join(LEGACY_MODES.values())})")
    return modes


def _json(path: Path, expected: type):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RerankError(f"cannot read {path}: {error}") from None
    if not isinstance(data, expected):
        raise RerankError(f"{path}: expected a JSON {expected.__name__}")
    return data
