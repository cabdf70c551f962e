"""Load rerankers and score (query, passage) pairs with them, on the device the user picks.

    reranker = load_reranker("BAAI/bge-reranker-base", device="auto")   # cached; kind auto-detected
    reranker.score("what is TIES?", ["TIES trims small changes …", "Paris is …"])   # → [5.1, -8.3]
    reranker.score(query, docs, normalize=True)         # sigmoid of the logits, in (0, 1)
    unload(reranker)                                     # frees its memory (VRAM too)
    load_reranker(ref, owner="session-1")                # hosted: each session sees and unloads its own

Three kinds, detected from config.json and overridable with `kind=`:
- "cross-encoder": *ForSequenceClassification with one label; score = the raw logit,
  tokenized as FlagReranker does, so scores equal FlagReranker.compute_score.
- "bi-encoder": an embedding model (sentence-transformers folder: pooling and normalization
  from modules.json / 1_Pooling); score = cosine(query, passage), as encode + cos_sim.
- "llm": a causal LM (bge-reranker-v2-gemma style); score = logit of "Yes" at the last token.
The model sits on its device from load time (the memory gauge shows its real cost). Loaded
models are cached by (folder, device, dtype, kind) in core.model_cache.MODELS, which bounds
rerankers and the Generate tab's decoders together and tracks the owners (hosted sessions)
holding each. The reference is resolved, and a Hub repo's access checked with the caller's
token, before the cache is looked at.
trust_remote_code is never enabled, and a folder whose files name files outside it is refused.
"""
from __future__ import annotations

import functools
import json
import pickle
from pathlib import Path

import torch

from core.devices import parse_device
from core.errors import RerankError
from core.io.checkpoint import check_own_files
from core.io.reference import resolve_reference
from core.model_cache import MODELS
from core.rerank.encode import encode_cross_pairs, encode_llm_pairs, encode_texts, run_batches
from core.rerank.pooling import SentenceEncoder, read_pooling
from core.units import DTYPES, human

KINDS = ("cross-encoder", "bi-encoder", "llm")
SCORE_LABELS = {"cross-encoder": "logit", "bi-encoder": "cosine", "llm": "logit of 'Yes'"}

__all__ = ["KINDS", "Reranker", "RerankError", "detect_kind", "load_reranker", "loaded_rerankers", "needs_spreading",
           "pick_dtype", "unload"]


