"""NaN/Inf bookkeeping for one output tensor of a merge: its inputs, and its merged output.

The engine (core.merge.engine) makes one `NonFinite` per output tensor, calls `check` on every input
block (the float32 stack it merges) and `check_output` on every merged block after its cast to
the output dtype, then reports `messages()` on that tensor's Progress event. With refuse=True the
first finding raises instead: a CheckpointError for a bad input, a RecipeError for an output the
recipe overflows (finite float16 inputs whose weighted sum passes 65504).
"""
from __future__ import annotations

import torch

from core.errors import CheckpointError, RecipeError


class NonFinite:
    """NaN/Inf counts per input of one output tensor, and in its output, added up over its blocks of rows."""

    def __init__(self, refuse: bool):
        self.refuse = refuse
        self.counts: dict[str, int] = {}  # model reference → non-finite values seen
        self.tensor = ""
        self.output = 0  # non-finite output values made from finite inputs (an overflow of the output dtype)
        self.output_dtype = ""

    def check(self, name: str, stack: torch.Tensor, models: list) -> None:
        """Count NaN/Inf in `stack` (n, *block), row i read from models[i] (Checkpoints); raise at once when refusing."""
        if torch.isfinite(stack.sum()):  # one cheap pass: any NaN/Inf (or an overflow) makes the sum non-finite
            return
        for checkpoint, block in zip(models, stack):
            count = int(block.numel() - torch.isfinite(block).sum())
            if count:
                self.tensor = name
                self.counts[checkpoint.ref] = self.counts.get(checkpoint.ref, 0) + count
                if self.refuse:
                    raise CheckpointError(f"{self.messages()[-1]}: merge refused (refuse_nonfinite is on); "
                                          "repair that model or leave it out")

    def check_output(self, name: str, block: torch.Tensor) -> None:
        """Count NaN/Inf in a merged block, already in the output dtype; raise at once when refusing.

        Only where every input was finite: otherwise the input's own finding already says why. The sum that
        looks for them adds up in float32 inside torch, and is returned as float32 only for float16, whose finite
        blocks may well sum past 65504, and float8, which torch cannot sum (a bfloat16 result takes a fifth of the
        time of a float32 one)."""
        wide_sum = torch.float32 if block.dtype == torch.float16 or block.dtype.itemsize == 1 else None
        if self.counts or torch.isfinite(block.sum(dtype=wide_sum)):
            return
        wide = block.to(torch.float32) if block.dtype.itemsize == 1 else block  # float8 has no isfinite
        count = int(block.numel() - torch.isfinite(wide).sum())
        if count:
            self.tensor, self.output_dtype = name, str(block.dtype).removeprefix("torch.")
            self.output += count
            if self.refuse:
                raise RecipeError(f"{self.messages()[-1]}; merge refused (refuse_nonfinite is on)")

    def messages(self) -> tuple[str, ...]:
        """One line per input: "MODEL: tensor NAME holds N NaN/Inf value(s)", and one for an overflowing output."""
        lines = tuple(f"{ref}: tensor {self.tensor!r} holds {count} NaN/Inf value(s)"
                      for ref, count in self.counts.items())
        if self.output:
            lines += (f"merged tensor {self.tensor!r} has {self.output} NaN/Inf value(s) in {self.output_dtype} "
                      f"from finite inputs (the merge overflows {self.output_dtype}): lower the weights or set "
                      "out_dtype: float32",)
        return lines
