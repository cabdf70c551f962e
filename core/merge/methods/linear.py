"""linear: the weighted average of the models (model soups; LM-Cocktail's mix_models), and the
weight and normalize declarations every weighted method shares (task arithmetic's family, nuslerp).
"""
from __future__ import annotations

from core.merge.methods.registry import register
from core.merge.methods.task_vectors import column
from core.merge.params import Param

WEIGHT = Param(name="weight", kind=float, default=None, per_model=True,
               help="how much of this model goes into the merge", ui_low=-1, ui_high=2)


def normalize_param(default: bool) -> Param:
    """`normalize`, whose default differs by method (linear and TIES on, task arithmetic off)."""
    return Param(name="normalize", kind=bool, default=default, per_model=False, help="divide by the sum of the weights")


def weights_not_zero(params: dict) -> str | None:
    """Under normalize the weights are a divisor: their sum must not vanish (mergekit would write Inf;
    the task-arithmetic family divides by 1 there instead, as mergekit does)."""
    if params.get("normalize") and abs(sum(params["weight"])) < 1e-8:
        return f"weights {params['weight']} sum to 0 but normalize is on: change a weight or set normalize: false"
    return None


def _linear_coefficients(params: dict) -> tuple[list[float], None]:
    """linear as a weighted sum: c_i = w_i, or w_i / Σ w under normalize."""
    weight = params["weight"]
    total = sum(weight) if params["normalize"] else 1.0
    return [w / total for w in weight], None


@register("linear", label="Linear (weighted average)", paper="https://arxiv.org/abs/2203.05482",
          params=(WEIGHT, normalize_param(True)), base="unused", elementwise=True, check=weights_not_zero,
          coefficients=_linear_coefficients)
def linear(tensors, base, *, weight, normalize, generator=None):
    """Σ w_i·x_i, divided by Σ w_i when normalize (model soups; LM-Cocktail mix_models)."""
    merged = (tensors.mul_(column(weight, tensors))).sum(dim=0)
    return merged / sum(weight) if normalize else merged
