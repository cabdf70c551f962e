"""The sweep's seed spread (`--seeds K`, the Sweep tab's Seeds box): each α of a random method merged with K
seeds, summarized per set; deterministic methods merged once.

The reference is computed here on its own: each seed's merge written by the engine (core.merge.engine.merge,
seed=s), loaded and scored with core.rerank.compare, then min / max / mean by hand and the 95% interval
with scipy's t quantile.
"""
import json
import math
import statistics

import gradio as gr
import httpx
import pytest
from scipy import stats

from core.__main__ import main
from core.app.workspace import Workspace
from core.cocktail.spread import sweep_seeds, t_quantile
from core.cocktail.sweep import SweepResult, sweep, sweep_recipe
from core.errors import RerankError
from core.merge.engine import merge
from core.rerank.compare import QueryItem, compare
from core.rerank.model import load_reranker
from tests.app_server import browser_event, fn_index, launched, local_workspace
from ui.sweep.panel import run_sweep
from ui.sweep.plot import sweep_figure

DOCS = ["hello world", "the model said", "good day", "time way", "merge model", "the way", "her", "new year",
        "it is a model", "no", "she will call", "so good"]
SETS = {"one": [QueryItem("the model", DOCS, [0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0]),
                QueryItem("merge", DOCS, [0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1])],
        "two": [QueryItem("call me", DOCS, [0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0])]}
SEEDS, ALPHA, DENSITY = 4, 0.9, 0.3


def reference(a, b, method, tmp_path, metric, set_name):
    """Per seed: the engine's merge on disk, scored on its own; then the spread by hand and scipy."""
    values = []
    for seed in range(SEEDS):
        folder = merge(sweep_recipe(method, a, b, ALPHA, DENSITY), tmp_path / f"{method}-{seed}", seed=seed)
        values.append(compare([load_reranker(str(folder), cached=False)], SETS[set_name]).metrics[metric][0])
    mean = sum(values) / SEEDS
    half = stats.t.ppf(0.975, SEEDS - 1) * statistics.stdev(values) / math.sqrt(SEEDS)
    return values, {"mean": mean, "min": min(values), "max": max(values), "low": mean - half, "high": mean + half}


def write_set(folder):
    """SETS["one"] as a labelled JSONL file."""
    path = folder / "one.jsonl"
    path.write_text("\n".join(json.dumps({"query": q.query, "docs": q.docs, "labels": q.labels})
                              for q in SETS["one"]), encoding="utf-8")
    return path


@pytest.mark.parametrize("method", ["dare_linear", "della_linear"])
def test_the_spread_is_what_k_separately_seeded_merges_score(bert_cls_family, tmp_path, method):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    result = sweep(a, b, SETS, alphas=[ALPHA], method=method, seeds=SEEDS, density=DENSITY, mode="memory")
    assert result.seeds == [0, 1, 2, 3] and len(result.points) == SEEDS * len(SETS)
    for set_name in SETS:
        values, expected = reference(a, b, method, tmp_path / set_name, "nDCG@10", set_name)
        [spread] = result.spread(set_name, "nDCG@10")
        assert [p.metrics["nDCG@10"] for p in result.points if p.set_name == set_name] == pytest.approx(values)
        assert spread.to_dict() == pytest.approx({**expected, "seeds": SEEDS})
    assert any(s.max > s.min for name in SETS for s in result.spread(name, "nDCG@10"))  # the seeds do differ


def test_the_cli_prints_the_spread_of_disk_merges(bert_cls_family, tmp_path, capsys):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    path = write_set(tmp_path)
    main(["sweep", "--model-a", a, "--model-b", b, "--set", str(path), "--alphas", str(ALPHA), "--method",
          "dare_linear", "--seeds", str(SEEDS), "--density", str(DENSITY), "--mode", "disk", "--json"])
    data = json.loads(capsys.readouterr().out)
    _, expected = reference(a, b, "dare_linear", tmp_path, "MRR@10", "one")
    [row] = [r for r in data["spread"] if r["metric"] == "MRR@10"]
    assert {k: row[k] for k in expected} == pytest.approx(expected) and row["seeds"] == SEEDS
    read_back = SweepResult.from_dict(data).spread("one", "MRR@10")[0]  # the points, summarized again
    assert read_back.to_dict() == pytest.approx({**expected, "seeds": SEEDS})
    main(["sweep", "--model-a", a, "--model-b", b, "--set", str(path), "--alphas", "0.5", "--method", "linear",
          "--seeds", "3"])
    assert "linear is deterministic: seeds do not apply, one merge per α" in capsys.readouterr().out


