"""The demo kit: two small MiniLM rerankers trained on the packaged data, to try merging on real models."""
