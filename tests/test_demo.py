"""The demo kit's training and model folders, on a tiny BERT and made-up data (seconds, not minutes).

Checked: a seed fixes the trained weights (and another seed changes them); training lowers the
loss as core.cocktail.weights computes it independently; a built cross-encoder scores through
core.rerank.model; a built bi-encoder embeds in sentence-transformers exactly as core.rerank.model does;
existing models are skipped, --force rebuilds, and no partial folder is left behind.
"""
import json
import math
import random
from dataclasses import replace

import pytest
import torch

from core.cocktail.weights import data_weights
from core.demo.build import DemoSpec, built_demo_models, demo_events, demo_folder
from core.demo.train import TrainConfig, TrainExample, finish, train_bi_encoder, train_cross_encoder, training_batches
from core.rerank.model import load_reranker, unload
from tests.model_factory import WORDS

TINY = TrainConfig(epochs=2, lr=1e-3, batch_size=4, group_size=3, max_length=32, warmup=0.0)


def tiny_examples(count: int = 8, seed: int = 0) -> list[TrainExample]:
    """Queries of three words; the positive repeats them, the negatives use other words."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        words = rng.sample(WORDS, 9)
        query = " ".join(words[:3])
        examples.append(TrainExample(query, (f"{query} {words[3]}",),
                                     tuple(" ".join(rng.sample(words[3:], 4)) for _ in range(3))))
    return examples


def write_set(folder, domain: str, examples: list[TrainExample]):
    (folder / domain).mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"query": e.query, "pos": list(e.pos), "neg": list(e.neg)}) for e in examples]
    (folder / domain / "train.jsonl").write_text("\n".join(lines) + "\n")


def weights(trained) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in trained.model.state_dict().items()}


@pytest.mark.parametrize("train", [train_bi_encoder, train_cross_encoder])
def test_training_is_deterministic_for_a_seed(bert_st_family, train):
    config = replace(TINY, max_steps=3)
    runs = [weights(finish(train(bert_st_family[0], tiny_examples(), replace(config, seed=seed))))
            for seed in (0, 0, 1)]
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][name], runs[1][name]) for name in runs[0])
    assert any(not torch.equal(runs[0][name], runs[2][name]) for name in runs[0])


def test_training_leaves_the_callers_random_state_alone(bert_st_family):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    finish(train_cross_encoder(bert_st_family[0], tiny_examples(), replace(TINY, max_steps=1)))
    assert torch.equal(torch.rand(3), expected)


def test_batches_hold_the_positive_first_and_distinct_negatives():
    examples = tiny_examples(5)
    config = replace(TINY, batch_size=2, group_size=3)
    batches = training_batches(examples, config, epoch=0)
    assert [len(b) for b in batches] == [2, 2, 1]
    by_query = {e.query: e for e in examples}
    for query, group in (g for batch in batches for g in batch):
        assert group[0] in by_query[query].pos
        assert len(set(group[1:])) == 2 and set(group[1:]) <= set(by_query[query].neg)
    assert training_batches(examples, config, epoch=0) == batches
    assert training_batches(examples, config, epoch=1) != batches  # a new order each epoch


LEARNS = replace(TINY, epochs=20, lr=5e-3)  # a random tiny BERT needs ~40 steps at a high rate to rank
SPECS = (DemoSpec("tiny-bi", "bi-encoder", "general", None, LEARNS, "a tiny bi-encoder"),
         DemoSpec("tiny-ce", "cross-encoder", "general", None, LEARNS, "a tiny cross-encoder"),
         DemoSpec("tiny-ce-2", "cross-encoder", "other", "tiny-ce", replace(TINY, epochs=1), "its fine-tune"))


@pytest.fixture(scope="module")
def built(tmp_path_factory, bert_st_family):
    """The three SPECS built from the tiny BERT: (models_dir, data_dir, events)."""
    root = tmp_path_factory.mktemp("demo")
    write_set(root / "data", "general", tiny_examples(8))
    write_set(root / "data", "other", tiny_examples(8, seed=1))
    events = list(demo_events(root / "models", data_dir=root / "data", specs=SPECS, base=bert_st_family[0]))
    return root / "models", root / "data", events


def test_build_saves_each_model_once_with_a_card(built):
    models_dir, _, events = built
    assert [(e.model, e.state) for e in events if e.state != "training"] == [
        ("tiny-bi", "saved"), ("tiny-ce", "saved"), ("tiny-ce-2", "saved")]
    steps = [e.step for e in events if e.model == "tiny-ce" and e.state == "training"]
    assert steps == list(range(1, 20 * 2 + 1))  # 8 queries / 4 per step = 2 steps per epoch
    assert sorted(built_demo_models(models_dir, specs=SPECS)) == ["tiny-bi", "tiny-ce", "tiny-ce-2"]
    assert not list((models_dir / "demo").glob("*.partial"))
    card = (demo_folder(models_dir, "tiny-ce-2") / "README.md").read_text()
    assert "base_model: demo/tiny-ce" in card and "- seed: 0" in card and "- optimizer steps: 2" in card
    assert (demo_folder(models_dir, "tiny-bi") / "modules.json").exists()
    assert not (demo_folder(models_dir, "tiny-ce") / "modules.json").exists()


def test_existing_models_are_skipped_unless_forced(built, bert_st_family):
    models_dir, data_dir, _ = built
    again = [(e.model, e.state) for e in demo_events(models_dir, data_dir=data_dir, specs=SPECS,
                                                     base=bert_st_family[0])]
    assert again == [("tiny-bi", "skipped"), ("tiny-ce", "skipped"), ("tiny-ce-2", "skipped")]
    quick = (replace(SPECS[2], config=replace(TINY, max_steps=1)),)
    before = (demo_folder(models_dir, "tiny-ce-2") / "model.safetensors").read_bytes()
    states = [e.state for e in demo_events(models_dir, data_dir=data_dir, specs=quick, force=True,
                                           base=bert_st_family[0])]
    assert states == ["training", "saved"]
    assert (demo_folder(models_dir, "tiny-ce-2") / "model.safetensors").read_bytes() != before


def test_training_lowers_the_loss_measured_independently(built, bert_st_family):
    """core.cocktail.weights' own losses: the bi-encoder against its start, the cross-encoder against chance."""
    models_dir, _, _ = built
    examples = [{"query": e.query, "pos": list(e.pos), "neg": list(e.neg)} for e in tiny_examples(8)]
    before, after = data_weights([str(bert_st_family[0]), str(demo_folder(models_dir, "tiny-bi"))], examples).losses
    assert after < before
    (loss,) = data_weights([str(demo_folder(models_dir, "tiny-ce"))], examples).losses
    chance = math.log(1 + 3)  # uniform scores over a positive and three negatives
    assert loss < 0.5 * chance


