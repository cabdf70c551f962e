"""core.rerank.model against the libraries users compare us with, on real and tiny models.

- bi-encoder: the packaged all-MiniLM-L6-v2 against sentence-transformers' encode + cos_sim;
- cross-encoder: MiniLM with a seeded head, and a tiny XLM-R, against FlagReranker;
- LLM reranker: a tiny Llama against FlagLLMReranker and against one-pair-at-a-time forwards.
"""
import pytest
import torch

from core.errors import RerankError
from core.rerank.encode import Encoded, run_batches
from core.rerank.model import detect_kind, load_reranker, loaded_rerankers, unload
from tests.model_factory import minilm_folder

QUERY = "how do I merge two fine-tuned language models?"
DOCS = [
    "Model merging averages the weights of checkpoints fine-tuned from the same base model.",
    "Bananas are rich in potassium and make a good snack before running.",
    "TIES trims small parameter changes, elects a sign per parameter and averages the agreeing task vectors. " * 40,
    "naïve café résumé — Unicode passages must tokenize the same way in both implementations.",
]
LONG_QUERY = "which merge method keeps the most general knowledge " * 60  # far beyond 3/4 of max_length


def test_kinds_are_detected_from_config(minilm_cross_encoder, llama_family, bert_st_family):
    assert detect_kind(minilm_cross_encoder) == "cross-encoder"
    assert detect_kind(llama_family[0]) == "llm"
    assert detect_kind(bert_st_family[0]) == "bi-encoder"
    assert detect_kind(minilm_folder()) == "bi-encoder"


def test_bi_encoder_equals_sentence_transformers_cosine():
    from sentence_transformers import SentenceTransformer, util

    reranker = load_reranker(str(minilm_folder()))
    assert reranker.encoder.modes == ("mean",) and reranker.max_length == 256  # read from the ST files
    ours = reranker.score(QUERY, DOCS)
    model = SentenceTransformer(str(minilm_folder()), device="cpu")
    embeddings = model.encode([QUERY] + DOCS, convert_to_tensor=True)
    reference = util.cos_sim(embeddings[:1], embeddings[1:])[0].tolist()
    assert ours == pytest.approx(reference, abs=1e-5)
    assert ours[0] > ours[1]  # a real model: the merging passage beats the banana one


def test_cross_encoder_equals_flag_reranker(minilm_cross_encoder):
    flag = pytest.importorskip("FlagEmbedding")
    pairs = [(QUERY, d) for d in DOCS] + [(LONG_QUERY, d) for d in DOCS]
    for max_length in (512, 64):
        ours = load_reranker(str(minilm_cross_encoder)).score_pairs(pairs, max_length=max_length, batch_size=3)
        reference = flag.FlagReranker(str(minilm_cross_encoder), use_fp16=False, devices=["cpu"],
                                      max_length=max_length).compute_score(pairs)
        assert ours == pytest.approx(reference, abs=1e-4)
        assert max(ours) - min(ours) > 1.0  # the seeded head spreads scores: a mix-up would show


def test_an_empty_passage_is_scored_as_an_empty_second_segment(minilm_cross_encoder):
    """[CLS] q [SEP] [SEP], as FlagReranker under transformers 4 and CrossEncoder build it.

    (FlagReranker under transformers 5 re-tokenizes each pair unbatched, and transformers then
    drops an empty text_pair, scoring [CLS] q [SEP]; we keep the pair form.)
    """
    import transformers

    reranker = load_reranker(str(minilm_cross_encoder))
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_cross_encoder)
    query_ids = tokenizer(QUERY, add_special_tokens=False)["input_ids"]
    ids = [tokenizer.cls_token_id, *query_ids, tokenizer.sep_token_id, tokenizer.sep_token_id]
    types = [0] * (len(query_ids) + 2) + [1]
    with torch.no_grad():
        expected = reranker.model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([types])).logits.item()
    assert reranker.score(QUERY, [""])[0] == pytest.approx(expected, abs=1e-5)


def test_xlmr_cross_encoder_equals_flag_reranker(xlmr_cls_family):
    flag = pytest.importorskip("FlagEmbedding")
    pairs = [("the model said hello", "hello to the world"), ("world", "the model " * 40), ("merge", "world")]
    ours = load_reranker(str(xlmr_cls_family[1])).score_pairs(pairs, max_length=32, normalize=True)
    reference = flag.FlagReranker(str(xlmr_cls_family[1]), use_fp16=False, devices=["cpu"], max_length=32,
                                  normalize=True).compute_score(pairs)
    assert ours == pytest.approx(reference, abs=1e-5)
    assert all(0 < s < 1 for s in ours)


def test_llm_reranker_equals_flag_llm_reranker(llama_family):
    flag = pytest.importorskip("FlagEmbedding")
    pairs = [("the model", "said hello to the world"), ("hello world", "the " * 30), ("merge model", "world")]
    ours = load_reranker(str(llama_family[2])).score_pairs(pairs, max_length=24)
    reference = flag.FlagLLMReranker(str(llama_family[2]), use_fp16=False, devices=["cpu"],
                                     max_length=24).compute_score(pairs)
    assert ours == pytest.approx(reference, abs=1e-4)


def test_llm_left_padded_batches_equal_single_pair_forwards(llama_family):
    """Scores do not depend on which other pairs share the batch (padding is invisible)."""
    reranker = load_reranker(str(llama_family[0]))
    pairs = [("the model", "said hello " * k) for k in (1, 5, 12)] + [("world", "the")]
    batched = reranker.score_pairs(pairs, batch_size=4)
    single = [reranker.score_pairs([pair], batch_size=1)[0] for pair in pairs]
    assert batched == pytest.approx(single, abs=1e-5)
    assert len(set(round(s, 4) for s in batched)) == len(pairs)


