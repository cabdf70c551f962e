"""Every merge method against an independent reference written here, on small tensors.

The references use numpy and spell each paper's formula out element by element, so they
share no code with core/merge/methods/.
"""
import math

import numpy as np
import pytest
import torch

from core.merge.methods import METHODS, register
from core.merge.params import Param

RNG = np.random.default_rng(0)
SHAPE = (6, 5)


def run(name, rows, base=None, seed=0, **params):
    """Call a registered method the way the engine does (copies: methods may reuse the stack)."""
    stack = torch.tensor(np.stack(rows), dtype=torch.float32)
    base_t = None if base is None else torch.tensor(base, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    return METHODS[name].merge(stack, base_t, generator=generator, **params).numpy()


def family(n=2, scale=0.1):
    base = RNG.normal(size=SHAPE).astype(np.float32)
    return base, [base + scale * RNG.normal(size=SHAPE).astype(np.float32) for _ in range(n)]


def ref_task_vectors(base, rows, weights, *, keep_masks=None, consensus=False, normalize=False, lam=1.0):
    """Generalized task arithmetic, one element at a time."""
    deltas = [(x - base) * (1 if keep_masks is None else keep_masks[i]) for i, x in enumerate(rows)]
    out = np.array(base, dtype=np.float64)
    for idx in np.ndindex(base.shape):
        weighted = [w * d[idx] for w, d in zip(weights, deltas)]
        if consensus:
            majority = 1.0 if sum(weighted) >= 0 else -1.0
            kept = [(v, w) for v, w in zip(weighted, weights) if np.sign(v) == majority]
            total = sum(v for v, _ in kept)
            divisor = sum(w for _, w in kept) or 1.0
        else:
            total = sum(weighted)
            divisor = sum(weights) if abs(sum(weights)) >= 1e-8 else 1.0
        out[idx] += lam * (total / divisor if normalize else total)
    return out


def ref_top_k(values, density):
    flat = np.abs(values).ravel()
    k = max(1, int(density * flat.size))
    mask = np.zeros(flat.size)
    mask[np.argsort(-flat, kind="stable")[:k]] = 1
    return mask.reshape(values.shape)


def ref_slerp(t, v0, v1):
    a, b = v0.astype(np.float64).ravel(), v1.astype(np.float64).ravel()
    cos = np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)
    if abs(cos) > 0.9995:
        return (1 - t) * v0 + t * v1
    theta = math.acos(cos)
    return (math.sin((1 - t) * theta) * v0 + math.sin(t * theta) * v1) / math.sin(theta)


def test_linear_is_weighted_average_and_lm_cocktail_mix():
    _, rows = family(3)
    got = run("linear", rows, weight=[0.2, 0.3, 0.5], normalize=True)
    np.testing.assert_allclose(got, 0.2 * rows[0] + 0.3 * rows[1] + 0.5 * rows[2], rtol=1e-6)
    unnormalized = run("linear", rows, weight=[2.0, 1.0, 1.0], normalize=False)
    np.testing.assert_allclose(unnormalized, 2 * rows[0] + rows[1] + rows[2], rtol=1e-6)
    normalized = run("linear", rows, weight=[2.0, 1.0, 1.0], normalize=True)
    np.testing.assert_allclose(normalized, (2 * rows[0] + rows[1] + rows[2]) / 4, rtol=1e-6)


@pytest.mark.parametrize("normalize,lam", [(False, 1.0), (True, 1.0), (False, 0.7)])
def test_task_arithmetic(normalize, lam):
    base, rows = family(3)
    weights = [0.5, -0.25, 1.0]
    got = run("task_arithmetic", rows, base, weight=weights, normalize=normalize, **{"lambda": lam})
    np.testing.assert_allclose(got, ref_task_vectors(base, rows, weights, normalize=normalize, lam=lam), atol=1e-6)


