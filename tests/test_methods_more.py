"""multislerp, karcher, nearswap and arcee_fusion: values against formulas written here (numpy, float64,
sharing no code with core/merge/methods/), tensors against mergekit-yaml on the same recipes, and the
declarations reaching the CLI, the form and the Methods panel.
"""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from core.cli.main import main
from core.errors import RecipeError
from core.merge.engine import merge
from core.merge.methods import METHODS
from core.merge.recipe import recipe_from_dict
from tests import test_mergekit_parity as parity
from ui.merge.recipe_form import global_params, new_form, row_params
from ui.methods_panel import methods_markdown

RNG = np.random.default_rng(7)
SHAPE = (6, 5)


def run(name, rows, base=None, **params):
    stack = torch.tensor(np.stack(rows), dtype=torch.float32)
    base_t = None if base is None else torch.tensor(base, dtype=torch.float32)
    return METHODS[name].merge(stack, base_t, generator=None, **params).numpy()


def family(n, scale=0.3):
    base = RNG.normal(size=SHAPE).astype(np.float32)
    return base, [base + scale * RNG.normal(size=SHAPE).astype(np.float32) for _ in range(n)]


def unit(v):
    return v / np.linalg.norm(v)


def ref_multislerp(rows, weights, base=None):
    """Goddard's multislerp: tangent step at the weighted mean direction, exponential map back, mean norm."""
    xs = [(x if base is None else x - base).astype(np.float64).ravel() for x in rows]
    w = np.array(weights, dtype=np.float64) / sum(weights)
    us = [unit(x) for x in xs]
    m = unit(sum(wi * u for wi, u in zip(w, us)))
    s = sum(wi * (u - (u @ m) * m) for wi, u in zip(w, us))
    r = np.linalg.norm(s)
    out = (np.cos(r) * m + np.sin(r) / r * s) * sum(wi * np.linalg.norm(x) for wi, x in zip(w, xs))
    return out.reshape(SHAPE) + (0 if base is None else base)


def ref_karcher(rows, iterations=200):
    """The Karcher mean of the unit vectors by gradient steps m ← Exp_m(mean of Log_m(uᵢ)), times the mean norm."""
    xs = [x.astype(np.float64).ravel() for x in rows]
    us = [unit(x) for x in xs]
    m = unit(sum(us))
    for _ in range(iterations):
        logs = []
        for u in us:
            theta = np.arccos(np.clip(u @ m, -1, 1))
            logs.append(theta / np.sin(theta) * (u - np.cos(theta) * m) if theta > 1e-12 else 0 * m)
        v = sum(logs) / len(us)
        r = np.linalg.norm(v)
        if r < 1e-14:
            break
        m = unit(np.cos(r) * m + np.sin(r) * v / r)
    return (m * np.mean([np.linalg.norm(x) for x in xs])).reshape(SHAPE)


@pytest.mark.parametrize("with_base", [False, True])
def test_multislerp_is_the_tangent_space_mean(with_base):
    base, rows = family(3)
    weights = [0.5, 0.3, 0.2]
    got = run("multislerp", rows, base if with_base else None, weight=weights, normalize_weights=True, eps=1e-8)
    np.testing.assert_allclose(got, ref_multislerp(rows, weights, base if with_base else None), atol=1e-5)


def test_multislerp_of_one_model_is_that_model_and_of_antipodes_is_linear():
    base, rows = family(1)
    np.testing.assert_array_equal(run("multislerp", rows, base, weight=[2.0], normalize_weights=True, eps=1e-8),
                                  rows[0])
    x = rows[0]
    got = run("multislerp", [x, -x], weight=[1.0, 1.0], normalize_weights=False, eps=1e-8)
    np.testing.assert_allclose(got, x - x, atol=1e-6)  # Σ wᵢxᵢ where the mean direction vanishes


def test_multislerp_where_no_model_changed_the_base_gives_the_base():
    """mergekit stops the merge there (no mean direction); every model agreeing means the base."""
    base, _ = family(0)
    got = run("multislerp", [base, base, base], base, weight=[1.0, 2.0, 3.0], normalize_weights=True, eps=1e-8)
    np.testing.assert_array_equal(got, base)


PARAMS = {"multislerp": {"weight": [1.0, 1.0, 1.0], "normalize_weights": True, "eps": 1e-8},
          "karcher": {"max_iter": 10, "tol": 1e-5}, "nearswap": {"t": 0.1}, "arcee_fusion": {}}