def test_deterministic_methods_merge_once_with_zero_width(bert_cls_family):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    result = sweep(a, b, SETS, alphas=[0.5], method="linear", seeds=3, mode="memory")
    assert result.seeds == [0] and len(result.points) == len(SETS)
    for name in SETS:
        [spread] = result.spread(name, "nDCG@10")
        assert spread.seeds == 1 and spread.min == spread.max == spread.low == spread.high == spread.mean


def test_seeds_are_checked_and_the_t_quantile_matches_scipy():
    assert sweep_seeds("dare_linear", 3.0) == [0, 1, 2] and sweep_seeds("slerp", 3) == [0]
    for bad in (0, 1.5, True, 51):
        with pytest.raises(RerankError, match="whole number of seeds from 1 to 50"):
            sweep_seeds("dare_linear", bad)
    for freedom in (1, 2, 4, 9, 30):
        assert t_quantile(0.975, freedom) == pytest.approx(stats.t.ppf(0.975, freedom), rel=1e-9)


def test_the_sweep_tab_shows_the_seeds_mean_and_band(bert_cls_family, tmp_path):
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    workspace = Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs")
    path = write_set(tmp_path)
    steps = list(run_sweep(a, b, "dare_linear", "cpu", [], [str(path)], f"0, {ALPHA}", workspace, seeds=SEEDS,
                           density=0.3))
    status, figure, table, _, result = steps[-2]
    assert "2/2" in status and "seeds 0 … 3" in steps[-1][0]
    expected = sweep(a, b, {"one": SETS["one"]}, alphas=[0, ALPHA], method="dare_linear", seeds=SEEDS,
                     density=0.3)  # the tab's Density slider
    assert result["density"] == 0.3
    spread = expected.spread("one", "nDCG@10")
    assert list(table["one nDCG@10 min"]) == [round(s.min, 4) for s in spread]
    assert list(table["one nDCG@10 max"]) == [round(s.max, 4) for s in spread]
    upper, lower, curve = figure.data[:3]  # the nDCG@10 panel: band (max, then min filled up to it), mean
    assert list(upper.y) == [s.max for s in spread] and list(lower.y) == [s.min for s in spread]
    assert lower.fill == "tonexty" and list(curve.y) == pytest.approx([s.mean for s in spread])
    assert spread[0].max == spread[0].min  # α = 0 is model A whatever the seed: a band of no width there
    assert result["seeds"] == [0, 1, 2, 3]
    steps = list(run_sweep(a, b, "linear", "cpu", [], [str(path)], "0.5", workspace, seeds=3))
    assert "linear is deterministic: seeds do not apply" in steps[-1][0]
    assert len(sweep_figure(SweepResult.from_dict(steps[-2][4])).data) == 2  # one curve per metric, no band


def test_the_seeds_box_reaches_the_sweep_through_the_served_page(bert_cls_family, tmp_path):
    """The Seeds value travels after the workspace and the request gradio slots in (run_sweep's signature)."""
    a, b = str(bert_cls_family[0]), str(bert_cls_family[1])
    with launched(local_workspace(tmp_path)) as (blocks, _):
        index = fn_index(blocks, "run_sweep")
        names = [getattr(block, "label", None) for block in blocks.fns[index].inputs]
        assert names[-2:] == ["Seeds", "Density"]
        with open(write_set(tmp_path), "rb") as file:  # uploaded as the page does: into gradio's upload folder
            [uploaded] = httpx.post(f"{blocks.local_url}gradio_api/upload", files={"files": file}).json()
        upload = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
        data = [a, b, "dare_linear", "cpu", [], [upload], "0.5", None, 2, 0.5]
        reply = browser_event(blocks, index, data, "seeds", timeout=300)
    assert reply["success"], reply
    assert "Each α merged with seeds 0 … 1" in json.dumps(reply["output"], ensure_ascii=False)


def test_a_density_outside_zero_to_one_is_refused_in_one_line_before_merging(bert_cls_family, tmp_path):
    workspace = Workspace(tmp_path, tmp_path / "models", tmp_path / "outputs")
    with pytest.raises(gr.Error, match=r"'density' = 5 is outside its range \[0, 1\]"):
        next(run_sweep(str(bert_cls_family[0]), str(bert_cls_family[1]), "dare_linear", "cpu", [],
                       [str(write_set(tmp_path))], "0.5", workspace, density=5))
