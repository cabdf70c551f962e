"""Vocabulary alignment (tokenizer_source, the tokenizer: block, chat_template): merged rows against formulas written here.

The family (tests/vocab_models.py): a Llama base of 108 tokens whose embedding the factory pads to 120
rows, a chat fine-tune adding two special tokens, one whose tokenizer lacks the base's last 5 words,
and one whose embedding is padded to 128 rows. mergekit parity: tests/test_mergekit_vocab_parity.py.
"""
import json

import pytest
import torch
import transformers

from core.errors import CheckpointError, RecipeError
from core.merge.aligned import gather_rows
from core.merge.engine import merge
from core.merge.preview import plan_inputs
from core.merge.recipe import parse_recipe, recipe_from_dict, to_yaml
from tests.model_factory import read_tensors
from tests.vocab_models import build_vocab_family

EMBED, HEAD, LAYER = "model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.up_proj.weight"
CHAT = ["<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return build_vocab_family(tmp_path_factory.mktemp("vocab"), CHAT, TEMPLATE)


def vocab(folder) -> dict[str, int]:
    return transformers.AutoTokenizer.from_pretrained(folder).get_vocab()


def rows_of(folder, name=EMBED) -> dict[str, torch.Tensor]:
    """token -> its row in `folder` (rows past config vocab_size excluded)."""
    tensor = read_tensors(folder)[name]
    return {tok: tensor[i] for tok, i in vocab(folder).items() if i < tensor.shape[0]}


def ta(f, source, **extra):
    return {"merge_method": "task_arithmetic", "base_model": str(f["base"]), "dtype": "float32",
            "models": [{"model": str(f["chat"]), "parameters": {"weight": 0.7}},
                       {"model": str(f["small"]), "parameters": {"weight": 0.5}}],
            **({"tokenizer_source": source} if source else {}), **extra}


def test_without_a_tokenizer_source_differing_rows_are_refused_with_the_fix(family, tmp_path):
    with pytest.raises(CheckpointError, match=r"shape mismatch at .*\(their vocabularies differ: set tokenizer_source: "
                                              r"base or union"):
        merge(recipe_from_dict(ta(family, None)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", [EMBED, HEAD])
def test_base_vocabulary_a_model_lacking_a_token_adds_no_change(family, tmp_path, name):
    out = merge(recipe_from_dict(ta(family, "base")), tmp_path / "out")
    merged, base, chat, small = (rows_of(f, name) for f in (out, family["base"], family["chat"], family["small"]))
    assert list(vocab(out)) and vocab(out) == vocab(family["base"])
    assert read_tensors(out)[name].shape[0] == 108 == json.loads((out / "config.json").read_text())["vocab_size"]
    for tok, row in merged.items():
        delta = 0.7 * (chat[tok] - base[tok]) + (0.5 * (small[tok] - base[tok]) if tok in small else 0)
        torch.testing.assert_close(row, base[tok] + delta, atol=1e-6, rtol=1e-5, msg=tok)
    layer = [read_tensors(f)[LAYER] for f in (family["base"], family["chat"], family["small"])]
    torch.testing.assert_close(read_tensors(out)[LAYER], layer[0] + 0.7 * (layer[1] - layer[0]) + 0.5 * (layer[2] - layer[0]))


def test_union_without_a_base_fills_a_missing_token_from_the_models_that_have_it(family, tmp_path):
    spec = {"merge_method": "linear", "tokenizer_source": "union", "dtype": "float32",
            "models": [{"model": str(family[k]), "parameters": {"weight": w}} for k, w in
                       (("chat", 0.6), ("small", 0.3), ("pad", 0.1))]}
    out = merge(recipe_from_dict(spec), tmp_path / "out")
    merged, chat, small, pad = (rows_of(f) for f in (out, family["chat"], family["small"], family["pad"]))
    assert set(merged) == set(chat) | set(pad) and len(merged) == 110
    for tok in CHAT:  # only the chat model has it: every model's row is the chat model's
        torch.testing.assert_close(merged[tok], chat[tok], atol=1e-6, rtol=1e-5)
    dropped = set(chat) - set(small) - set(CHAT)
    assert len(dropped) == 5
    for tok in dropped:  # the small model lacks it: its row is the mean of the two that have it
        mean = (chat[tok] + pad[tok]) / 2
        torch.testing.assert_close(merged[tok], 0.6 * chat[tok] + 0.3 * mean + 0.1 * pad[tok], atol=1e-6, rtol=1e-5)


def test_tokens_block_forces_zeroes_and_pads(family, tmp_path):
    base_rows = rows_of(family["base"])
    spec = ta(family, None, tokenizer={"source": "union", "pad_to_multiple_of": 64, "tokens": {
        "<|im_end|>": {"source": {"kind": "model_token", "model": str(family["base"]), "token": "</s>"}, "force": True},
        "<extra>": {"source": {"kind": "zero"}}}})
    out = merge(recipe_from_dict(spec), tmp_path / "out")
    merged, tokens = read_tensors(out)[EMBED], vocab(out)
    assert merged.shape[0] == 128 and len(tokens) == 111
    torch.testing.assert_close(merged[tokens["<|im_end|>"]], base_rows["</s>"])  # every model's row is the base's </s>
    assert torch.equal(merged[tokens["<extra>"]], torch.zeros(32))
    torch.testing.assert_close(merged[tokens["<|im_start|>"]], rows_of(family["chat"])["<|im_start|>"])  # only chat has it
    # each model's padding rows are its mean real row; task arithmetic is linear, so the merged ones are the mean too
    padding = merged[111:]
    torch.testing.assert_close(padding, merged[:111].mean(0).expand_as(padding), atol=1e-6, rtol=1e-5)


def test_chat_template_auto_takes_the_inputs_template(family, tmp_path):
    out = merge(recipe_from_dict(ta(family, "base", chat_template="auto")), tmp_path / "out")
    assert transformers.AutoTokenizer.from_pretrained(out).chat_template == TEMPLATE


def test_gather_reads_runs_of_rows_not_the_whole_tensor(family):
    from core.io.checkpoint import Checkpoint

    with Checkpoint.open(str(family["base"])) as checkpoint:
        reads = []
        original = checkpoint.read
        checkpoint.read = lambda name, **kw: reads.append(kw["rows"]) or original(name, **kw)
        got = gather_rows(checkpoint, EMBED, torch.tensor([5, 6, 7, 2, 6]))
        assert torch.equal(got, original(EMBED)[[5, 6, 7, 2, 6]])  # compared while the file is mapped
    assert reads == [slice(2, 3), slice(5, 8)]


def test_the_plan_shapes_token_rows_by_the_output_vocabulary(family):
    plan = plan_inputs(recipe_from_dict(ta(family, "union")))
    jobs = {job.name: job for job in plan.jobs}
    assert jobs[EMBED].shape == jobs[HEAD].shape == (110, 32)
    assert plan.bytes_written == sum(job.nbytes for job in plan.jobs)
    assert plan.vocabulary.summary() == "union: 110 tokens"
    padded_plan = plan_inputs(recipe_from_dict(ta(family, None, tokenizer={"pad_to_multiple_of": 64})))
    assert padded_plan.vocabulary.summary() == "union: 110 tokens, padded to 128 rows"


def test_the_vocabulary_settings_round_trip_through_yaml(family):
    recipe = recipe_from_dict(ta(family, None, chat_template=TEMPLATE, tokenizer={
        "source": str(family["chat"]), "pad_to_multiple_of": 8,
        "tokens": {"<a>": {"source": {"kind": "zero"}}, "<b>": {"source": str(family["chat"]), "force": True},
                   "<c>": {"source": {"kind": "model_token", "model": str(family["base"]), "token_id": 3}}}}))
    assert parse_recipe(to_yaml(recipe)) == recipe


@pytest.mark.parametrize("extra, message", [
    ({"tokenizer_source": "base", "tokenizer": {"source": "base"}}, "either tokenizer_source or a tokenizer: block"),
    ({"tokenizer": {"source": "base", "pad": 8}}, r"unknown key\(s\) \['pad'\] in tokenizer"),
    ({"tokenizer": {"pad_to_multiple_of": 0}}, "pad_to_multiple_of must be a whole number of at least 1"),
    ({"tokenizer": {"tokens": {"<a>": {"source": "./elsewhere"}}}}, "takes a row from './elsewhere', which the recipe"),
    ({"tokenizer": {"tokens": {"<a>": {"source": {"kind": "model_token", "model": "m"}}}}}, "either token or token_id"),
    ({"tokenizer": {"tokens": {"<a>": {"source": {"kind": "one"}}}}}, r"source must be a model reference, \{kind: zero\}"),
    ({"tokenizer": {"tokens": {"<a>": {"force": "yes"}}}}, "force must be true or false"),
    ({"chat_template": "chatml"}, "chat_template: chatml names one of mergekit's packaged templates"),
    ({"chat_template": "hello"}, "neither auto nor a Jinja template"),
])
def test_bad_vocabulary_settings_are_refused_in_one_line(family, extra, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(ta(family, None, **extra))


def test_a_token_entry_without_a_source_that_is_needed_is_refused_before_writing(family, tmp_path):
    spec = ta(family, None, tokenizer={"source": "base", "tokens": {"<new>": {"force": False}}})
    with pytest.raises(RecipeError, match=r"tokenizer.tokens\['<new>'\] has no source, and .* lacks that token"):
        merge(recipe_from_dict(spec), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_stage_named_as_the_tokenizer_source_realigns_to_its_output(family, tmp_path):
    """Multi-stage: `tokenizer: {source: mid}` reads the stage's output, planned before that output exists."""
    from core.merge.stages import merge_stages, parse_stages

    text = f"""name: mid
merge_method: linear
dtype: float32
models: [{{model: {family['base']}, parameters: {{weight: 0.5}}}}, {{model: {family['chat']}, parameters: {{weight: 0.5}}}}]
tokenizer_source: union
---
merge_method: task_arithmetic
dtype: float32
base_model: {family['base']}
models: [{{model: mid, parameters: {{weight: 1.0}}}}]
tokenizer: {{source: mid}}
"""
    list(merge_stages(parse_stages(text, tmp_path / "final")))
    mid = tmp_path / "final-stages" / "mid"
    final = read_tensors(tmp_path / "final")[EMBED]
    assert vocab(tmp_path / "final") == vocab(mid) and final.shape[0] == 110
    torch.testing.assert_close(final, read_tensors(mid)[EMBED], atol=1e-6, rtol=1e-5)  # base + 1·(mid − base)


def test_a_realigned_merge_larger_than_ram_gives_the_same_bytes(family, tmp_path, monkeypatch):
    """Out of core (inputs larger than RAM) the engine releases each merged block of an input's file pages; a
    realigned block gathers rows from all over its sources instead, so those are released whole after the job."""
    import core.merge.engine as engine
    import core.merge.plan as plan

    monkeypatch.setattr(plan, "CHUNK_ELEMENTS", 1024)  # these tiny tensors in blocks of rows, as real ones are
    merge(recipe_from_dict(ta(family, "union")), tmp_path / "in-ram")
    [embed] = [job for job in plan_inputs(recipe_from_dict(ta(family, "union"))).jobs if job.name == EMBED]
    assert embed.rows_per_chunk is not None and embed.rows_per_chunk < embed.shape[0]  # read in blocks

    class LittleRam:  # the engine's view only: 1 byte available, so the inputs do not fit
        @staticmethod
        def virtual_memory():
            return type("Memory", (), {"available": 1})

    monkeypatch.setattr(engine, "psutil", LittleRam)
    merge(recipe_from_dict(ta(family, "union")), tmp_path / "out-of-core")
    files = [(tmp_path / out / "model.safetensors").read_bytes() for out in ("in-ram", "out-of-core")]
    assert files[0] == files[1]
