"""Merge methods: the registry (registry.py) and the methods it declares, one family per file.

Import `METHODS`, `Method` and `register` from here; importing this package registers every method.
Each family registers on import, and METHODS (so the UI) lists the methods in that order: linear,
the task-arithmetic family, SCE, RAM and RAM+, slerp and nuslerp, multislerp and karcher, model
stock, nearswap and arcee_fusion. Hence the unsorted imports below.
"""
# isort: off
from core.merge.methods import linear
from core.merge.methods import task_arithmetic
from core.merge.methods import sce
from core.merge.methods import ram
from core.merge.methods import spherical
from core.merge.methods import sphere_means
from core.merge.methods import model_stock
from core.merge.methods import selective
from core.merge.methods import passthrough
# isort: on
from core.merge.methods.registry import METHODS, Method, register

# the family modules, in registration order
FAMILIES = (linear, task_arithmetic, sce, ram, spherical, sphere_means, model_stock, selective, passthrough)

__all__ = ["FAMILIES", "METHODS", "Method", "register"]
