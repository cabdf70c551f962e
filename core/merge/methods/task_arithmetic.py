"""The task-arithmetic family, registered member by member: base + λ · mix(w_i · sparsify(x_i − base)).

Members differ only in their sparsifier (core/merge/methods/sparsify.py: which entries of each change
survive), whether the signs are elected first (TIES `consensus`) and two defaults; the formula itself
is core/merge/methods/task_vectors.py. A member's parameters follow from its sparsifier, and its
function (`TaskVectors`) accepts exactly those, so `register` checks every declaration.
"""
from __future__ import annotations

from core.merge.methods.linear import WEIGHT, normalize_param
from core.merge.methods.registry import register
from core.merge.methods.sparsify import BERNOULLI, MAGNITUDE, MAGPRUNE, OUTLIERS, Sparsifier
from core.merge.methods.task_vectors import TaskVectors
from core.merge.params import Param

DENSITY = Param(name="density", kind=float, default=1.0, per_model=True,
                help="fraction of this model's changes kept (1 = all)", low=0, high=1)
LAMBDA = Param(name="lambda", kind=float, default=1.0, per_model=False,
               help="scale of the merged change added to the base", ui_low=0, ui_high=2)
INT8_MASK = Param(name="int8_mask", kind=bool, default=False, per_model=False,
                  help="accepted for mergekit recipes; MergeDesk's masks are always compact")


def rescale_param(default: bool) -> Param:
    """`rescale`, on by default where the sparsifier drops at random (DARE, DELLA)."""
    return Param(name="rescale", kind=bool, default=default, per_model=False,
                 help="restore each sparsified change's L1 norm")


def family_params(sparsifier: Sparsifier | None, *, normalize: bool, rescale: bool) -> tuple[Param, ...]:
    """A member's declarations: the formula's, then density and rescale and its sparsifier's own."""
    formula = (WEIGHT, LAMBDA, normalize_param(normalize), INT8_MASK)
    return formula if sparsifier is None else (*formula, DENSITY, rescale_param(rescale), *sparsifier.params)


def _task_arithmetic_coefficients(params: dict) -> tuple[list[float], float]:
    """base + λ·Σ w_i(x_i − base)/d as a weighted sum: c_i = λ·w_i/d, c_base = 1 − Σ c_i.

    d is Σ w under normalize (1 where that sum vanishes, as in task_vector_blocks), else 1."""
    weight, lam = params["weight"], params["lambda"]
    total = sum(weight)
    divisor = total if params["normalize"] and abs(total) >= 1e-8 else 1.0
    models = [lam * w / divisor for w in weight]
    return models, 1.0 - sum(models)


def member(name: str, *, label: str, paper: str, sparsifier: Sparsifier | None = None, consensus: bool = False,
           normalize: bool = False, rescale: bool = False) -> None:
    """Register one member of the family; `normalize` and `rescale` are its parameters' defaults."""
    merge = TaskVectors(sparsifier, consensus)
    weighted_sum = sparsifier is None and not consensus  # plain task arithmetic: Σ c_i·x_i, elementwise
    register(name, label=label, paper=paper, params=family_params(sparsifier, normalize=normalize, rescale=rescale),
             base="required", random=sparsifier is not None and sparsifier.random, elementwise=weighted_sum,
             check=sparsifier.check if sparsifier is not None else None, stream=merge.stream, blockwise=merge.blockwise,
             coefficients=_task_arithmetic_coefficients if weighted_sum else None)(merge)


member("task_arithmetic", label="Task Arithmetic", paper="https://arxiv.org/abs/2212.04089")
member("ties", label="TIES", paper="https://arxiv.org/abs/2306.01708", sparsifier=MAGNITUDE, consensus=True,
       normalize=True)
member("dare_ties", label="DARE + TIES", paper="https://arxiv.org/abs/2311.03099", sparsifier=BERNOULLI,
       consensus=True, rescale=True)
member("dare_linear", label="DARE (linear)", paper="https://arxiv.org/abs/2311.03099", sparsifier=BERNOULLI,
       rescale=True)
member("breadcrumbs", label="Model Breadcrumbs", paper="https://arxiv.org/abs/2312.06795", sparsifier=OUTLIERS)
member("breadcrumbs_ties", label="Model Breadcrumbs + TIES", paper="https://arxiv.org/abs/2312.06795",
       sparsifier=OUTLIERS, consensus=True)
member("della", label="DELLA", paper="https://arxiv.org/abs/2406.11617", sparsifier=MAGPRUNE, consensus=True,
       normalize=True, rescale=True)
member("della_linear", label="DELLA (linear)", paper="https://arxiv.org/abs/2406.11617", sparsifier=MAGPRUNE,
       rescale=True)