def test_cross_encoder_folder_scores_through_core_rerank(built):
    models_dir, _, _ = built
    reranker = load_reranker(str(demo_folder(models_dir, "tiny-ce")), cached=False)
    example = tiny_examples(8)[0]
    scores = reranker.score(example.query, [example.pos[0], *example.neg])
    assert reranker.kind == "cross-encoder" and len(scores) == 4
    assert scores[0] == max(scores)  # a training query: its positive ranks first


def test_bi_encoder_folder_embeds_as_sentence_transformers(built):
    from sentence_transformers import SentenceTransformer

    folder = demo_folder(built[0], "tiny-bi")
    texts = ["the model said hello", "a new world of merge"]
    expected = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    expected_cosine = torch.nn.functional.cosine_similarity(expected[0], expected[1], dim=0).item()
    reranker = load_reranker(str(folder), cached=False)
    assert reranker.kind == "bi-encoder"
    assert reranker.score(texts[0], [texts[1]])[0] == pytest.approx(expected_cosine, abs=1e-5)
    unload()


def test_cli_skips_built_models_and_says_so(tmp_path, capsys):
    from core.__main__ import main
    from core.demo.build import DEMO_MODELS

    for spec in DEMO_MODELS:
        demo_folder(tmp_path, spec.name).mkdir(parents=True)
        (demo_folder(tmp_path, spec.name) / "config.json").write_text("{}")
    assert main(["demo", "--models-dir", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("(exists; --force rebuilds it)") == len(DEMO_MODELS)
    assert "model 1/5 general-ce: skipped" in out


def test_cli_quiet_prints_one_line_per_model_and_no_steps(tmp_path, capsys, monkeypatch):
    import core.demo.build
    from core.__main__ import main
    from core.demo.build import DemoProgress

    def fake_events(models_dir, **options):
        for step in (1, 2):
            yield DemoProgress("general-ce", 1, 1, step, 2, 0.5, 1.0, "training")
        yield DemoProgress("general-ce", 1, 1, 2, 2, 0.25, 2.0, "saved")

    monkeypatch.setattr(core.demo.build, "demo_events", fake_events)
    assert main(["demo", "--models-dir", str(tmp_path), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "model 1/1 general-ce: saved, last loss 0.2500, 2 s so far"
    assert len(lines) == 2 and lines[1].startswith("demo models in ")
    assert "exists" not in "\n".join(lines)
