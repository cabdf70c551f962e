"""The launched app through gradio_client: /plan, /merge and /rerank_compare work, UI-only events stay off the API
(/generate_compare and /likelihood_compare: tests/test_llm_playground.py)."""
import uuid

import pytest
from safetensors.torch import load_file

from tests.app_server import browser_event, launched, local_workspace


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workspace = local_workspace(tmp_path_factory.mktemp("served"))
    with launched(workspace) as (blocks, client):
        yield workspace, client, blocks


def completed(blocks, fn_index: int, data: list, session: str) -> dict:
    message = browser_event(blocks, fn_index, data, session)
    assert message["success"], message
    return message["output"]


def test_plan_and_merge_through_the_client(served, llama_family):
    workspace, client, _ = served
    recipe = "merge_method: linear\nmodels:\n" + "".join(
        f"  - model: {folder}\n    parameters: {{weight: 1}}\n" for folder in llama_family[:2])
    report = client.predict(recipe, "api-merge", "cpu", api_name="/plan")
    assert report.startswith("**✓ Ready to merge.**") and "| Tensors |" in report
    status, log, folder, card = client.predict(recipe, "api-merge", "cpu", False, 0, api_name="/merge")
    out = workspace.outputs_dir / "api-merge"
    assert status.startswith("**✓ Merged**") and folder == str(out) and card.startswith("# api-merge")
    merged, first, second = (load_file(next(f.glob("*.safetensors"))) for f in (out, *llama_family[:2]))
    name = "model.norm.weight"
    assert (merged[name] - (first[name] + second[name]) / 2).abs().max() < 1e-6
    bad = client.predict("merge_method: [", "x", "cpu", api_name="/plan")
    assert bad.startswith("**✗ Not ready:**")


def test_rerank_compare_through_the_client(served, bert_cls_family):
    _, client, _ = served
    base, tuned = str(bert_cls_family[0]), str(bert_cls_family[1])
    docs = ["the model said hello", "world", "hello"]
    status, table, chart, metrics, loaded = client.predict(
        base, tuned, "the model", "+ " + "\n".join(docs), None, "cpu", False, api_name="/rerank_compare")
    from core.rerank.model import load_reranker

    expected = dict(zip(docs, load_reranker(tuned).score("the model", docs)))
    columns = table["headers"]
    rows = [dict(zip(columns, row)) for row in table["data"]]
    assert sorted(r["passage"] for r in rows) == sorted(docs)
    for row in rows:
        assert row["B score"] == pytest.approx(expected[row["passage"]], abs=1e-4)
    assert "MRR@10" in [row[0] for row in metrics["data"]]
    assert "Scores are **logit**" in status and "bert-cls-1" in loaded


def test_only_plan_merge_and_the_compare_endpoints_are_public(served):
    _, client, _ = served
    api = client.view_api(print_info=False, return_format="dict")
    named = set(api["named_endpoints"])
    assert named == {"/plan", "/merge", "/rerank_compare", "/rerank_evaluate", "/generate_compare",
                     "/likelihood_compare"}
    hidden = {"/refresh_gauge", "/refresh_models", "/on_yaml", "/on_method", "/on_example", "/stop", "/push",
              "/make_zip", "/export_recipe", "/handler", "/lambda", "/draw_rows"}
    assert not named & hidden
    assert api["unnamed_endpoints"] == {}
    merge_params = [p["parameter_name"] for p in api["named_endpoints"]["/merge"]["parameters"]]
    assert merge_params == ["recipe_yaml", "output_name", "device", "overwrite", "seed"]


def test_the_page_draws_the_form_and_its_events_update_the_recipe(served):
    _, _, blocks = served
    session = uuid.uuid4().hex[:10]
    render = next(i for i, fn in blocks.fns.items() if fn.renderable and fn.renderable.fn.__name__ == "draw_rows")
    drawn = completed(blocks, render, [None, None], session)["render_config"]
    controls = [(c["type"], c["props"].get("label")) for c in drawn["components"]
                if c["type"] in ("dropdown", "slider", "checkbox")]
    assert controls == [("dropdown", "Model 1"), ("slider", "weight"), ("dropdown", "Model 2"),
                        ("slider", "weight"), ("checkbox", "normalize")]  # linear's declarations
    add = next(c["id"] for c in drawn["components"] if c["props"].get("value") == "+ Add a model")
    click = next(d["id"] for d in drawn["dependencies"] if [add, "click"] in d["targets"])
    assert all(d["api_visibility"] == "private" for d in drawn["dependencies"])
    result = completed(blocks, click, [None, None], session)
    recipe_text = result["data"][2]
    assert recipe_text.count("- model:") == 3 and result["changed_state_ids"]
