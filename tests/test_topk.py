"""Radix-select top-k (core/merge/methods/topk.py) against a stable argsort, on data full of tied magnitudes.

TIES on bf16 checkpoints meets thousands of entries equal to the threshold; which of them are
kept (lowest flat index first) must not depend on how the tensor is split into blocks.
"""
import numpy as np
import pytest
import torch

from core.merge.methods.topk import TopK, top_k_cuts

RNG = np.random.default_rng(0)


def ref_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k largest entries, ties broken by lowest index (a stable descending sort)."""
    mask = np.zeros(scores.size, bool)
    mask[np.argsort(-scores, kind="stable")[:max(k, 0)]] = True
    return mask


def bf16_deltas(n):
    base = torch.tensor(RNG.normal(0, 0.02, n), dtype=torch.bfloat16)
    tuned = (base.float() + torch.tensor(RNG.normal(0, 0.002, n), dtype=torch.float32)).bfloat16()
    return (tuned.float() - base.float()).abs().numpy()


SCORES = {
    "continuous": np.abs(RNG.normal(size=1000)).astype(np.float32),
    "bf16 deltas": bf16_deltas(5000),  # a few hundred distinct values
    "five values": (RNG.integers(0, 5, 999) * 0.25).astype(np.float32),
    "all zero": np.zeros(64, np.float32),
    "inf and subnormal": np.array([np.inf, 1.0, 0.0, np.inf, 1e-40, 3e-41, 5e-45, 1e-40], np.float32),
}


@pytest.mark.parametrize("name", SCORES)
@pytest.mark.parametrize("block", [7, 256, None])
def test_top_k_over_blocks_matches_stable_sort(name, block):
    scores = SCORES[name]
    n = scores.size
    block = block or n
    ks = sorted({0, 1, 2, n // 3, n // 2, n - 1, n, n + 5})
    flat = torch.from_numpy(scores)
    blocks = lambda: (flat[i:i + block].reshape(1, -1) for i in range(0, n, block))  # noqa: E731
    [cuts] = top_k_cuts(blocks, [ks])
    for k, cut in zip(ks, cuts):
        top = TopK(cut)
        got = torch.cat([top.mask(flat[i:i + block]) for i in range(0, n, block)]).numpy()
        np.testing.assert_array_equal(got, ref_top_k(scores, k), err_msg=f"k={k}")


def test_several_models_and_several_k_per_model_in_one_pass():
    stack = torch.from_numpy(np.stack([bf16_deltas(3000) for _ in range(3)]))  # (3 models, 3000)
    ks = [[10, 1500], [2999], [1, 2, 3]]
    cuts = top_k_cuts(lambda: (stack[:, i:i + 100] for i in range(0, 3000, 100)), ks)
    for row, (row_ks, row_cuts) in enumerate(zip(ks, cuts)):
        for k, cut in zip(row_ks, row_cuts):
            top = TopK(cut)
            got = torch.cat([top.mask(stack[row, i:i + 100]) for i in range(0, 3000, 100)]).numpy()
            np.testing.assert_array_equal(got, ref_top_k(stack[row].numpy(), k))
