"""The Generate tab on the tiny Llama and Qwen2 decoders: generation equals transformers' own, likelihoods
equal the model's loss, a merge differs from its base, and both endpoints work through gradio_client."""
import concurrent.futures
import dataclasses
import math
import shutil

import gradio as gr
import pytest
import torch
import transformers
from gradio_client import handle_file

from core.app.workspace import Workspace
from core.errors import GenerationError
from core.llm.generate import NO_TEMPLATE, TokenStream, build_prompt, generate, stream_pair
from core.llm.likelihood import read_texts, score_texts
from core.llm.model import find_decoders, load_causal_lm, loaded_causal_lms
from core.llm.settings import HOSTED, GenerationSettings
from core.merge.engine import merge
from core.merge.recipe import recipe_from_dict
from tests.app_server import launched, local_workspace
from tests.model_factory import build_family
from ui.generation import decoder_pair, generate_compare, likelihood_compare, unload_all

PROMPT = "the model said hello to the"
TEXTS = ["the model said hello to the world", "hello", "you can see the world and the model will work for you now"]
GREEDY = GenerationSettings(max_new_tokens=12)
SAMPLED = GenerationSettings(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=7)
# A template of the fixture tokenizer's own words, so every token of it is a real one.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}you said {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}the model said{% endif %}")


def load_fixture(folder):
    """load_causal_lm, but for Qwen2 with the fixture's word-level tokenizer read as it is: transformers 5's
    AutoTokenizer maps model_type qwen2 to Qwen2Tokenizer, which rebuilds a byte-level BPE from that vocab and
    turns every fixture text into the one token <s>. Same vocab and ids as the Llama fixture's."""
    lm = load_causal_lm(str(folder))
    if lm.model.config.model_type != "qwen2":
        return lm
    return dataclasses.replace(lm, tokenizer=transformers.PreTrainedTokenizerFast.from_pretrained(folder))


def transformers_tokens(lm, ids: list[int], settings: GenerationSettings) -> list[int]:
    """The new tokens of transformers' model.generate for the same prompt ids and settings."""
    options = ({"do_sample": False} if settings.greedy else
               {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0})
    torch.manual_seed(settings.seed)
    inputs = torch.tensor([ids])
    out = lm.model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=settings.max_new_tokens,
                            **options)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def templated(tmp_path_factory, llama_family):
    """The Llama base with a chat template in its tokenizer."""
    folder = tmp_path_factory.mktemp("templated") / "llama-chat"
    shutil.copytree(llama_family[0], folder)
    lm = load_causal_lm(str(folder))
    lm.tokenizer.chat_template = TEMPLATE
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def merged_ws(tmp_path_factory):
    """A workspace whose models/ holds two far-apart Llamas (noise 0.5) and outputs/ their linear 0.5 merge."""
    ws = local_workspace(tmp_path_factory.mktemp("llm_ws"))
    base, tuned = build_family(ws.models_dir, "llama", n_models=2, noise=0.5, seed=3)
    recipe = recipe_from_dict({"merge_method": "linear", "models": [
        {"model": str(base), "parameters": {"weight": 0.5}}, {"model": str(tuned), "parameters": {"weight": 0.5}}]})
    merge(recipe, ws.outputs_dir / "llm-merge")
    return ws


@pytest.mark.parametrize("settings", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("family", ["llama_family", "qwen2_family"])
def test_generation_equals_transformers_generate(request, family, settings):
    lm = load_fixture(request.getfixturevalue(family)[1])
    result = generate(lm, PROMPT, settings)
    assert result.prompt.how == NO_TEMPLATE and result.prompt.ids == lm.tokenizer(PROMPT)["input_ids"]
    assert len(result.prompt.ids) == len(PROMPT.split()) + 1  # <s> and one id per word
    expected = transformers_tokens(lm, result.prompt.ids, settings)
    assert result.token_ids == expected
    assert result.text == lm.tokenizer.decode(expected, skip_special_tokens=True)
    assert result.stopped == ("end of text" if expected[-1] == lm.tokenizer.eos_token_id else "max_new_tokens")


def test_sampling_follows_the_seed(llama_family):
    lm = load_causal_lm(str(llama_family[0]))
    runs = [generate(lm, PROMPT, GenerationSettings(20, temperature=1.0, seed=seed)).token_ids for seed in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]


def test_a_stream_resumed_on_another_thread_still_runs(llama_family):
    """gradio resumes a streaming handler on whichever worker thread is free; grad mode is per thread,
    so each step must enter inference mode itself (a `with` held across the yield failed there)."""
    lm = load_causal_lm(str(llama_family[0]))
    stream = TokenStream(lm, build_prompt(lm.tokenizer, PROMPT), GREEDY)
    steps = iter(stream)
    next(steps)  # step 1 on this thread, the rest on another, as gradio's pool may do
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: list(steps)).result()
    assert stream.token_ids == generate(lm, PROMPT, GREEDY).token_ids and len(stream.token_ids) > 1


