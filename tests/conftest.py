"""Shared pytest setup: offline Hugging Face, the "slow" marker, and tiny model families.

Under CI=true a test skipped for a missing reference tool fails (tests/reference_skips.py).

Each family fixture builds its checkpoints once per session (see tests/model_factory.py)
and returns their folders, base model first.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported anywhere

import pytest
import torch

from tests.model_factory import build_family, build_minilm_cross_encoder

pytest_plugins = ["tests.reference_skips"]


def pytest_configure(config):
    """Register the markers this suite uses, so --strict-markers accepts them."""
    config.addinivalue_line("markers", "slow: takes seconds rather than milliseconds")


def _family(factory, kind, name, **options):
    """Build a three-model family of `kind` in its own session temp folder."""
    return build_family(factory.mktemp(name), kind, n_models=3, **options)


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory):
    """Llama causal LM with an untied lm_head, float32, one safetensors file each."""
    return _family(tmp_path_factory, "llama", "llama")


@pytest.fixture(scope="session")
def qwen2_family(tmp_path_factory):
    """Qwen2 causal LM with tied embeddings: the checkpoints hold no lm_head.weight."""
    return _family(tmp_path_factory, "qwen2", "qwen2")


@pytest.fixture(scope="session")
def bert_st_family(tmp_path_factory):
    """BERT saved as sentence-transformers folders (mean pooling, normalize)."""
    return _family(tmp_path_factory, "bert-st", "bert_st")


@pytest.fixture(scope="session")
def bert_cls_family(tmp_path_factory):
    """BertForSequenceClassification with a single output (a cross-encoder's shape)."""
    return _family(tmp_path_factory, "bert-cls", "bert_cls")


@pytest.fixture(scope="session")
def xlmr_cls_family(tmp_path_factory):
    """XLMRobertaForSequenceClassification with a single output."""
    return _family(tmp_path_factory, "xlmr-cls", "xlmr_cls")


@pytest.fixture(scope="session")
def llama_bf16_family(tmp_path_factory):
    """The Llama family stored in bfloat16."""
    return _family(tmp_path_factory, "llama", "llama_bf16", dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def llama_sharded_family(tmp_path_factory):
    """The float32 Llama family split into 20 KB shards (7 files) with an index."""
    return _family(tmp_path_factory, "llama", "llama_sharded", max_shard_size="20KB")


@pytest.fixture(scope="session")
def minilm_cross_encoder(tmp_path_factory):
    """The packaged all-MiniLM-L6-v2 encoder under a seeded one-logit classification head."""
    return build_minilm_cross_encoder(tmp_path_factory.mktemp("minilm_ce"))
