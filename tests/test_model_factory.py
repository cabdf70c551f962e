"""The generated test models are real checkpoints: they load, run, and differ as intended."""
import json

import pytest
import torch
import transformers
from safetensors import safe_open

from tests.model_factory import SENTENCE, build_family, read_tensors

FAMILIES = [
    ("llama_family", "AutoModelForCausalLM"), ("qwen2_family", "AutoModelForCausalLM"),
    ("bert_st_family", "AutoModel"), ("bert_cls_family", "AutoModelForSequenceClassification"),
    ("xlmr_cls_family", "AutoModelForSequenceClassification"),
    ("llama_bf16_family", "AutoModelForCausalLM"), ("llama_sharded_family", "AutoModelForCausalLM")]


def forward(folder, auto_class):
    """Load a folder with its Auto class and tokenizer and run one sentence through it."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = getattr(transformers, auto_class).from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**tokenizer(SENTENCE, return_tensors="pt")), tokenizer, model


@pytest.mark.parametrize("family_name,auto_class", FAMILIES)
def test_every_model_loads_with_its_auto_class_and_runs(family_name, auto_class, request):
    for folder in request.getfixturevalue(family_name):
        out, tokenizer, model = forward(folder, auto_class)
        assert tokenizer.unk_token_id not in tokenizer(SENTENCE)["input_ids"]
        assert len(tokenizer) <= model.config.vocab_size
        result = out.last_hidden_state if auto_class == "AutoModel" else out.logits
        assert torch.isfinite(result.float()).all()
        if auto_class == "AutoModelForCausalLM":
            assert result.shape[-1] == model.config.vocab_size
        elif auto_class == "AutoModelForSequenceClassification":
            assert result.shape == (1, 1)


def test_sentence_transformers_folders_load_and_encode_unit_vectors(bert_st_family):
    from sentence_transformers import SentenceTransformer

    modules = json.loads((bert_st_family[0] / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    assert json.loads((bert_st_family[0] / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    encoded = [SentenceTransformer(str(f), device="cpu").encode([SENTENCE, "hello world"]) for f in bert_st_family]
    for vectors in encoded:
        assert vectors.shape == (2, 32)
        assert torch.allclose(torch.linalg.norm(torch.from_numpy(vectors), dim=1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(torch.from_numpy(encoded[0]), torch.from_numpy(encoded[1]))


@pytest.mark.parametrize("family_name", ["llama_family", "qwen2_family", "bert_st_family",
                                         "bert_cls_family", "xlmr_cls_family", "llama_sharded_family"])
def test_fine_tunes_are_the_base_plus_noise_sized_shifts(family_name, request):
    base, *tunes = [read_tensors(f) for f in request.getfixturevalue(family_name)]
    assert base and all(t.is_floating_point() for t in base.values())
    for tune in tunes:
        assert {n: t.shape for n, t in tune.items()} == {n: t.shape for n, t in base.items()}
        shift = torch.cat([(tune[n] - base[n]).flatten() for n in base])
        assert 0.009 < shift.std().item() < 0.011 and abs(shift.mean().item()) < 1e-3
    assert not torch.equal(tunes[0][next(iter(base))], tunes[1][next(iter(base))])


def test_dtype_reaches_the_files_and_the_config(llama_bf16_family, llama_family):
    for family, dtype, name in [(llama_bf16_family, torch.bfloat16, "bfloat16"), (llama_family, torch.float32, "float32")]:
        assert {t.dtype for t in read_tensors(family[1]).values()} == {dtype}
        assert json.loads((family[1] / "config.json").read_text())["dtype"] == name
    base16, base32 = read_tensors(llama_bf16_family[0]), read_tensors(llama_family[0])
    assert all(torch.equal(base16[n], base32[n].to(torch.bfloat16)) for n in base32)


def test_tied_qwen2_has_no_lm_head_and_llama_has_one(qwen2_family, llama_family):
    assert "lm_head.weight" not in read_tensors(qwen2_family[0])
    assert "lm_head.weight" in read_tensors(llama_family[0])


def test_sharded_family_has_an_index_covering_three_or_more_shards(llama_sharded_family, llama_family):
    for folder in llama_sharded_family:
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        shards = sorted(folder.glob("model-*-of-*.safetensors"))
        assert len(shards) >= 3 and not (folder / "model.safetensors").exists()
        assert sorted(set(index["weight_map"].values())) == [s.name for s in shards]
        for shard in shards:
            with safe_open(shard, "pt") as f:
                assert all(index["weight_map"][name] == shard.name for name in f.keys())
        tensors = read_tensors(folder)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    whole, sharded = read_tensors(llama_family[2]), read_tensors(llama_sharded_family[2])
    assert whole.keys() == sharded.keys() and all(torch.equal(whole[n], sharded[n]) for n in whole)


def test_bin_format_holds_the_same_tensors_and_loads(tmp_path, qwen2_family):
    folders = build_family(tmp_path, "qwen2", n_models=2, weights_format="bin")
    assert not list(folders[1].glob("*.safetensors"))
    got, want = read_tensors(folders[1]), read_tensors(qwen2_family[1])
    assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want)
    forward(folders[1], "AutoModelForCausalLM")


def test_same_arguments_give_identical_bytes_and_another_seed_does_not(tmp_path):
    first = build_family(tmp_path / "a", "xlmr-cls", n_models=2, dtype=torch.float16)
    again = build_family(tmp_path / "b", "xlmr-cls", n_models=2, dtype=torch.float16)
    other = build_family(tmp_path / "c", "xlmr-cls", n_models=2, dtype=torch.float16, seed=1)
    for a, b in zip(first, again):
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (first[0] / "model.safetensors").read_bytes() != (other[0] / "model.safetensors").read_bytes()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown kind"):
        build_family(tmp_path, "gpt2")
    with pytest.raises(ValueError, match="sharding"):
        build_family(tmp_path, "llama", weights_format="bin", max_shard_size="20KB")
