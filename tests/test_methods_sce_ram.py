"""SCE, RAM and RAM+ (tensor-local): exact values against formulas written here, mergekit's tensors
end to end, block streaming that changes nothing, and their place in the CLI, the form and the Methods panel.

The numpy references spell each method out entry by entry (mergekit 0.1.5's semantics), sharing no
code with core/merge/methods/. mergekit parity runs mergekit-yaml on the same recipes (skipped
without it, as in tests/test_mergekit_parity.py).
"""
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core.cli.main import main
from core.errors import RecipeError
from core.io.checkpoint import Checkpoint
from core.merge import plan as planner
from core.merge.engine import merge
from core.merge.methods import METHODS
from core.merge.methods.sce import variance
from core.merge.recipe import recipe_from_dict
from tests.test_mergekit_parity import MERGEKIT, MERGEKIT_ALL, bf16_ulps, models, tensors
from ui.merge.recipe_form import global_params, new_form, slider_range, slider_step
from ui.methods_panel import methods_markdown

NAMES = ("sce", "ram", "ramplus_tl")
RNG = np.random.default_rng(13)


def run(name, rows, base, **params):
    """Call the registered method on one whole tensor, as the engine's single block does."""
    stack = torch.tensor(np.stack(rows), dtype=torch.float32)
    return METHODS[name].merge(stack, torch.tensor(base, dtype=torch.float32), **params).numpy()


def family(n=3, shape=(7, 6), scale=0.1):
    base = RNG.normal(size=shape).astype(np.float32)
    return base, [base + (scale * RNG.normal(size=shape)).astype(np.float32) for _ in range(n)]


def ref_sce(base, rows, select_topk):
    """SCE entry by entry: select by variance, weights from mean squares, TIES signs, weighted mean."""
    deltas = np.stack([x - base for x in rows]).astype(np.float64)  # (n, *shape)
    n, flat = len(rows), deltas.reshape(len(rows), -1)
    if select_topk < 1:
        variance = [np.mean((flat[:, j] - flat[:, j].mean()) ** 2) for j in range(flat.shape[1])]
        nonzero = sum(v != 0 for v in variance)
        k = int(np.float32(nonzero) * np.float32(select_topk)) if select_topk > 0 else 0
        chosen = sorted(range(flat.shape[1]), key=lambda j: -variance[j])[:k]
        keep = np.zeros(flat.shape[1])
        keep[chosen] = 1
        flat = flat * keep
    means = [np.mean(flat[i] ** 2) for i in range(n)]
    weights = [1 / n] * n if abs(sum(means)) < 1e-6 else [m / sum(means) for m in means]
    out = []
    for j in range(flat.shape[1]):
        elected = 1.0 if flat[:, j].sum() >= 0 else -1.0
        kept = [i for i in range(n) if np.sign(flat[i, j]) == elected]
        total = sum(weights[i] * flat[i, j] for i in kept)
        out.append(total / max(sum(weights[i] for i in kept), 1e-6))
    return base + np.array(out).reshape(base.shape)


def ref_ram(base, rows, epsilon, r=0.0, alpha=0.0):
    """RAM entry by entry; with r, RAM+'s λ_i = 1 + r·clip(shared_i / max(unique_i, ε), 0, α) on unique entries."""
    deltas = np.stack([x - base for x in rows]).astype(np.float64).reshape(len(rows), -1)
    changed = np.abs(deltas) > epsilon
    counts = changed.sum(axis=0)
    shared = [int((changed[i] & (counts > 1)).sum()) for i in range(len(rows))]
    unique = [int((changed[i] & (counts == 1)).sum()) for i in range(len(rows))]
    lam = [1 + r * min(max(s / max(u, epsilon), 0), alpha) for s, u in zip(shared, unique)]
    out = []
    for j in range(deltas.shape[1]):
        present = [i for i in range(len(rows)) if changed[i, j]]
        if len(present) == 1:
            out.append(lam[present[0]] * deltas[present[0], j])
        else:
            out.append(sum(deltas[i, j] for i in present) / max(len(present), 1))
    return base + np.array(out).reshape(base.shape)