def test_streamed_pieces_join_to_the_final_text(qwen2_family):
    lm = load_fixture(qwen2_family[0])
    stream = TokenStream(lm, build_prompt(lm.tokenizer, PROMPT), SAMPLED)
    pieces = list(stream)
    assert len(pieces) == len(stream.token_ids) > 1 and sum(1 for p in pieces if p) > 1
    assert "".join(pieces) == stream.text == lm.tokenizer.decode(stream.token_ids, skip_special_tokens=True)


def test_the_chat_template_is_used_when_the_tokenizer_has_one(templated, llama_family):
    lm = load_causal_lm(str(templated))
    prompt = build_prompt(lm.tokenizer, "hello world")
    assert prompt.how == "chat template" and prompt.text == "<s>you said hello world the model said"
    expected = lm.tokenizer.apply_chat_template([{"role": "user", "content": "hello world"}], tokenize=True,
                                                add_generation_prompt=True, return_dict=True)["input_ids"]
    assert prompt.ids == list(expected) and prompt.ids.count(lm.tokenizer.bos_token_id) == 1
    assert generate(lm, "hello world", GREEDY).token_ids == transformers_tokens(lm, prompt.ids, GREEDY)
    plain = build_prompt(load_causal_lm(str(llama_family[0])).tokenizer, "hello world")
    assert plain.how == NO_TEMPLATE and plain.text == "hello world"