@pytest.mark.parametrize("shape", [(0, 5), (), (7,)])
@pytest.mark.parametrize("name", list(PARAMS))
def test_empty_scalar_and_vector_tensors_keep_their_shape(name, shape):
    rows = 1 if METHODS[name].max_inputs == 1 else 3
    merged = METHODS[name].merge(torch.ones((rows, *shape)), torch.zeros(shape), generator=None, **PARAMS[name])
    assert merged.shape == shape and bool(torch.isfinite(merged).all())


def test_karcher_is_the_riemannian_mean():
    _, rows = family(3, scale=1.0)
    got = run("karcher", rows, max_iter=100, tol=1e-7)
    np.testing.assert_allclose(got, ref_karcher(rows), atol=1e-5)


def test_karcher_of_two_models_is_their_slerp_midpoint():
    _, (a, b) = family(2, scale=1.0)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    midpoint = unit(unit(a64.ravel()) + unit(b64.ravel())) * (np.linalg.norm(a64) + np.linalg.norm(b64)) / 2
    np.testing.assert_allclose(run("karcher", [a, b], max_iter=10, tol=1e-5), midpoint.reshape(SHAPE), atol=1e-5)


def test_nearswap_takes_near_values_and_moves_far_ones_by_t():
    base, (x,) = family(1)
    t = 0.2
    expected = np.empty(SHAPE)
    for idx in np.ndindex(SHAPE):
        d = abs(float(x[idx]) - float(base[idx]))
        w = 1.0 if d <= t else t / d  # within t: the other's value; beyond: a step of length t towards it
        expected[idx] = w * x[idx] + (1 - w) * base[idx]
    np.testing.assert_allclose(run("nearswap", [x], base, t=t), expected, atol=1e-6)


def ref_arcee_fusion(base, x):
    b, x = base.astype(np.float64), x.astype(np.float64)
    soft = lambda v: np.exp(v - v.max(axis=-1, keepdims=True)) / np.exp(v - v.max(axis=-1, keepdims=True)).sum(
        axis=-1, keepdims=True)
    p, q = soft(x) + 1e-8, soft(b) + 1e-8
    importance = np.abs(x - b) * (p * np.log(p / q)).sum(axis=-1, keepdims=True)
    ordered, last = np.sort(importance.ravel()), importance.size - 1
    q1, q2, q3 = ordered[int(0.25 * last)], ordered[int(0.5 * last)], ordered[int(0.75 * last)]
    return np.where(importance >= q2 + 1.5 * (q3 - q1), x, b)


def test_arcee_fusion_keeps_only_the_outlying_changes():
    base, (x,) = family(1, scale=1.0)
    x[2, 3] += 6.0  # one large change in a row with a large divergence: an outlier it must keep
    got = run("arcee_fusion", [x], base)
    expected = ref_arcee_fusion(base, x)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    kept = got != base
    assert kept[2, 3] and 0 < kept.sum() < kept.size


def test_only_nearswap_may_be_streamed_in_blocks():
    """The others read whole-tensor norms or quantiles: a block alone would give other values."""
    assert METHODS["nearswap"].in_blocks({"t": 0.1})
    for name, params in (("multislerp", {"weight": [1, 1]}), ("karcher", {}), ("arcee_fusion", {})):
        assert not METHODS[name].in_blocks(params)
    base, (x,) = family(1, scale=1.0)
    x[2, 3] += 6.0
    halves = np.concatenate([run("arcee_fusion", [x[:3]], base[:3]), run("arcee_fusion", [x[3:]], base[3:])])
    assert (halves != run("arcee_fusion", [x], base)).any()


def test_bad_settings_are_refused_before_anything_is_written(llama_family, tmp_path):
    base, a, b = (str(folder) for folder in llama_family)
    bad = {"weights [1.0, -1.0] sum to 0 but normalize_weights is on": {
               "merge_method": "multislerp", "models": [{"model": a, "parameters": {"weight": 1}},
                                                        {"model": b, "parameters": {"weight": -1}}]},
           "max_iter must be a whole number, got 2.5": {
               "merge_method": "karcher", "models": [{"model": a}, {"model": b}], "parameters": {"max_iter": 2.5}},
           "'t' = -0.1 is outside its range": {
               "merge_method": "nearswap", "base_model": base, "models": [{"model": a}], "parameters": {"t": -0.1}}}
    for problem, spec in bad.items():
        with pytest.raises(RecipeError, match=problem.replace("[", r"\[").replace("]", r"\]")):
            merge(recipe_from_dict(spec), tmp_path / "out")
        assert not (tmp_path / "out").exists()


