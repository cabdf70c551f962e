"""The models this process keeps loaded — rerankers and decoders in one memory budget — and who holds them.

    MODELS.get(key, owner, load)        # the cached model for `key`, else load() and keep it
    MODELS.loaded(owner, kind=Reranker)  # what `owner` holds, least recently used first
    MODELS.release(owner=owner)          # `owner` lets go; a model nobody holds is freed

Why one cache: the Playground's rerankers and the Generate tab's decoders share the machine's
memory, so they share one bound (CACHE_BYTES of weights, least recently used dropped first; a
single bigger model stays alone). Why owners: on a hosted app each visitor (a session id) sees
and unloads only what they loaded, and a model two visitors loaded is freed when neither holds
it. Sharing one loaded copy between owners is safe because callers resolve the reference (and
check a Hub repo's access with the caller's token) before they look here.

The lock is held only to look up and store, never while a model loads: a slow load must not
block the rest of the app. A per-key lock (KeyLoad) makes a second request for the same model wait
for the first load instead of loading it twice, also after a load that failed.
"""
from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from typing import Callable, TypeVar

import torch

CACHE_BYTES = 8 * 1000**3  # weights kept loaded, all owners and kinds together
Model = TypeVar("Model")  # anything with an `nbytes` attribute: its weights' size


class KeyLoad:
    """One key's load lock and how many callers are using it.

    The lock lives as long as anyone waits on it: dropped after the first load, a caller still
    waiting (its load failed, so it loads next) and a newcomer, who would make a new lock, could
    load the same model at once.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.waiting = 0


class LoadedModels:
    """An LRU cache of loaded models bounded by their bytes, each entry with the owners holding it."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._models: OrderedDict[tuple, object] = OrderedDict()
        self._holders: dict[tuple, set[str | None]] = {}  # key → owners that loaded it and have not let go
        self._lock = threading.Lock()  # guards the two dicts and _loading; never held while a model loads
        self._loading: dict[tuple, KeyLoad] = {}  # key → its load lock, while anyone asks for that key

    def get(self, key: tuple, owner: str | None, load: Callable[[], Model]) -> Model:
        """The model cached under `key` (now held by `owner` too), else `load()`'s, cached."""
        with self._lock:
            loading = self._loading.setdefault(key, KeyLoad())
            loading.waiting += 1
        try:
            with loading.lock:
                with self._lock:
                    if key in self._models:
                        self._models.move_to_end(key)
                        self._holders[key].add(owner)
                        return self._models[key]
                model = load()
                with self._lock:
                    self._models[key], self._holders[key] = model, {owner}
                    evicted = self._evict(keep=key)
                if evicted:
                    free_memory()
                return model
        finally:
            with self._lock:
                loading.waiting -= 1
                if not loading.waiting:
                    del self._loading[key]

    def loaded(self, owner: str | None = None, *, kind: type | None = None) -> list:
        """Models `owner` holds (every model when None), of type `kind` when given, least recently used first."""
        with self._lock:
            return [m for k, m in self._models.items()
                    if (owner is None or owner in self._holders[k]) and (kind is None or isinstance(m, kind))]

    def release(self, model: object | None = None, *, owner: str | None = None, kind: type | None = None) -> None:
        """Let go of `model` (every model of `kind`, or every model, when None) and free what nobody holds.

        owner=None drops the models for every owner; an owner lets go only of its own hold, so a
        model another owner still holds stays loaded.
        """
        with self._lock:
            for key in [k for k, m in self._models.items()
                        if (model is None or m is model) and (kind is None or isinstance(m, kind))]:
                self._holders[key] = set() if owner is None else self._holders[key] - {owner}
                if not self._holders[key]:
                    del self._models[key], self._holders[key]
        free_memory()

    def _evict(self, *, keep: tuple) -> bool:
        """Drop least recently used models (never `keep`) until the total fits; whether any went."""
        total, evicted = sum(m.nbytes for m in self._models.values()), False
        for old in [k for k in self._models if k != keep]:
            if total <= self.limit_bytes:
                break
            total -= self._models.pop(old).nbytes
            del self._holders[old]
            evicted = True
        return evicted


def free_memory() -> None:
    """Give back the memory of models no longer referenced (VRAM too); a model still in use stays."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


MODELS = LoadedModels(CACHE_BYTES)