def test_batch_size_and_order_do_not_change_scores(minilm_cross_encoder):
    reranker = load_reranker(str(minilm_cross_encoder))
    one = reranker.score(QUERY, DOCS, batch_size=1)
    many = reranker.score(QUERY, DOCS, batch_size=64)
    reversed_scores = reranker.score(QUERY, DOCS[::-1], batch_size=2)
    assert one == pytest.approx(many, abs=1e-5)
    assert reversed_scores[::-1] == pytest.approx(one, abs=1e-5)


def test_normalize_is_the_sigmoid_of_the_logits(minilm_cross_encoder):
    reranker = load_reranker(str(minilm_cross_encoder))
    raw = torch.tensor(reranker.score(QUERY, DOCS))
    assert reranker.score(QUERY, DOCS, normalize=True) == pytest.approx(torch.sigmoid(raw).tolist(), abs=1e-6)


def test_a_passage_longer_than_max_length_is_cut_not_refused(minilm_cross_encoder):
    reranker = load_reranker(str(minilm_cross_encoder))
    words = "merging weights keeps general skill".split() * 100
    long_doc = " ".join(words)
    cut_doc = " ".join(words[: 40])
    long_score, cut_score = reranker.score("merging", [long_doc, cut_doc], max_length=16)
    assert long_score == pytest.approx(cut_score, abs=1e-5)  # both end at the same 16 tokens


def test_models_are_cached_and_unloaded(minilm_cross_encoder):
    first = load_reranker(str(minilm_cross_encoder))
    assert load_reranker(str(minilm_cross_encoder)) is first
    assert load_reranker(str(minilm_cross_encoder), dtype="bfloat16") is not first  # another cache key
    assert first in loaded_rerankers()
    unload(first)
    assert first not in loaded_rerankers()
    assert load_reranker(str(minilm_cross_encoder)) is not first
    assert "cross-encoder on cpu (float32" in first.describe()
    unload()
    assert loaded_rerankers() == []


def test_out_of_memory_halves_the_batch_and_still_scores_everything():
    sizes = []

    def forward(batch):
        sizes.append(len(batch["input_ids"]))
        if len(batch["input_ids"]) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return batch["input_ids"].sum(-1).float()

    encoded = Encoded([[1] * n for n in (3, 1, 4, 1, 5, 9, 2)])
    scores = run_batches(encoded, forward, pad_id=0, device=torch.device("cpu"), batch_size=8)
    assert scores.tolist() == [3, 1, 4, 1, 5, 9, 2]
    assert sizes[:3] == [7, 4, 2] and max(sizes[3:]) == 2

    def always_fails(batch):
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(RerankError, match="out of memory on cpu scoring one input of 9 tokens"):
        run_batches(encoded, always_fails, pad_id=0, device=torch.device("cpu"), batch_size=2)


@pytest.mark.parametrize("call, message", [
    (lambda r: r.score("", ["a passage"]), "a query is empty"),
    (lambda r: r.score("query", []), "nothing to score"),
    (lambda r: r.score("query", ["a"], max_length=8), "max_length must be at least 16"),
    (lambda r: r.score("query", ["a"], batch_size=0), "batch_size must be at least 1"),
])
def test_bad_scoring_input_is_one_clear_error(minilm_cross_encoder, call, message):
    with pytest.raises(RerankError, match=message):
        call(load_reranker(str(minilm_cross_encoder)))


def test_bad_models_and_devices_are_clear_errors(tmp_path, bert_cls_family):
    from core.errors import MergeDeskError

    with pytest.raises(RerankError, match="is not a model folder: it has no config.json"):
        load_reranker(str(tmp_path))
    with pytest.raises(MergeDeskError, match="not found: no such folder"):
        load_reranker(str(tmp_path / "missing"))
    with pytest.raises(MergeDeskError, match="device 'cuda:5' does not exist"):
        load_reranker(str(bert_cls_family[0]), device="cuda:5")
    with pytest.raises(RerankError, match="unknown dtype 'float8'"):
        load_reranker(str(bert_cls_family[0]), dtype="float8")
    with pytest.raises(RerankError, match="2 output labels; a reranker has one"):
        load_reranker(str(_two_label_model(tmp_path / "two", bert_cls_family[0])))


def _two_label_model(folder, source):
    import transformers

    model = transformers.BertForSequenceClassification.from_pretrained(source, num_labels=2,
                                                                       ignore_mismatched_sizes=True)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def test_dtype_defaults_per_device_and_kind(monkeypatch):
    from core.rerank.model import pick_dtype

    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda", 0), torch.device("mps")
    assert pick_dtype(None, cpu, "cross-encoder") == torch.float32  # fp16 LayerNorm is missing/slow on CPU
    assert pick_dtype(None, cuda, "cross-encoder") == torch.float16  # as FlagReranker(use_fp16=True)
    assert pick_dtype(None, mps, "bi-encoder") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pick_dtype(None, cuda, "llm") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pick_dtype(None, cuda, "llm") == torch.float16
    assert pick_dtype("bfloat16", cpu, "cross-encoder") == torch.bfloat16  # asked for by name: as asked


def test_auto_spreads_only_models_larger_than_the_free_gpu_memory(monkeypatch, tmp_path):
    from core.rerank.model import needs_spreading

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2000, 8000))
    assert not needs_spreading(torch.device("cuda", 0), tmp_path)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000, 8000))
    assert needs_spreading(torch.device("cuda", 0), tmp_path)  # 1000 bytes of weights > 90 % of 1000 free
    assert not needs_spreading(torch.device("cpu"), tmp_path)
