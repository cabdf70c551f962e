"""MergeDesk's engine: merge checkpoints (recipe → plan → stream) and, later, score rerankers.

Usable as a library (`core.engine.merge`) and as a CLI (`python -m core …`). Never imports
gradio: the UI in ui/ drives this package, not the other way round.
"""
