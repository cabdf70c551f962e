"""What one generation may do, and how big one job may be (local and hosted).

    settings = GenerationSettings(max_new_tokens=64, temperature=0.7, top_p=0.9, seed=1).checked(LOCAL)

Both models of a comparison get the same checked settings. The hosted bounds keep one visitor
from holding the shared heavy lane for long.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import GenerationError

MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range


@dataclass(frozen=True)
class Limits:
    """The largest job one request may ask for."""

    max_new_tokens: int  # tokens one model may add to one prompt
    max_texts: int  # texts one likelihood run scores (each model)
    max_chars: int  # characters of a prompt, and of all likelihood texts together


LOCAL = Limits(max_new_tokens=2048, max_texts=5000, max_chars=2_000_000)
HOSTED = Limits(max_new_tokens=256, max_texts=200, max_chars=100_000)


@dataclass(frozen=True)
class GenerationSettings:
    """How both models generate: greedy when temperature is 0, else seeded sampling."""

    max_new_tokens: int = 64  # tokens to add at most (generation also stops at the end-of-text token)
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 divides the logits before sampling, ≤ 5
    top_p: float = 1.0  # nucleus sampling: keep the fewest tokens whose probability sums to ≥ top_p; (0, 1]
    seed: int = 0  # sampling draws from a torch.Generator seeded with this; 0 … 2**63 - 1

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def checked(self, limits: Limits) -> "GenerationSettings":
        """These settings with whole numbers made int, or a GenerationError naming the bad field.

        Example:
            >>> GenerationSettings(max_new_tokens=1000).checked(HOSTED)
            GenerationError: max_new_tokens is 1000; it must be 1 to 256 here: ask for fewer new tokens
        """
        tokens, seed = _whole("max_new_tokens", self.max_new_tokens), _whole("seed", self.seed)
        if not 1 <= tokens <= limits.max_new_tokens:
            raise GenerationError(f"max_new_tokens is {tokens}; it must be 1 to {limits.max_new_tokens} here: "
                                  "ask for fewer new tokens")
        if not 0 <= seed <= MAX_SEED:
            raise GenerationError(f"seed is {seed}; use a whole number from 0 to {MAX_SEED}")
        temperature, top_p = _number("temperature", self.temperature), _number("top_p", self.top_p)
        if not 0 <= temperature <= 5:
            raise GenerationError(f"temperature is {temperature}; use 0 (greedy) up to 5")
        if not 0 < top_p <= 1:
            raise GenerationError(f"top_p is {top_p}; use a value above 0 and at most 1 (1 keeps every token)")
        return GenerationSettings(tokens, temperature, top_p, seed)


def _whole(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value):
        raise GenerationError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GenerationError(f"{name} must be a number, got {value!r}")
    return float(value)