def test_multislerp_of_cancelling_directions_fails_and_leaves_nothing(llama_family, tmp_path):
    """Models x, −x and a third of weight 0: no mean direction, which mergekit refuses too."""
    _, a, c = llama_family
    mirror = tmp_path / "mirror"
    shutil.copytree(a, mirror)
    save_file({k: -v for k, v in parity.tensors(a).items()}, next(mirror.glob("*.safetensors")))
    spec = {"merge_method": "multislerp",
            "models": parity.models((a, {"weight": 1.0}), (mirror, {"weight": 1.0}), (c, {"weight": 0.0}))}
    with pytest.raises(RecipeError, match="multislerp: the weighted mean of the models' directions is zero"):
        merge(recipe_from_dict(spec), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def recipes(base, a, b):
    models = parity.models
    return {
        "multislerp": {"merge_method": "multislerp", "base_model": str(base),
                       "models": models((a, {"weight": 0.7}), (b, {"weight": [0.2, 0.9]}))},
        "multislerp_no_base": {"merge_method": "multislerp",
                               "models": models((base, {"weight": 1.0}), (a, {"weight": 0.5}), (b, {"weight": 0.3}))},
        "karcher": {"merge_method": "karcher", "models": models((base, None), (a, None), (b, None))},
        "nearswap": {"merge_method": "nearswap", "base_model": str(base), "models": models((base, None), (a, None)),
                     "parameters": {"t": 0.004}},
        "arcee_fusion": {"merge_method": "arcee_fusion", "base_model": str(base),
                         "models": models((base, None), (a, None))},
    }


@pytest.fixture(scope="module")
def mergekit_results(tmp_path_factory, llama_family):
    if not Path(parity.MERGEKIT).is_file():
        pytest.skip(f"mergekit not found at MERGEKIT_YAML={parity.MERGEKIT!r}")
    root = tmp_path_factory.mktemp("mergekit_more")
    args, cases = [], recipes(*llama_family)
    for case, spec in cases.items():
        (root / f"{case}.yml").write_text(yaml.safe_dump({**spec, "dtype": "float32"}))
        args += [str(root / f"{case}.yml"), str(root / case)]
    python = Path(parity.MERGEKIT).read_text().splitlines()[0].removeprefix("#!").strip()
    done = subprocess.run([python, "-c", parity.MERGEKIT_ALL, *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return {case: ({**spec, "dtype": "float32"}, root / case) for case, spec in cases.items()}


@pytest.mark.parametrize("case", list(recipes("b", "x", "y")))
def test_same_tensors_as_mergekit(case, mergekit_results, tmp_path):
    """float32: every tensor within 2e-6 + 1e-5·|x| of mergekit's (rounding of the same formula).

    Measured on llama_family: multislerp, nearswap and arcee_fusion bit-equal; karcher within 1.2e-7.
    """
    spec, theirs = mergekit_results[case]
    mine, theirs = parity.tensors(merge(recipe_from_dict(spec), tmp_path / "ours")), parity.tensors(theirs)
    assert set(mine) == set(theirs)
    changed = 0
    for name, tensor in theirs.items():
        torch.testing.assert_close(mine[name], tensor, atol=2e-6, rtol=1e-5, msg=f"{case}: {name}")
        changed += int((tensor != parity.tensors(Path(spec["models"][0]["model"]))[name]).any())
    assert changed  # the merge did something, so agreeing is not trivial


@pytest.mark.parametrize("name", ["multislerp", "karcher", "nearswap", "arcee_fusion"])
def test_the_cli_the_form_and_the_methods_panel_show_the_declaration(name, capsys):
    main(["methods"])
    listed = capsys.readouterr().out
    method = METHODS[name]
    assert f"{name}: {method.label}" in listed and all(p.name in listed for p in method.params)
    form = new_form(name, models=tuple(f"org/m{i}" for i in range(method.min_inputs + 1)))
    shown = [p.name for p in row_params(name)] + [p.name for p in global_params(form)]
    assert sorted(shown) == sorted(p.name for p in method.params)
    panel = methods_markdown()
    assert f"`{name}`" in panel and all(f"| `{p.name}` |" in panel for p in method.params)