@pytest.mark.parametrize("density", [1.0, 0.5, 0.2])
def test_ties_trims_by_magnitude_then_elects_signs(density):
    base, rows = family(3)
    weights = [0.6, 0.3, 0.8]
    masks = [ref_top_k(x - base, density) for x in rows]
    got = run("ties", rows, base, weight=weights, density=[density] * 3, normalize=True, rescale=False,
              int8_mask=False, **{"lambda": 1.0})
    expected = ref_task_vectors(base, rows, weights, keep_masks=masks, consensus=True, normalize=True)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_ties_sign_election_on_hand_made_case():
    base = np.zeros((1, 3), np.float32)
    rows = [np.array([[1.0, -2.0, 0.0]], np.float32), np.array([[-3.0, 1.0, 2.0]], np.float32)]
    got = run("ties", rows, base, weight=[1.0, 1.0], density=[1.0, 1.0], normalize=True, rescale=False,
              int8_mask=False, **{"lambda": 1.0})
    # entry 0: sum -2 → minus wins → -3/1; entry 1: sum -1 → -2/1; entry 2: only +2 → 2/1
    np.testing.assert_allclose(got, [[-3.0, -2.0, 2.0]])


def test_breadcrumbs_drops_outliers_and_small_values():
    base, rows = family(2)
    density, gamma = 0.5, 0.1
    masks = []
    for x in rows:
        flat = np.abs(x - base).ravel()
        keep, top = int(density * flat.size), int(gamma * flat.size)
        bottom = max(0, flat.size - keep - top)
        mask = np.zeros(flat.size)
        mask[np.argsort(flat, kind="stable")[bottom:bottom + keep]] = 1
        masks.append(mask.reshape(SHAPE))
    params = dict(weight=[0.5, 0.5], density=[density] * 2, gamma=[gamma] * 2, rescale=False, int8_mask=False)
    got = run("breadcrumbs", rows, base, normalize=False, **params, **{"lambda": 1.0})
    np.testing.assert_allclose(got, ref_task_vectors(base, rows, [0.5, 0.5], keep_masks=masks), atol=1e-6)
    got_ties = run("breadcrumbs_ties", rows, base, normalize=False, **params, **{"lambda": 1.0})
    expected = ref_task_vectors(base, rows, [0.5, 0.5], keep_masks=masks, consensus=True)
    np.testing.assert_allclose(got_ties, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_random_methods_at_full_density_are_their_deterministic_twins(name):
    base, rows = family(2)
    params = dict(weight=[0.7, 0.4], density=[1.0, 1.0], rescale=True, int8_mask=False, normalize=False)
    if name.startswith("della"):
        params["epsilon"] = [0.1, 0.1]
    got = run(name, rows, base, **params, **{"lambda": 1.0})
    expected = ref_task_vectors(base, rows, [0.7, 0.4], consensus=name in ("dare_ties", "della"))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_dare_keeps_density_fraction_rescales_l1_and_follows_the_seed():
    base = np.zeros((200, 200), np.float32)
    row = RNG.normal(size=(200, 200)).astype(np.float32)
    params = dict(weight=[1.0], density=[0.3], int8_mask=False, normalize=False, **{"lambda": 1.0})
    plain = run("dare_linear", [row], base, rescale=False, seed=1, **params)
    kept = plain != 0
    assert abs(kept.mean() - 0.3) < 0.01
    np.testing.assert_array_equal(plain[kept], row[kept])
    rescaled = run("dare_linear", [row], base, rescale=True, seed=1, **params)
    assert np.isclose(np.abs(rescaled).sum(), np.abs(row).sum(), rtol=1e-4)
    np.testing.assert_array_equal(rescaled != 0, kept)  # same seed, same mask
    other_seed = run("dare_linear", [row], base, rescale=False, seed=2, **params)
    assert (other_seed != 0).tolist() != kept.tolist()


def test_della_keeps_large_magnitudes_more_often():
    base = np.zeros((1, 1000), np.float32)
    row = np.linspace(0.001, 1, 1000, dtype=np.float32).reshape(1, 1000)
    params = dict(weight=[1.0], density=[0.5], epsilon=[0.4], rescale=False, int8_mask=False, normalize=False)
    kept = run("della_linear", [row], base, seed=3, **params, **{"lambda": 1.0}) != 0
    small, large = kept[0, :200].mean(), kept[0, -200:].mean()
    assert small < 0.3 < 0.7 < large  # probabilities span 0.1 … 0.9 across the ranks
    assert abs(kept.mean() - 0.5) < 0.05


def ref_della_probabilities(row, density, epsilon):
    """DELLA MagPrune keep-probabilities: from density − ε (smallest |x|) to density + ε (largest), by rank."""
    ranks = np.argsort(np.argsort(np.abs(row), kind="stable"), kind="stable")
    return density - epsilon + 2 * epsilon * ranks / (row.size - 1)


def test_della_keeps_each_rank_with_the_papers_probability():
    """4000 rows with the same 11 magnitudes (shuffled, signed): keep rate per rank = formula; values untouched."""
    width, n = 11, 4000
    magnitudes = RNG.permutation(np.arange(1, width + 1, dtype=np.float32)) * RNG.choice([-1, 1], width)
    delta = np.tile(magnitudes, (n, 1)).astype(np.float32)
    base = RNG.normal(size=delta.shape).astype(np.float32)
    params = dict(weight=[0.7], density=[0.5], epsilon=[0.3], rescale=False, int8_mask=False, normalize=False)
    got = run("della_linear", [base + delta], base, seed=4, **params, **{"lambda": 1.5})
    change = (got.astype(np.float64) - base) / (0.7 * 1.5)  # λ·w·mask·δ → mask·δ
    kept = np.abs(change) > 0.5
    np.testing.assert_allclose(change[kept], np.broadcast_to(delta, delta.shape)[kept], rtol=1e-5)
    expected = ref_della_probabilities(magnitudes, 0.5, 0.3)  # 0.2 … 0.8
    tolerance = 5 * np.sqrt(expected * (1 - expected) / n)  # 5 standard errors of a keep rate
    assert np.all(np.abs(kept.mean(axis=0) - expected) <= tolerance), (kept.mean(axis=0), expected)


def test_della_rescale_restores_the_l1_norm_of_the_change():
    """rescale: kept entries scaled by ‖δ‖₁ / ‖mask·δ‖₁ over the whole tensor (mergekit's l1 rescale)."""
    base, (row,) = family(1)
    row = np.tile(row, (40, 1))
    base = np.tile(base, (40, 1))
    params = dict(weight=[1.0], density=[0.4], epsilon=[0.2], int8_mask=False, normalize=False, **{"lambda": 1.0})
    plain = run("della_linear", [row], base, seed=9, rescale=False, **params) - base
    rescaled = run("della_linear", [row], base, seed=9, rescale=True, **params) - base
    delta = (row - base).astype(np.float64)
    mask = plain != 0
    expected = np.where(mask, delta, 0) * np.abs(delta).sum() / np.abs(delta[mask]).sum()
    np.testing.assert_allclose(rescaled, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["ties", "dare_ties", "della", "breadcrumbs"])
def test_one_element_classifier_bias_does_not_crash(name):
    base, rows = np.zeros(1, np.float32), [np.array([0.5], np.float32), np.array([-0.1], np.float32)]
    params = dict(weight=[1.0, 1.0], density=[0.5, 0.5], rescale=False, int8_mask=False, normalize=True)
    params.update(epsilon=[0.2, 0.2]) if name == "della" else None
    params.update(gamma=[0.01, 0.01]) if name == "breadcrumbs" else None
    got = run(name, rows, base, **params, **{"lambda": 1.0})
    assert got.shape == (1,) and np.isfinite(got).all()


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_slerp_matches_formula_and_endpoints(t):
    base, (other,) = family(1, scale=1.0)
    got = run("slerp", [other], base, t=t)
    np.testing.assert_allclose(got, ref_slerp(t, base, other), atol=1e-5)
    if t in (0.0, 1.0):
        np.testing.assert_allclose(got, base if t == 0 else other, atol=1e-5)


def test_slerp_falls_back_to_lerp_when_colinear():
    base = RNG.normal(size=SHAPE).astype(np.float32)
    got = run("slerp", [base * 2], base, t=0.25)
    np.testing.assert_allclose(got, 0.75 * base + 0.25 * 2 * base, rtol=1e-6)


def test_nuslerp_flattened_with_and_without_base():
    base, rows = family(2, scale=1.0)
    common = dict(nuslerp_flatten=True, nuslerp_row_wise=False)
    got = run("nuslerp", rows, None, weight=[1.0, 3.0], **common)
    np.testing.assert_allclose(got, ref_slerp(0.75, rows[0], rows[1]), atol=1e-5)
    got_base = run("nuslerp", rows, base, weight=[1.0, 1.0], **common)
    np.testing.assert_allclose(got_base, base + ref_slerp(0.5, rows[0] - base, rows[1] - base), atol=1e-5)


@pytest.mark.parametrize("row_wise", [False, True])
def test_nuslerp_per_row_and_per_column(row_wise):
    _, rows = family(2, scale=1.0)
    got = run("nuslerp", rows, None, weight=[1.0, 1.0], nuslerp_flatten=False, nuslerp_row_wise=row_wise)
    a, b = (rows[0].T, rows[1].T) if row_wise else (rows[0], rows[1])
    expected = np.stack([ref_slerp(0.5, a[i], b[i]) for i in range(a.shape[0])])
    np.testing.assert_allclose(got, expected.T if row_wise else expected, atol=1e-5)


def ref_model_stock(base, rows):
    """Model Stock on flat vectors: t = N·cos / (1 + (N−1)·cos), cos = mean pairwise cosine of deltas."""
    deltas = [x - base for x in rows]
    n = len(rows)
    cos = np.mean([deltas[i] @ deltas[j] / (np.linalg.norm(deltas[i]) * np.linalg.norm(deltas[j]))
                   for i in range(n) for j in range(i + 1, n)])
    t = n * cos / (1 + (n - 1) * cos)
    return t * np.mean(rows, axis=0) + (1 - t) * base


@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock(filter_wise):
    base, rows = family(3)
    got = run("model_stock", rows, base, filter_wise=filter_wise)
    if filter_wise:
        expected = np.stack([ref_model_stock(base[i], [x[i] for x in rows]) for i in range(SHAPE[0])])
    else:
        expected = ref_model_stock(base.ravel(), [x.ravel() for x in rows]).reshape(SHAPE)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_every_method_declares_what_the_ui_needs():
    assert len(METHODS) == 20
    for method in METHODS.values():
        assert method.label and method.paper.startswith("http")
        for param in method.params:
            assert param.help and param.kind in (float, bool)


def test_registration_refuses_declarations_it_cannot_honour():
    weight = Param(name="weight", kind=float, default=1.0, per_model=True, help="w", low=0, high=1)
    with pytest.raises(ValueError, match="already registered"):
        register("linear", label="x", paper="http://x", params=(), base="unused")(lambda tensors, base: tensors)
    with pytest.raises(ValueError, match="base must be one of"):
        register("new1", label="x", paper="http://x", params=(), base="sometimes")(lambda tensors, base: tensors)
    with pytest.raises(TypeError, match="cannot receive parameter"):
        register("new2", label="x", paper="http://x", params=(weight,), base="unused")(
            lambda tensors, base, *, generator=None: tensors)
    with pytest.raises(TypeError, match="distinct Param"):
        register("new3", label="x", paper="http://x", params=(weight, weight), base="unused")(
            lambda tensors, base, **params: tensors)
    with pytest.raises(ValueError, match="impossible input count"):
        register("new4", label="x", paper="http://x", params=(), base="unused", min_inputs=3, max_inputs=2)(
            lambda tensors, base: tensors)
    with pytest.raises(TypeError, match="outside its range"):
        Param(name="density", kind=float, default=2.0, per_model=True, help="d", low=0, high=1)
    assert not {"new1", "new2", "new3", "new4"} & set(METHODS)