def test_sce_on_a_hand_made_case():
    """w = mean squares [1.5, 2.5] / 4; entry 1 ties (Σ d = 0 → +), entry 2 keeps no model, entry 3 mixes both."""
    got = run("sce", [np.array([2., 1., 0., 1.]), np.array([0., -1., 0., 3.])], np.zeros(4), select_topk=1.0)
    np.testing.assert_allclose(got, [2.0, 1.0, 0.0, 0.375 * 1 + 0.625 * 3], rtol=1e-6)


@pytest.mark.parametrize("select_topk", [1.0, 0.6, 0.25, 0.0])
def test_sce_matches_its_formula(select_topk):
    base, rows = family()
    np.testing.assert_allclose(run("sce", rows, base, select_topk=select_topk), ref_sce(base, rows, select_topk),
                               atol=1e-6)


def test_sce_selection_keeps_the_entries_where_models_disagree_most():
    """With select_topk 0.5 of 4 entries of varying variance, the two most disputed survive, the rest is the base."""
    base = np.zeros(4, dtype=np.float32)
    rows = [np.array([1., 0.1, -2., 0.3], dtype=np.float32), np.array([1.2, 0.1, 2., -0.3], dtype=np.float32)]
    got = run("sce", rows, base, select_topk=0.5)
    assert got[0] == got[1] == 0  # variances 0.01 and 0: not selected
    np.testing.assert_allclose(got, ref_sce(base, rows, 0.5), atol=1e-7)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_sce_variance_is_torch_var_bit_for_bit(n):
    """mergekit ranks by torch.var; SCE's faster variance must rank the same values."""
    gen = torch.Generator().manual_seed(n)
    for deltas in (0.01 * torch.randn(n, 64, 129, generator=gen) + 0.3,
                   torch.randint(-3, 4, (n, 50, 7), generator=gen).float() / 3,
                   torch.randn(n, 1000, generator=gen) * torch.logspace(-30, 30, 1000)):
        assert torch.equal(variance(deltas), torch.var(deltas, dim=0, unbiased=False))


@pytest.mark.parametrize("name,setting,problem", [
    ("sce", {"select_topk": 1.5}, r"'select_topk' = 1.5 is outside its range \[0, 1\]"),
    ("ram", {"epsilon": -0.1}, r"'epsilon' = -0.1 is outside its range \[0, inf\)"),
    ("ramplus_tl", {"alpha": -1}, r"'alpha' = -1 is outside its range \[0, inf\)")])
def test_values_mergekit_would_misread_are_refused_in_one_line(name, setting, problem):
    with pytest.raises(RecipeError, match=problem):
        recipe_from_dict({"merge_method": name, "base_model": "org/base", "models": [{"model": "org/a"}],
                          "parameters": setting})


def test_ram_on_a_hand_made_case():
    """ε 0.1: entry 0 is shared (mean), entry 1 is below ε, entry 2 cancels, entry 3 only model 2 changed."""
    got = run("ram", [np.array([1., 0.05, 2., 0.]), np.array([3., 0., -2., 0.5])], np.zeros(4), epsilon=0.1)
    np.testing.assert_allclose(got, [2.0, 0.0, 0.0, 0.5])


@pytest.mark.parametrize("r,alpha,lam", [(0.1, 0.2, 1.02), (0.5, 5.0, 2.0)])
def test_ramplus_on_a_hand_made_case(r, alpha, lam):
    """Model 2 shares 2 entries and alone changed 1: ρ₂ = 2, λ₂ = 1 + r·min(2, α) scales its unique entry."""
    rows = [np.array([1., 0.05, 2., 0.]), np.array([3., 0., -2., 0.5])]
    got = run("ramplus_tl", rows, np.zeros(4), r=r, alpha=alpha, epsilon=0.1)
    np.testing.assert_allclose(got, [2.0, 0.0, 0.0, 0.5 * lam], rtol=1e-6)


@pytest.mark.parametrize("epsilon", [1e-5, 0.05, 0.12])
def test_ram_matches_its_formula(epsilon):
    base, rows = family()
    np.testing.assert_allclose(run("ram", rows, base, epsilon=epsilon), ref_ram(base, rows, epsilon), atol=1e-6)


