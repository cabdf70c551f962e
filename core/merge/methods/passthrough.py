"""passthrough: one model's tensors copied through, each optionally multiplied by `scale`.

On its own it copies a model; its use is in `slices:` recipes (core.merge.slices), where each
output slice takes its layers from one model: a frankenmerge stacks layer ranges of several
models, and `scale` (often given per tensor with filters, e.g. 0.5 on o_proj/down_proj of
repeated layers) damps what the stacked layers add to the residual stream. mergekit 0.1.5's
semantics: scale unset means the tensor unchanged, which is what the default 1 gives.
"""
from __future__ import annotations

from core.merge.methods.registry import register
from core.merge.params import Param

SCALE = Param(name="scale", kind=float, default=1.0, per_model=True,
              help="multiply the tensor by this (1: copy it unchanged)", low=-10, high=10, ui_low=0, ui_high=2)


def _passthrough_coefficients(params: dict) -> tuple[list[float], None]:
    """passthrough as a weighted sum of its one input: c = scale."""
    return [params["scale"][0]], None


@register("passthrough", label="Passthrough (copy, optionally scaled)",
          paper="https://github.com/arcee-ai/mergekit#passthrough", params=(SCALE,), base="unused",
          min_inputs=1, max_inputs=1, elementwise=True, coefficients=_passthrough_coefficients)
def passthrough(tensors, base, *, scale, generator=None):
    """scale·x for the one input x."""
    return tensors[0].mul_(scale[0])
