"""Sizes as people read and write them: one format for every byte count MergeDesk prints.

Decimal units throughout (1 GB = 10⁹ bytes), as transformers' max_shard_size and disk vendors use.
"""
from __future__ import annotations

from core.errors import RecipeError


def parse_size(text: str) -> int:
    """'500MB', '2GB', '1.5G', '1000' → bytes (decimal units, as transformers' max_shard_size)."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "K": 10**3, "M": 10**6, "G": 10**9, "B": 1}
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
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= factor:
            return f"{nbytes / factor:.2f} {unit}"
    return f"{nbytes} B"
