"""MergeDesk's engine: merge checkpoints (recipe → plan → stream), score and compare rerankers.

Usable as a library (`core.merge.engine.merge`, `core.rerank.model.load_reranker`) and as a CLI
(`python -m core …`). Never imports gradio: the UI in ui/ drives this package, not the other way
round. docs/ARCHITECTURE.md maps the packages.
"""
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"  # example recipes, query sets, demo data, css
