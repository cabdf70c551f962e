"""Rerankers: loading and caching models, encoding batches, pooling, comparing two models, ranking metrics."""
