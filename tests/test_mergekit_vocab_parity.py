"""Inputs whose vocabularies differ give mergekit's tensors: both tools run the same realigning recipe.

mergekit 0.1.5 (`$MERGEKIT_YAML`, see tests/test_mergekit_parity.py; without it these tests skip
locally and fail under CI=true) realigns token-indexed rows through each model's tokenizer. The family:
a Llama base (108 tokens, embedding padded to 120 rows by the factory), a chat fine-tune that adds two
special tokens, one with a smaller consistent tokenizer (5 words fewer), and one whose embedding is
padded to a multiple of 64. Rows are compared token by token (mergekit orders union tokens added by
several models by an unordered set, MergeDesk by the recipe), padding rows by position, every other
tensor as it is; the vocabulary, config vocab_size and chat template must agree too (the template only
with a base_model: without one mergekit starts the output tokenizer from an arbitrary model's, MergeDesk
from the first model's). Under dtype: bfloat16 (MergeDesk computes in float32 and rounds once, mergekit
in bf16, averaged rows included) every tensor stays within one bf16 ulp of its largest value.
"""
import json
from pathlib import Path

import pytest
import torch
import transformers

from core.merge.engine import merge
from core.merge.recipe import recipe_from_dict
from tests.test_mergekit_parity import BF16_ULP, MERGEKIT, run_mergekit, tensors
from tests.vocab_models import build_vocab_family

pytestmark = pytest.mark.skipif(not Path(MERGEKIT).is_file(),
                                reason=f"mergekit not found at MERGEKIT_YAML={MERGEKIT!r} nor on PATH")
CHAT = ["<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


@pytest.fixture(scope="module")
def vocab_family(tmp_path_factory):
    return build_vocab_family(tmp_path_factory.mktemp("vocab"), CHAT, TEMPLATE)


def cases(base, chat, small, pad) -> dict[str, dict]:
    w = lambda *rows: [{"model": str(m), "parameters": {"weight": x}} for m, x in rows]
    ta = {"merge_method": "task_arithmetic", "base_model": str(base), "models": w((chat, 0.7), (small, 0.5)),
          "dtype": "float32"}
    return {
        "base": {**ta, "tokenizer_source": "base"},
        "union": {**ta, "tokenizer_source": "union"},
        "model": {**ta, "tokenizer_source": str(chat)},
        "union-padded-input": {**ta, "models": w((chat, 0.7), (pad, 0.5)), "tokenizer_source": "union"},
        "linear-union": {"merge_method": "linear", "models": w((chat, 0.7), (small, 0.5), (pad, 0.2)),
                         "tokenizer_source": "union", "dtype": "float32"},
        "linear-base-union": {"merge_method": "linear", "base_model": str(base), "models": w((chat, 0.6), (small, 0.3)),
                              "parameters": {"weight": 0.1}, "tokenizer_source": "union", "dtype": "float32"},
        "slerp-union": {"merge_method": "slerp", "base_model": str(base),
                        "models": [{"model": str(base)}, {"model": str(chat)}], "parameters": {"t": 0.4},
                        "tokenizer_source": "union", "dtype": "float32"},
        "ties-block": {"merge_method": "ties", "base_model": str(base), "dtype": "float32",
                       "models": [{"model": str(chat), "parameters": {"weight": 0.7, "density": 0.5}},
                                  {"model": str(pad), "parameters": {"weight": 0.5, "density": 0.5}}],
                       "tokenizer": {"source": "union", "pad_to_multiple_of": 64, "tokens": {
                           "<|im_end|>": {"source": {"kind": "model_token", "model": str(base), "token": "</s>"},
                                          "force": True},
                           "<|im_start|>": {"source": str(chat)},
                           "<extra>": {"source": {"kind": "zero"}}}}},
        "block-base-chat-template": {**ta, "tokenizer": {"source": "base"}, "chat_template": "auto"},
        "jinja-template": {**ta, "tokenizer_source": "union", "chat_template": TEMPLATE.replace("m['role']", "m.role")},
        "bf16-union": {**ta, "tokenizer_source": "union", "dtype": "bfloat16"},
        "bf16-linear-union": {"merge_method": "linear", "models": w((chat, 0.7), (small, 0.5), (pad, 0.2)),
                              "tokenizer_source": "union", "dtype": "bfloat16"},
        "slices-union": {"merge_method": "passthrough", "tokenizer_source": "union", "dtype": "float32",
                         "slices": [{"sources": [{"model": str(chat), "layer_range": [0, 1]}]},
                                    {"sources": [{"model": str(small), "layer_range": [1, 2]}]}]},
    }


CASES = list(cases("b", "c", "s", "p"))


@pytest.fixture(scope="module")
def mergekit_vocab(tmp_path_factory, vocab_family):
    """{case: (recipe, mergekit's output folder)}, merged by one mergekit process."""
    return run_mergekit(tmp_path_factory.mktemp("mergekit-vocab"), cases(*vocab_family.values()))


def by_token(tensor: torch.Tensor, vocab: dict[str, int], order: list[str]) -> torch.Tensor:
    """Rows in `order`'s token order, then the padding rows past the vocabulary as they are."""
    return torch.cat([tensor[torch.tensor([vocab[tok] for tok in order])], tensor[len(vocab):]])


@pytest.mark.parametrize("case", CASES)
def test_realigned_vocabularies_match_mergekit(case, mergekit_vocab, tmp_path):
    spec, theirs_dir = mergekit_vocab[case]
    ours_dir = merge(recipe_from_dict(spec), tmp_path / "ours")
    mine, theirs = tensors(ours_dir), tensors(theirs_dir)
    mine_tok, theirs_tok = (transformers.AutoTokenizer.from_pretrained(d) for d in (ours_dir, theirs_dir))
    mine_vocab, theirs_vocab = mine_tok.get_vocab(), theirs_tok.get_vocab()
    assert mine_vocab.keys() == theirs_vocab.keys()
    sizes = [json.loads((d / "config.json").read_text())["vocab_size"] for d in (ours_dir, theirs_dir)]
    assert sizes[0] == sizes[1] == mine["model.embed_tokens.weight"].shape[0]
    if "base_model" in spec:  # without one, mergekit starts the tokenizer from whichever model its set lists first
        assert mine_tok.chat_template == theirs_tok.chat_template
    assert set(mine) == set(theirs)
    order = sorted(mine_vocab, key=mine_vocab.get)
    for name, tensor in theirs.items():
        ours = mine[name]
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            ours, tensor = by_token(ours, mine_vocab, order), by_token(tensor, theirs_vocab, order)
        assert ours.dtype == tensor.dtype, name
        if spec["dtype"] == "bfloat16":  # float32 math rounded once vs mergekit's bf16 math (measured: 1 ulp at most)
            ulp = float(torch.exp2(torch.floor(torch.log2(tensor.double().abs().max())))) * BF16_ULP
            assert float((ours.double() - tensor.double()).abs().max()) <= ulp, f"{case}: {name}"
            continue
        torch.testing.assert_close(ours, tensor, atol=2e-6, rtol=1e-5, msg=f"{case}: {name}")