class Reranker:
    """A loaded model that turns (query, passage) pairs into relevance scores."""

    def __init__(self, ref: str, folder: Path, kind: str, model, tokenizer, device: torch.device,
                 dtype: torch.dtype, max_length: int, encoder: SentenceEncoder | None = None):
        self.ref = ref  # what the user wrote (path or Hub id)
        self.folder = folder  # where the files are
        self.kind = kind  # one of KINDS
        self.model = model
        self.tokenizer = tokenizer
        self.device = device  # where inputs go (the first device when the model is spread)
        self.dtype = dtype
        self.max_length = max_length  # default token limit per pair (bi-encoder: per text)
        self.encoder = encoder  # bi-encoders: pooling and normalization
        self.nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    def __repr__(self) -> str:
        return f"Reranker({self.ref!r}, kind={self.kind!r}, device={str(self.device)!r}, dtype={self.dtype})"

    @property
    def score_label(self) -> str:
        """What the raw scores are, for tables and axis titles."""
        return SCORE_LABELS[self.kind]

    def describe(self) -> str:
        """One line for a status bar, e.g. "cross-encoder on cuda:0 (float16, 1.14 GB)"."""
        return f"{self.kind} on {self.device} ({str(self.dtype).removeprefix('torch.')}, {human(self.nbytes)})"

    def score(self, query: str, docs: list[str], *, batch_size: int = 32, max_length: int | None = None,
              normalize: bool = False) -> list[float]:
        """Scores of `docs` for `query`, in the order given.

        Example:
            >>> reranker.score("capital of France", ["Paris is the capital.", "Bananas are yellow."])
            [7.91, -10.97]
        """
        return self.score_pairs([(query, doc) for doc in docs], batch_size=batch_size, max_length=max_length,
                                normalize=normalize)

    def score_pairs(self, pairs: list[tuple[str, str]], *, batch_size: int = 32, max_length: int | None = None,
                    normalize: bool = False) -> list[float]:
        """One score per (query, passage) pair. normalize=True applies a sigmoid to logits;
        cosine scores (bi-encoders) are already bounded and stay as they are."""
        _check_pairs(pairs)
        if batch_size < 1:
            raise RerankError(f"batch_size must be at least 1, got {batch_size}")
        limit = max_length or self.max_length
        if limit < 16:
            raise RerankError(f"max_length must be at least 16 tokens, got {limit}")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if self.kind == "bi-encoder":
            scores = self._cosines(pairs, limit, batch_size, pad_id)
        elif self.kind == "cross-encoder":
            encoded = encode_cross_pairs(self.tokenizer, pairs, max_length=limit)
            scores = run_batches(encoded, lambda batch: self.model(**batch).logits.view(-1), pad_id=pad_id,
                                 device=self.device, batch_size=batch_size)
        else:
            encoded = encode_llm_pairs(self.tokenizer, pairs, max_length=limit)
            scores = run_batches(encoded, self._yes_logits, pad_id=pad_id, device=self.device, batch_size=batch_size)
        if normalize and self.kind != "bi-encoder":
            scores = torch.sigmoid(scores)
        return scores.tolist()

    def _cosines(self, pairs, limit, batch_size, pad_id) -> torch.Tensor:
        """Embed each distinct text once, then cos(query, passage) per pair."""
        texts = list(dict.fromkeys(t for pair in pairs for t in pair))
        encoded = encode_texts(self.tokenizer, self.encoder.prepare(texts), max_length=limit)
        vectors = run_batches(encoded, self.encoder.embed, pad_id=pad_id, device=self.device, batch_size=batch_size)
        vectors = torch.nn.functional.normalize(vectors, dim=-1)  # (n_texts, hidden)
        row = {text: i for i, text in enumerate(texts)}
        queries = vectors[[row[q] for q, _ in pairs]]
        passages = vectors[[row[d] for _, d in pairs]]
        return (queries * passages).sum(-1)

    def _yes_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logit of "Yes" at the last position of left-padded rows (positions start at 0 per row)."""
        positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = self.model(**batch, position_ids=positions, logits_to_keep=1).logits  # (b, 1, vocab)
        return logits[:, -1, self._yes_id]

    @functools.cached_property
    def _yes_id(self) -> int:
        return self.tokenizer("Yes", add_special_tokens=False)["input_ids"][0]


def detect_kind(folder: Path) -> str:
    """cross-encoder, llm or bi-encoder, from the architecture config.json names."""
    config = _config(folder)
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "cross-encoder"
    if any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in architectures):
        return "llm"
    return "bi-encoder"


def load_reranker(ref: str, *, device: str = "cpu", dtype: str | None = None, kind: str | None = None,
                  max_length: int | None = None, cached: bool = True, token: str | bool | None = None,
                  owner: str | None = None) -> Reranker:
    """A reranker for `ref` (folder or Hub id) on `device`, from the cache when already loaded.

    dtype: "float32" | "float16" | "bfloat16"; default float32 on CPU, float16 on CUDA/MPS
    (bfloat16 for LLMs on GPUs that support it). kind: one of KINDS; default detected.
    cached=False loads a private copy, kept out of the cache, whose weights the caller may
    overwrite (the α-sweep does). token: Hugging Face access for a Hub id, as in
    checkpoint.resolve_reference. owner: who holds the cached model (a hosted session id);
    see loaded_rerankers and unload.
    """
    target = parse_device(device)
    folder = resolve_reference(ref, token=token)
    kind = kind or detect_kind(folder)
    if kind not in KINDS:
        raise RerankError(f"unknown reranker kind {kind!r}: use one of {', '.join(KINDS)}")
    torch_dtype = pick_dtype(dtype, target, kind)
    key = (str(folder), str(target), str(torch_dtype), kind, str(device).strip().lower() == "auto")
    if not cached:
        return _load(ref, folder, kind, target, torch_dtype, spread=key[-1], max_length=max_length)
    return MODELS.get(("reranker", *key), owner,
                      lambda: _load(ref, folder, kind, target, torch_dtype, spread=key[-1], max_length=max_length))


def loaded_rerankers(owner: str | None = None) -> list[Reranker]:
    """Models in the cache, least recently used first: those `owner` loaded, or all when None."""
    return MODELS.loaded(owner, kind=Reranker)


def unload(reranker: Reranker | None = None, *, owner: str | None = None) -> None:
    """Release one model (all rerankers when None) and give back the memory of those nobody holds any more.

    owner=None drops them for every owner; an owner lets go only of its own hold, so a model
    another owner still holds stays loaded.
    """
    MODELS.release(reranker, owner=owner, kind=Reranker)


def _load(ref, folder, kind, device, dtype, *, spread, max_length) -> Reranker:
    """Tokenizer and weights, straight onto `device` (or spread over GPUs with accelerate)."""
    import transformers

    classes = {"cross-encoder": transformers.AutoModelForSequenceClassification,
               "llm": transformers.AutoModelForCausalLM, "bi-encoder": transformers.AutoModel}
    encoder = read_pooling(folder) if kind == "bi-encoder" else None
    weights = folder / encoder.module_path if encoder else folder
    check_own_files(weights, ref)
    placement = {"device_map": "auto"} if spread and needs_spreading(device, weights) else {"device_map": device}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(weights, trust_remote_code=False)
        model = classes[kind].from_pretrained(weights, dtype=dtype, trust_remote_code=False, **placement).eval()
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as error:  # unpickling: a .bin holding code
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise RerankError(f"cannot load {ref!r} as a {kind}: {reason}") from None
    if kind == "cross-encoder" and model.config.num_labels != 1:
        raise RerankError(f"{ref!r} has {model.config.num_labels} output labels; a reranker has one "
                          "(num_labels=1)")
    if encoder:
        encoder.model = model
    if kind == "llm" and tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = tokenizer.eos_token_id
    limit = max_length or (encoder.max_seq_length if encoder and encoder.max_seq_length else 512)
    first = next(model.parameters()).device
    return Reranker(ref, folder, kind, model, tokenizer, first, dtype, limit, encoder)


def pick_dtype(name: str | None, device: torch.device, kind: str) -> torch.dtype:
    """The dtype asked for by name, else the device's sensible default for this kind of model.

    Example:
        >>> pick_dtype(None, torch.device("cpu"), "cross-encoder"), pick_dtype("bfloat16", torch.device("cpu"), "llm")
        (torch.float32, torch.bfloat16)
    """
    if name is not None:
        if name not in DTYPES:
            raise RerankError(f"unknown dtype {name!r}: use {', '.join(DTYPES)}")
        return DTYPES[name]
    if device.type == "cpu":
        return torch.float32  # half-precision LayerNorm is missing or slow on many CPUs
    if kind == "llm" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16  # fp16 overflows in large decoders
    return torch.float16


def needs_spreading(device: torch.device, folder: Path) -> bool:
    """Whether `device="auto"` should spread these weights over the GPUs (and CPU) with accelerate:
    only for a CUDA device whose free memory is less than ~1.1 × the weight files."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) or sum(
        f.stat().st_size for f in folder.glob("*.bin"))
    return size > 0.9 * free


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise RerankError(f"{folder} is not a model folder: it has no config.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RerankError(f"cannot read {path}: {error}") from None


def _check_pairs(pairs) -> None:
    if not pairs:
        raise RerankError("nothing to score: give at least one query and one passage")
    for query, doc in pairs:
        if not isinstance(query, str) or not query.strip():
            raise RerankError("a query is empty: every query needs some text")
        if not isinstance(doc, str):
            raise RerankError(f"a passage for {query[:40]!r} is not text: {type(doc).__name__}")

