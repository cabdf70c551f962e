"""The demo kit: five small MiniLM models (build.py says which) trained on the packaged data (train.py),
to try merging on real models."""
