"""Weights from data (core.cocktail.weights): each loss against a hand computation, and softmax(−loss/τ).

The references load the models with transformers / sentence-transformers directly and apply
the formulas written here, so a tokenization, pooling or grouping mistake in core would show.
"""
import json
import math

import pytest
import torch
import transformers

from core.__main__ import main
from core.cocktail.weights import (data_weights, decoder_loss, embedder_loss, read_examples, reranker_loss,
                                   weights_from_losses)
from core.errors import RerankError
from core.merge.recipe import load_recipe
from core.rerank.model import load_reranker
from tests.model_factory import minilm_folder

RANKING = [  # words of the tiny models' vocabulary
    {"query": "the model", "pos": ["the model said hello", "model merge"], "neg": ["hello world", "good day"]},
    {"query": "what time is it", "pos": ["it is time"], "neg": ["the way", "she said no", "call me"]},
]
LM = [{"input": "the model said", "output": "hello to the world"},
      {"input": "what is the", "output": "time"}]


def softmax_by_hand(losses, tau):
    exps = [math.exp(-loss / tau) for loss in losses]
    return [e / sum(exps) for e in exps]


def cross_entropy_by_hand(positive, negatives):
    return -math.log(math.exp(positive) / (math.exp(positive) + sum(math.exp(n) for n in negatives)))


def test_weights_are_the_softmax_of_minus_loss_over_tau():
    losses = [2.31, 0.47, 1.05]
    for tau in (5.0, 1.0, 0.2):
        assert weights_from_losses(losses, tau=tau) == pytest.approx(softmax_by_hand(losses, tau), rel=1e-12)
    assert weights_from_losses(losses)[1] == max(weights_from_losses(losses))  # lowest loss, largest weight
    assert weights_from_losses([3.0, 3.0]) == [0.5, 0.5]
    with pytest.raises(RerankError, match="tau must be a positive number"):
        weights_from_losses(losses, tau=0)
    with pytest.raises(RerankError, match="not finite"):
        weights_from_losses([1.0, float("nan")])


def test_reranker_loss_is_each_positives_cross_entropy_against_the_negatives(bert_cls_family):
    folder = bert_cls_family[1]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()

    def logit(query, doc):
        with torch.no_grad():
            return model(**tokenizer(query, doc, return_tensors="pt")).logits[0, 0].item()

    expected = [cross_entropy_by_hand(logit(e["query"], pos), [logit(e["query"], n) for n in e["neg"]])
                for e in RANKING for pos in e["pos"]]
    assert len(expected) == 3  # one group per positive
    ours = reranker_loss(load_reranker(str(folder)), RANKING)
    assert ours == pytest.approx(sum(expected) / len(expected), abs=1e-5)


def test_embedder_loss_is_infonce_over_all_other_passages(bert_st_family):
    from sentence_transformers import SentenceTransformer

    folder = bert_st_family[1]
    encoder = SentenceTransformer(str(folder), device="cpu")
    passages = list(dict.fromkeys(d for e in RANKING for d in e["pos"] + e["neg"]))
    vectors = dict(zip(passages, encoder.encode(passages, convert_to_tensor=True, normalize_embeddings=True)))
    expected = []
    for example in RANKING:
        query = encoder.encode(example["query"], convert_to_tensor=True, normalize_embeddings=True)
        cos = {p: float(query @ vectors[p]) / 0.05 for p in passages}
        others = [cos[p] for p in passages if p not in example["pos"]]  # own negatives + the other query's passages
        expected += [cross_entropy_by_hand(cos[pos], others) for pos in example["pos"]]
    ours = embedder_loss(load_reranker(str(folder)), RANKING)
    assert ours == pytest.approx(sum(expected) / len(expected), abs=1e-4)


