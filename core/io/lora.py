"""`model+adapter` references: a model with a PEFT LoRA adapter applied as each tensor is read.

    ckpt = open_adapted("models/base", "adapters/medical")     # a Checkpoint like any other
    ckpt.read("model.layers.0.self_attn.q_proj.weight")         # W + scale·B·A

mergekit loads the whole model and runs peft's merge_and_unload before merging: each target
module's weight becomes W + scale·(B·A), scale = lora_alpha / r (lora_alpha / sqrt(r) with
use_rslora); with fan_in_fan_out the weight is stored (in, out), so the delta is transposed, and
an embedding's lora_embedding_A/B give (B·A)ᵀ. Here the same delta is added to a tensor (or a
block of its rows) as the engine reads it, so no model is ever loaded whole. The adapter's
weights are read from adapter_model.safetensors only (adapter_model.bin is refused: a pickle);
options this does not implement (DoRA, rank/alpha patterns, trained biases, modules_to_save)
are refused with one line rather than merged differently.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import CheckpointError
from core.io.checkpoint import Checkpoint, read_json_object
from core.io.reference import resolve_reference

WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
# adapter_config.json keys whose non-default values change the merged weights in ways not implemented here.
REFUSED = {"use_dora": "DoRA", "rank_pattern": "rank_pattern", "alpha_pattern": "alpha_pattern",
           "modules_to_save": "modules_to_save", "layer_replication": "layer_replication",
           "lora_bias": "lora_bias", "bias": "trained biases"}


def split_reference(ref: str) -> tuple[str, str | None]:
    """(model, adapter) of a `model+adapter` reference; (ref, None) for a plain one or a path that exists."""
    if "+" not in ref or os.path.lexists(ref):
        return ref, None
    parts = [part.strip() for part in ref.split("+")]
    if len(parts) != 2 or not all(parts):
        raise CheckpointError(f"model {ref!r}: write a LoRA reference as MODEL+ADAPTER, with one '+'")
    return parts[0], parts[1]


@dataclass(frozen=True)
class Delta:
    """Where one target tensor's low-rank change lives in the adapter."""

    a: str  # name of A, (r, in) — for an embedding (r, rows)
    b: str  # name of B, (out, r) — for an embedding (dim, r)
    transposed: bool  # the delta is (B·A)ᵀ: fan_in_fan_out, or an embedding