@pytest.mark.parametrize("r,alpha,epsilon", [(0.1, 0.2, 1e-5), (0.7, 3.0, 0.08), (-0.5, 1.0, 0.12)])
def test_ramplus_matches_its_formula(r, alpha, epsilon):
    base, rows = family()
    np.testing.assert_allclose(run("ramplus_tl", rows, base, r=r, alpha=alpha, epsilon=epsilon),
                               ref_ram(base, rows, epsilon, r, alpha), atol=1e-6)


def test_ramplus_with_epsilon_zero_and_a_model_that_changes_nothing_stays_finite():
    """0 shared / 0 unique: that model's λ is never used (mergekit writes NaN here)."""
    base = np.zeros(3, dtype=np.float32)
    got = run("ramplus_tl", [base.copy(), np.array([1., 0., 2.], dtype=np.float32)], base, r=0.1, alpha=0.2,
              epsilon=0.0)
    np.testing.assert_allclose(got, [1.0, 0.0, 2.0])


# --- blocks -------------------------------------------------------------------------------------

def blocks_of(stack, base, rows):
    """read() for merge_blocks: fresh copies of consecutive `rows`-row blocks, as the engine hands them over."""
    return lambda: [(stack[:, i:i + rows].clone(), base[i:i + rows].clone()) for i in range(0, base.shape[0], rows)]


PARAMS = {"sce": [{"select_topk": 0.3}, {"select_topk": 1.0}], "ram": [{"epsilon": 0.5}],
          "ramplus_tl": [{"r": 0.5, "alpha": 1.0, "epsilon": 0.5}]}


@pytest.mark.parametrize("name,params", [(n, p) for n in NAMES for p in PARAMS[n]])
def test_a_tensor_in_blocks_of_rows_merges_as_one_block(name, params):
    """Integer-valued changes make many equal variances at SCE's cutoff: the kept ones must not depend on the split."""
    base = torch.randn(301, 37)
    stack = base + torch.randint(-2, 3, (3, 301, 37)).float()
    method = METHODS[name]
    assert method.in_blocks({**params, "int8_mask": False})
    whole = torch.cat(list(method.merge_blocks(blocks_of(stack, base, 301), base.shape, **params)))
    assert torch.equal(whole, method.merge(stack.clone(), base.clone(), **params))
    for rows in (1, 7, 100):
        split = torch.cat(list(method.merge_blocks(blocks_of(stack, base, rows), base.shape, **params)))
        assert torch.equal(split, whole), rows


def recipe(name, base, a, b):
    parameters = {"sce": {"select_topk": [{"filter": "mlp", "value": 0.3}, {"value": 0.7}]},
                  "ram": {"epsilon": 0.008}, "ramplus_tl": {"r": 0.5, "alpha": 1.0, "epsilon": 0.008}}[name]
    return {"merge_method": name, "base_model": str(base), "models": models((a, None), (b, None)),
            "parameters": parameters, "dtype": "float32"}


def weights(folder):
    return tensors(Path(folder))


@pytest.mark.parametrize("name", NAMES)
def test_the_engine_in_blocks_gives_the_whole_tensor_merge(name, llama_family, tmp_path, monkeypatch):
    spec = recipe_from_dict(recipe(name, *llama_family))
    whole = weights(merge(spec, tmp_path / "whole"))
    monkeypatch.setattr(planner, "CHUNK_ELEMENTS", 100)  # every matrix now goes in blocks of rows
    listings = {ref: Checkpoint.open(ref).tensors for ref in spec.inputs()}
    assert any(job.rows_per_chunk for job in planner.plan_merge(spec, listings).jobs)
    chunked = weights(merge(spec, tmp_path / "chunked"))
    assert whole.keys() == chunked.keys() and all(torch.equal(whole[n], chunked[n]) for n in whole)


