"""Time left in a long job, from the work done so far: one formula and one wording for every progress line.

    left = eta(12, 36, 30.0)      # 60.0: the remaining 24 steps at the average rate so far
    eta_text(left)                # '60 s left'

Used by the merge (core.merge.engine.Progress, in bytes written), the demo build (optimizer steps over
all its models), the Sweep (α's measured) and weights from data (models weighed). The rate is the
average so far, so work whose units differ in cost (a model's load, a merge's few large tensors) makes
the first figures rough; they settle as the job goes.
"""
from __future__ import annotations

import math


def eta(done: float, total: float, elapsed: float) -> float:
    """Seconds left if the rest goes at the average rate so far; inf until something is done.

    Example:
        >>> eta(12, 36, 30.0), eta(0, 36, 5.0), eta(36, 36, 90.0)
        (60.0, inf, 0.0)
    """
    if done <= 0 or elapsed <= 0:
        return math.inf
    return max(total - done, 0) * elapsed / done


def eta_text(seconds: float) -> str:
    """How a progress line words `eta`'s figure: seconds under two minutes, then minutes.

    Example:
        >>> eta_text(42.4), eta_text(610.0), eta_text(float("inf"))
        ('42 s left', '10 min left', '— left')
    """
    if not math.isfinite(seconds):
        return "— left"
    return f"{seconds:.0f} s left" if seconds < 120 else f"{seconds / 60:.0f} min left"