def test_decoder_loss_is_the_lm_loss_of_the_output_tokens(llama_family):
    folder = llama_family[2]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    expected = []
    for example in LM:  # LM-Cocktail's layout, scored by transformers' own shifted loss
        ids = tokenizer.encode(example["input"] + " " + example["output"]) + [tokenizer.eos_token_id]
        prompt = len(tokenizer.encode(example["input"]))
        labels = [-100] * prompt + ids[prompt:]
        with torch.no_grad():
            expected.append(model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item())
    assert decoder_loss(model, tokenizer, LM) == pytest.approx(sum(expected) / len(expected), abs=1e-5)


def test_data_weights_puts_each_models_loss_through_the_softmax(bert_cls_family):
    refs = [str(f) for f in bert_cls_family]
    result = data_weights(refs, RANKING, tau=0.5)
    assert result.kind == "reranker" and result.models == refs
    assert result.losses == pytest.approx([reranker_loss(load_reranker(r), RANKING) for r in refs], abs=1e-9)
    assert result.weights == pytest.approx(softmax_by_hand(result.losses, 0.5), abs=1e-9)
    assert len(set(result.losses)) == 3  # the models differ, so the test could tell them apart


def test_data_weights_on_decoders_uses_input_output_examples(llama_family):
    result = data_weights([str(f) for f in llama_family[:2]], LM)
    assert result.kind == "decoder"
    assert result.weights == pytest.approx(softmax_by_hand(result.losses, 5.0), abs=1e-9)
    ranked = data_weights([str(f) for f in llama_family[:2]], RANKING)  # LLM rerankers: the "Yes" logit's group loss
    assert ranked.kind == "reranker"
    assert ranked.losses[0] == pytest.approx(reranker_loss(load_reranker(str(llama_family[0])), RANKING), abs=1e-9)


def test_weights_cli_prints_the_table_and_json(bert_cls_family, tmp_path, capsys):
    examples = tmp_path / "few.jsonl"
    examples.write_text("\n".join(json.dumps(e) for e in RANKING) + "\n\n", encoding="utf-8")
    args = ["weights", "--model", str(bert_cls_family[0]), "--model", str(bert_cls_family[2]),
            "--examples", str(examples), "--tau", "2"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["weights"] == pytest.approx(softmax_by_hand(out["losses"], 2.0), abs=1e-9)
    assert main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["model", "loss", "weight"]
    assert [float(v) for v in table[2].split()[1:]] == pytest.approx([out["losses"][1], out["weights"][1]], abs=1e-4)
    assert "softmax(-loss / 2)" in table[-1]
    assert main(args + ["--recipe", str(tmp_path / "mix.yml")]) == 0
    recipe = load_recipe(tmp_path / "mix.yml")
    assert recipe.merge_method == "linear" and [e.model for e in recipe.models] == out["models"]
    assert [e.parameters["weight"] for e in recipe.models] == pytest.approx(out["weights"], abs=1e-6)


def test_bad_examples_are_one_line_errors(bert_cls_family, tmp_path, capsys):
    ce = str(bert_cls_family[0])
    with pytest.raises(RerankError, match="input/output examples need a causal LM"):
        data_weights([ce], LM)
    with pytest.raises(RerankError, match="has no positive passage"):
        data_weights([ce], [{"query": "the model", "pos": [], "neg": ["hello"]}])
    with pytest.raises(RerankError, match="has no negatives"):
        data_weights([ce], [{"query": "the model", "pos": ["hello"]}])
    with pytest.raises(RerankError, match="tau must be a positive number"):
        data_weights([ce], RANKING, tau=-1)
    with pytest.raises(RerankError, match="no examples"):
        data_weights([ce], [])
    with pytest.raises(RerankError, match=r"one kind: .*bert-cls-0 is a cross-encoder, .* is a bi-encoder"):
        data_weights([ce, str(minilm_folder())], RANKING)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(RANKING[0]) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(RerankError, match=r"broken.jsonl:2: not valid JSON"):
        read_examples(broken)
    assert main(["weights", "--model", ce, "--examples", str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.jsonl:2" in err and "\n" not in err.strip()