# --- mergekit -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mergekit_outputs(tmp_path_factory, llama_family, llama_bf16_family):
    """{(method, dtype): (recipe, mergekit's output folder)}, all merged by one mergekit process."""
    if not Path(MERGEKIT).is_file():
        pytest.skip(f"mergekit not found at MERGEKIT_YAML={MERGEKIT!r} nor on PATH")
    root = tmp_path_factory.mktemp("mergekit_sce_ram")
    args, cases = [], {}
    for name in NAMES:
        for dtype, folders in (("float32", llama_family), ("bfloat16", llama_bf16_family)):
            cases[name, dtype] = {**recipe(name, *folders), "dtype": dtype}
            (root / f"{name}-{dtype}.yml").write_text(yaml.safe_dump(cases[name, dtype]))
            args += [str(root / f"{name}-{dtype}.yml"), str(root / f"{name}-{dtype}")]
    python = Path(MERGEKIT).read_text().splitlines()[0].removeprefix("#!").strip()
    done = subprocess.run([python, "-c", MERGEKIT_ALL, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {case: (spec, root / f"{case[0]}-{case[1]}") for case, spec in cases.items()}


def both(case, outputs, tmp_path):
    """(MergeDesk's tensors, mergekit's tensors) for one (method, dtype) case."""
    spec, theirs = outputs[case]
    mine, theirs = weights(merge(recipe_from_dict(spec), tmp_path / "ours")), weights(theirs)
    assert set(mine) == set(theirs)
    return mine, theirs


@pytest.mark.parametrize("name", NAMES)
def test_same_tensors_as_mergekit(name, mergekit_outputs, tmp_path):
    mine, theirs = both((name, "float32"), mergekit_outputs, tmp_path)
    for tensor_name, tensor in theirs.items():
        assert mine[tensor_name].dtype == tensor.dtype, tensor_name
        torch.testing.assert_close(mine[tensor_name], tensor, atol=2e-6, rtol=1e-5, msg=f"{name}: {tensor_name}")


@pytest.mark.parametrize("name", NAMES)
def test_bf16_differs_from_mergekit_at_few_elements(name, mergekit_outputs, llama_bf16_family, tmp_path):
    """Deliberate (README "Methods"): float32 arithmetic on bf16 inputs. mergekit's changes are bf16-rounded,
    so a change at RAM's epsilon or SCE's cutoff can fall the other side; measured 0.08-0.12% of the
    elements past 4 bf16 ulps of the largest input, bounded here at 0.5%. mergekit writes ramplus_tl's
    tensors in float32 (its float32 λ promotes them); MergeDesk keeps the recipe's dtype."""
    mine, theirs = both((name, "bfloat16"), mergekit_outputs, tmp_path)
    inputs = [tensors(folder) for folder in llama_bf16_family]
    beyond = total = 0
    for tensor_name, tensor in theirs.items():
        assert mine[tensor_name].dtype == torch.bfloat16
        assert tensor.dtype == (torch.float32 if name == "ramplus_tl" else torch.bfloat16), tensor_name
        theirs[tensor_name] = tensor.to(torch.bfloat16)
        beyond += int((bf16_ulps(mine, theirs, inputs, tensor_name) > 4).sum())
        total += tensor.numel()
    assert beyond <= 0.005 * total


# --- where people see them ----------------------------------------------------------------------

DECLARED = {"sce": {"select_topk", "int8_mask"}, "ram": {"epsilon"}, "ramplus_tl": {"r", "alpha", "epsilon"}}


@pytest.mark.parametrize("name", NAMES)
def test_listed_by_the_cli_the_form_and_the_methods_panel(name, capsys):
    assert {p.name for p in METHODS[name].params} == DECLARED[name]
    assert main(["methods"]) == 0  # python -m core methods
    lines = capsys.readouterr().out.splitlines()
    start = lines.index(f"{name}: {METHODS[name].label} — takes a base model + at least 1 other model")
    listed = []
    for line in lines[start + 2:]:  # past the header and the paper link: the indented parameter lines
        if not line.startswith("    "):
            break
        listed.append(line.split()[0])
    assert set(listed) == DECLARED[name]
    assert {p.name for p in global_params(new_form(name))} == DECLARED[name]  # the form's global controls
    panel = methods_markdown().split(f"— `{name}`", 1)[1].split("### ", 1)[0]
    assert all(f"| `{param}` | global |" in panel for param in DECLARED[name])


def test_the_form_slides_ram_epsilon_finely():
    """A slider of 0.01 steps over [0, 0.01] could only say 0 or 0.01."""
    low, high = slider_range(METHODS["ram"].param("epsilon"))
    assert (low, high) == (0.0, 0.01) and slider_step(low, high) == pytest.approx(1e-4)
