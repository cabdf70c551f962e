"""Sizes and dtype names as people read and write them: each written once, for every part of MergeDesk.

Sizes use decimal units throughout (1 GB = 10⁹ bytes), as transformers' max_shard_size and disk vendors
do; `human` is the one format for every byte count MergeDesk prints (CLI, errors, UI, gauge).
DTYPES is the one list of dtype names a recipe, the reranker and the UI offer: it lives here, beside the
sizes, because both are plain facts about numbers in memory that core and ui read without pulling in
the merge engine or the reranker.
"""
from __future__ import annotations

import torch

from core.errors import RecipeError

KB, MB, GB = 10**3, 10**6, 10**9
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}  # name → torch dtype


def parse_size(text: str) -> int:
    """'500MB', '2GB', '1.5G', '1000' → bytes (decimal units, as transformers' max_shard_size)."""
    units = {"KB": KB, "MB": MB, "GB": GB, "TB": 10**12, "K": KB, "M": MB, "G": GB, "B": 1}
    cleaned = str(text).strip().upper()
    for suffix in sorted(units, key=len, reverse=True):
        if cleaned.endswith(suffix):
            number, factor = cleaned[: -len(suffix)], units[suffix]
            break
    else:
        number, factor = cleaned, 1
    try:
        value = int(float(number) * factor)
    except (ValueError, OverflowError):  # OverflowError: "inf", "1e400"
        raise RecipeError(f"size {text!r} is not understood: write a finite size, e.g. 500MB or 2GB") from None
    if value <= 0:
        raise RecipeError(f"size {text!r} must be positive")
    return value


def human(nbytes: int) -> str:
    """Bytes in the largest decimal unit they reach, to three significant digits (negative: a drop).

    Example:
        >>> human(150_000_000), human(1_234_567_890), human(2_000_000), human(-186_000_000), human(512)
        ('150 MB', '1.23 GB', '2.00 MB', '-186 MB', '512 B')
    """
    for unit, factor in (("GB", GB), ("MB", MB), ("KB", KB)):
        if abs(nbytes) >= factor:
            value = nbytes / factor
            decimals = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
            return f"{value:.{decimals}f} {unit}"
    return f"{nbytes} B"