@pytest.mark.parametrize("family", ["llama_family", "qwen2_family"])
def test_log_likelihood_equals_the_models_own_loss(request, family):
    lm = load_fixture(request.getfixturevalue(family)[0])
    scores = score_texts(lm, TEXTS)
    for text, score in zip(TEXTS, scores):
        ids = torch.tensor([lm.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            loss = lm.model(input_ids=ids, labels=ids).loss.item()  # mean over the ids.shape[1] - 1 predictions
        assert score.tokens == ids.shape[1] - 1
        assert score.log_likelihood == pytest.approx(-loss * score.tokens, rel=1e-5)
        assert score.perplexity == pytest.approx(math.exp(loss), rel=1e-5)
    alone = [score_texts(lm, [text])[0] for text in TEXTS]  # no padding at all
    one_batch = score_texts(lm, TEXTS, batch_tokens=10_000)  # mixed lengths, right-padded together
    for single, padded, listed in zip(alone, one_batch, scores):
        assert padded.log_likelihood == pytest.approx(single.log_likelihood, abs=1e-4)
        assert listed.tokens == single.tokens


def test_a_merge_differs_from_its_base_and_a_model_from_itself_does_not(merged_ws):
    base, merged = decoder_pair(merged_ws)
    assert merged == str(merged_ws.outputs_dir / "llm-merge") and base == str(merged_ws.models_dir / "llama-0")
    lms = [load_causal_lm(ref) for ref in (base, merged)]
    last = list(stream_pair(lms, PROMPT, GREEDY))[-1]
    assert last[0].token_ids == generate(lms[0], PROMPT, GREEDY).token_ids
    assert last[0].token_ids != last[1].token_ids
    ppl = [score_texts(lm, TEXTS) for lm in lms]
    assert all(a.perplexity != pytest.approx(b.perplexity, rel=1e-3) for a, b in zip(*ppl))
    status, text_a, text_b = list(generate_compare(merged, merged, PROMPT, 8, 0, 1, 0, "cpu", "auto", merged_ws))[-1]
    assert text_a == text_b and "A and B are the same model (`llm-merge`)" in status
    different, *_ = list(generate_compare(base, merged, PROMPT, 8, 0, 1, 0, "cpu", "auto", merged_ws))[-1]
    assert "same model" not in different and different.startswith("✓ Done")
    same, table = likelihood_compare(merged, merged, "hello world", None, "cpu", "auto", merged_ws)
    assert "same model" in same and table["Δ perplexity (B − A)"].tolist() == [0.0, 0.0]


def test_only_decoders_are_offered(merged_ws, bert_cls_family):
    shutil.copytree(bert_cls_family[0], merged_ws.models_dir / "reranker")
    refs = [choice.ref for choice in find_decoders(merged_ws)]
    assert "reranker" not in " ".join(refs) and str(merged_ws.outputs_dir / "llm-merge") in refs


def test_both_endpoints_through_the_client(merged_ws, tmp_path):
    base, merged = decoder_pair(merged_ws)
    lms = [load_causal_lm(ref) for ref in (base, merged)]
    texts_file = tmp_path / "set.jsonl"
    texts_file.write_text("".join(f'{{"text": "{text}"}}\n' for text in TEXTS), encoding="utf-8")
    with launched(merged_ws) as (_, client):
        status, text_a, text_b = client.predict(base, merged, PROMPT, 10, 0.8, 0.9, 5, "cpu", "auto",
                                                api_name="/generate_compare")
        status_ll, table = client.predict(base, merged, "", handle_file(str(texts_file)), "cpu", "auto",
                                          api_name="/likelihood_compare")
    settings = GenerationSettings(10, 0.8, 0.9, 5)
    assert [text_a, text_b] == [generate(lm, PROMPT, settings).text for lm in lms]
    assert status.startswith("✓ Done · sampled (temperature 0.8, top-p 0.9, seed 5)")
    rows = [dict(zip(table["headers"], row)) for row in table["data"]]
    assert [row["text"] for row in rows] == ["mean over texts", *TEXTS]
    expected = [score_texts(lm, TEXTS) for lm in lms]
    for row, a, b in zip(rows[1:], *expected):
        assert row["A perplexity"] == pytest.approx(a.perplexity, abs=1e-3)
        assert row["B log-likelihood"] == pytest.approx(b.log_likelihood, abs=1e-3)
    assert rows[0]["B perplexity"] == pytest.approx(sum(b.perplexity for b in expected[1]) / len(TEXTS), abs=1e-3)
    assert f"✓ {len(TEXTS)} texts" in status_ll


def test_hosted_refuses_absolute_paths_and_long_answers(merged_ws):
    hosted = Workspace(merged_ws.root, merged_ws.models_dir, merged_ws.outputs_dir, hosted=True)
    with pytest.raises(gr.Error) as refused:
        list(generate_compare(str(merged_ws.models_dir / "llama-0"), "models/llama-1", PROMPT, 8, 0, 1, 0, "cpu",
                              "auto", hosted))
    assert "absolute paths are refused on a hosted app" in refused.value.message
    with pytest.raises(gr.Error) as refused:
        list(generate_compare("models/llama-0", "models/llama-1", PROMPT, 1000, 0, 1, 0, "cpu", "auto", hosted))
    assert refused.value.message == "max_new_tokens is 1000; it must be 1 to 256 here: ask for fewer new tokens"
    status, text_a, _ = list(generate_compare("models/llama-0", "models/llama-1", PROMPT, 8, 0, 1, 0, "cpu", "auto",
                                              hosted))[-1]
    assert status.startswith("✓ Done") and text_a == generate(load_causal_lm(str(merged_ws.models_dir / "llama-0")),
                                                               PROMPT, GenerationSettings(8)).text
    assert loaded_causal_lms()
    assert unload_all(merged_ws) == "Models unloaded." and not loaded_causal_lms()


def test_bad_input_is_one_line(bert_cls_family, llama_family, tmp_path):
    with pytest.raises(GenerationError, match=r"is not a causal LM \(its config names BertForSequenceClassification\)"):
        load_causal_lm(str(bert_cls_family[0]))
    lm = load_causal_lm(str(llama_family[0]))
    with pytest.raises(GenerationError, match="the prompt is empty"):
        generate(lm, "  \n", GREEDY)
    with pytest.raises(GenerationError, match="more than its 64 positions"):
        generate(lm, "hello " * 60, GREEDY)
    bad = tmp_path / "set.jsonl"
    bad.write_text('{"text": "hello"}\n\n{"txt": "world"}\n', encoding="utf-8")
    with pytest.raises(GenerationError, match=r'^set.jsonl line 3: expected an object with a "text" string'):
        read_texts(path=bad)
    bad.write_text('{"text": "hello"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(GenerationError, match=r"^set.jsonl line 2: not valid JSON"):
        read_texts(path=bad)
    with pytest.raises(GenerationError, match="more than 200 texts"):
        read_texts(pasted="\n\n".join(["hello"] * 201), limits=HOSTED)
    with pytest.raises(GenerationError, match="temperature is -1.0"):
        generate(lm, PROMPT, GenerationSettings(temperature=-1))
    assert read_texts(pasted="first text\nstill first\n\n\nsecond") == ["first text\nstill first", "second"]
