"""Load a causal LM (a chat or base decoder) safely, and keep the last pair loaded.

    lm = load_causal_lm("outputs/my-merge", device="cpu")       # or a Hub id, with the caller's token
    lm.describe()                                               # "LlamaForCausalLM on cpu (float32, 0.03 GB)"
    find_decoders(ws)                                           # the pickers' causal LMs
    unload_causal_lms(owner=None)                               # frees them (VRAM too)

The reference is resolved (and a Hub repo's access checked with the caller's token) by
core.io.checkpoint.resolve_reference before anything is read; a folder whose own files name
files outside it is refused; trust_remote_code is never enabled, so a repo's own Python never
runs; transformers loads safetensors, and a .bin only with torch.load(weights_only=True). A
folder that is not a causal LM (an encoder, a classifier) is refused by its config, before its
weights are read. Loaded models stay in core.model_cache.MODELS, keyed by resolved folder,
device and dtype, in the same memory bound as the Playground's rerankers; each remembers who
loaded it (a hosted session: `owner`), so a visitor lists and unloads only their own.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from core.app.models import ModelChoice, find_models
from core.app.workspace import Workspace
from core.devices import parse_device
from core.errors import GenerationError
from core.io.checkpoint import check_own_files
from core.io.reference import resolve_reference
from core.model_cache import MODELS
from core.rerank.model import pick_dtype
from core.units import human

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # LlamaForCausalLM, GPT2LMHeadModel, …


@dataclass(eq=False)
class CausalLM:
    """A loaded decoder with its tokenizer, on one device."""

    ref: str  # what the user wrote (path or Hub id)
    folder: Path  # the resolved local folder: two refs naming one folder are the same model
    model: torch.nn.Module
    tokenizer: object  # a transformers tokenizer
    device: torch.device
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *self.model.buffers()])

    @property
    def max_tokens(self) -> int:
        """The longest sequence (prompt + generated) the model's positions allow."""
        positions = getattr(self.model.config, "max_position_embeddings", None)
        return int(positions) if isinstance(positions, int) and positions > 0 else 2048

    def describe(self) -> str:
        """One line for a status bar, e.g. "LlamaForCausalLM on cpu (float32, 30.1 MB)"."""
        return (f"{type(self.model).__name__} on {self.device} "
                f"({str(self.dtype).removeprefix('torch.')}, {human(self.nbytes)})")


def is_causal_lm(folder: Path) -> bool:
    """Whether folder/config.json names a causal-LM architecture (False when there is none to read)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    architectures = config.get("architectures") if isinstance(config, dict) else None
    return isinstance(architectures, list) and any(str(a).endswith(CAUSAL_SUFFIXES) for a in architectures)


def find_decoders(ws: Workspace) -> list[ModelChoice]:
    """The causal LMs among the pickers' models (core.app.models.find_models), in the same order; a
    Hub id from the local cache counts when its cached config.json names a causal LM."""
    from huggingface_hub import try_to_load_from_cache

    def folder(choice: ModelChoice) -> Path | None:
        if choice.source == "hf-cache":
            config = try_to_load_from_cache(choice.ref, "config.json")
            return Path(config).parent if isinstance(config, str) else None
        return ws.root / choice.ref if ws.hosted else Path(choice.ref)

    return [choice for choice in find_models(ws) if (where := folder(choice)) is not None and is_causal_lm(where)]


def load_causal_lm(ref: str, *, device: str = "cpu", dtype: str | None = None,
                   token: str | bool | None = None, owner: str | None = None) -> CausalLM:
    """The causal LM at `ref` (folder or Hub id) on `device`, from the cache when already loaded.

    dtype: "float32" | "float16" | "bfloat16"; default float32 on CPU, bfloat16 (else float16)
    on a GPU. token: Hugging Face access for a Hub id, as in checkpoint.resolve_reference.
    owner: who holds the cached model (a hosted session id); see loaded_causal_lms.

    Example:
        >>> load_causal_lm("models/bert-reranker")
        GenerationError: 'models/bert-reranker' is not a causal LM (its config names BertForSequenceClassification): ...
    """
    target = parse_device(device)
    folder = resolve_reference(str(ref), token=token)
    if not is_causal_lm(folder):
        raise GenerationError(f"{ref!r} is not a causal LM (its config names {_architectures(folder)}): "
                              "pick a decoder such as a Llama, Qwen2 or Mistral model")
    torch_dtype = pick_dtype(dtype, target, "llm")
    key = ("causal-lm", str(folder), str(target), str(torch_dtype))
    return MODELS.get(key, owner, lambda: _load(str(ref), folder, target, torch_dtype))


def loaded_causal_lms(owner: str | None = None) -> list[CausalLM]:
    """The decoders `owner` holds (all when None), least recently used first."""
    return MODELS.loaded(owner, kind=CausalLM)


def unload_causal_lms(*, owner: str | None = None) -> None:
    """Let go of the decoders `owner` holds (all when None); one another owner holds stays loaded."""
    MODELS.release(owner=owner, kind=CausalLM)


def _load(ref: str, folder: Path, device: torch.device, dtype: torch.dtype) -> CausalLM:
    import transformers

    check_own_files(folder, ref)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, trust_remote_code=False, device_map=device).eval()
    except (OSError, ValueError, KeyError, pickle.UnpicklingError) as error:  # unpickling: a .bin holding code
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise GenerationError(f"cannot load {ref!r} as a causal LM: {reason}") from None
    return CausalLM(ref, folder, model, tokenizer, device, dtype)


def _architectures(folder: Path) -> str:
    try:
        names = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("architectures")
    except (OSError, ValueError, AttributeError):
        return "no readable config.json"
    return ", ".join(map(str, names)) if isinstance(names, list) and names else "no architecture"