class AdaptedCheckpoint(Checkpoint):
    """A model whose target tensors read as W + scale·B·A (the adapter's own tensors are kept apart)."""

    def __init__(self, ref: str, folder: Path, adapter: Checkpoint, scale: float, deltas: dict[str, Delta]):
        super().__init__(ref, folder)
        self.adapter, self.scale, self.deltas = adapter, scale, deltas
        for name, delta in deltas.items():
            _check_shapes(self, name, delta)

    @property
    def adapter_bytes(self) -> int:
        """What reading the adapter costs on top of the model (the plan's bytes_read counts it)."""
        return self.adapter.total_bytes

    def read(self, name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
             rows: slice | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        weight = super().read(name, device=device, rows=rows, out=out)
        delta = self.deltas.get(name)
        if delta is None:
            return weight.to(dtype=dtype or weight.dtype)
        a = self.adapter.read(delta.a, device=device, dtype=torch.float32)
        b = self.adapter.read(delta.b, device=device, dtype=torch.float32)
        if delta.transposed:  # rows of (B·A)ᵀ are columns of A
            change = (a if rows is None else a[:, rows]).T @ b.T
        else:
            change = (b if rows is None else b[rows]) @ a
        adapted = (weight.to(torch.float32) + self.scale * change).to(weight.dtype)
        if out is not None and out.device == adapted.device:  # the caller's reused block holds the result
            adapted = out.copy_(adapted)
        return adapted.to(dtype=dtype or weight.dtype)

    def close(self) -> None:
        super().close()
        self.adapter.close()


def open_adapted(model_ref: str, adapter_ref: str, *, token: str | bool | None = None) -> AdaptedCheckpoint:
    """The model `model_ref` with the LoRA adapter `adapter_ref` (a folder or Hub id) applied."""
    ref = f"{model_ref}+{adapter_ref}"
    folder = resolve_reference(adapter_ref, token=token)
    config_file = folder / "adapter_config.json"
    if not config_file.exists():
        raise CheckpointError(f"adapter {adapter_ref!r} has no adapter_config.json: give a PEFT LoRA adapter folder")
    if not (folder / WEIGHTS).exists():
        pickled = (folder / "adapter_model.bin").exists()
        found = "it has adapter_model.bin, a pickle: save it with safetensors" if pickled else "it has none"
        raise CheckpointError(f"adapter {adapter_ref!r} needs {WEIGHTS}: {found}")
    config = read_json_object(config_file)
    scale, fan_in_fan_out = _scale(config, adapter_ref), bool(config.get("fan_in_fan_out"))
    adapter = Checkpoint(adapter_ref, folder)
    try:
        deltas = _deltas(adapter, fan_in_fan_out)
        return AdaptedCheckpoint(ref, resolve_reference(model_ref, token=token), adapter, scale, deltas)
    except BaseException:
        adapter.close()
        raise


def _scale(config: dict, ref: str) -> float:
    """lora_alpha / r, or lora_alpha / sqrt(r) under rsLoRA, after refusing what is not implemented."""
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise CheckpointError(f"adapter {ref!r} is a {config.get('peft_type')} adapter: only LoRA adapters are applied")
    for key, what in REFUSED.items():
        value = config.get(key)
        if value not in (None, False, {}, [], "none"):
            raise CheckpointError(f"adapter {ref!r} uses {what} ({key}: {value!r}), which is not implemented here")
    r, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0 or not isinstance(alpha, (int, float)):
        raise CheckpointError(f"adapter {ref!r}: adapter_config.json needs a positive integer r "
                              "and a number lora_alpha")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _deltas(adapter: Checkpoint, fan_in_fan_out: bool) -> dict[str, Delta]:
    """Target tensor name → its A and B, from PEFT's key names (base_model.model.<module>.lora_A.weight)."""
    deltas = {}
    for name in adapter.tensors:
        for a_key, b_key, transposed in ((".lora_A.weight", ".lora_B.weight", fan_in_fan_out),
                                         (".lora_embedding_A", ".lora_embedding_B", True)):
            if name.endswith(a_key):
                module = name.removesuffix(a_key)
                b = module + b_key
                if b not in adapter.tensors:
                    raise CheckpointError(f"adapter {adapter.ref!r} has {name} but no {b}")
                deltas[module.removeprefix(PREFIX) + ".weight"] = Delta(name, b, transposed)
                break
        else:
            if not name.endswith((".lora_B.weight", ".lora_embedding_B")):
                raise CheckpointError(f"adapter {adapter.ref!r}: tensor {name!r} is no LoRA A or B matrix, "
                                      "which is not implemented here")
    if len(deltas) * 2 != len(adapter.tensors):
        raise CheckpointError(f"adapter {adapter.ref!r}: some lora_B tensors have no lora_A")
    return deltas


def _check_shapes(model: AdaptedCheckpoint, name: str, delta: Delta) -> None:
    info = model.tensors.get(name)
    if info is None:
        raise CheckpointError(f"adapter {model.adapter.ref!r} changes {name!r}, "
                              f"which model {model.ref!r} does not have")
    a, b = model.adapter.tensors[delta.a].shape, model.adapter.tensors[delta.b].shape
    out = (a[1], b[0]) if delta.transposed else (b[0], a[1])
    if len(a) != 2 or len(b) != 2 or a[0] != b[1] or tuple(info.shape) != out:
        raise CheckpointError(f"adapter {model.adapter.ref!r}: A {tuple(a)} and B {tuple(b)} do not make "
                              f"{name!r}'s shape {tuple(info.shape)}")
