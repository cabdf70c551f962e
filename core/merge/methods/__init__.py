"""Merge methods: the registry (registry.py) and the methods it declares.

Import `METHODS` and `Method` from here; importing this package registers every method.
"""
from core.merge.methods.registry import METHODS, Method, register

__all__ = ["METHODS", "Method", "register"]
