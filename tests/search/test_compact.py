"""Band energies and candidate depth against slow, obviously correct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from factrace.encode.whitening import TaskWhitening, TrainBasis
from factrace.search.compact import EigenBands, candidate_depth, task_diagonal


def basis_and_task(seed: int = 0, spans=((0, 24), (24, 40)), n_eval: int = 5):
    """A random R_train (per block eigenvalues and eigenvectors) and a mixed task on it."""
    rng = np.random.default_rng(seed)
    values, vectors = [], []
    for _, size in spans:
        values.append(np.sort(rng.gamma(0.5, 1.0, size) * 10.0 ** rng.uniform(0, 3)))
        q, _ = np.linalg.qr(rng.standard_normal((size, size)))
        vectors.append(torch.from_numpy(q.astype(np.float32)))
    basis = TrainBasis([tuple(s) for s in spans], values, vectors, n_train=50)
    dim = basis.dim
    y = torch.from_numpy(rng.standard_normal((n_eval, dim)))
    task = TaskWhitening.fit(basis, "mixed", y, damping=10.0, lam=0.7)
    rows = rng.standard_normal((9, dim))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return basis, task, y.numpy(), rows


def dense_w(basis: TrainBasis, y: np.ndarray, lam: float, damping: float) -> np.ndarray:
    """W's diagonal from the definition, block by block: ((1 − λ) S + c)⁻¹ with c = η tr/size,
    tr = tr((1 − λ) R_train + λ R_eval)."""
    out = []
    for (off, size), s in zip(basis.spans, basis.values, strict=True):
        yb = y[:, off:off + size]
        trace = (1 - lam) * s.sum() + lam * (yb * yb).sum() / y.shape[0]
        out.append(1.0 / ((1 - lam) * s + damping * trace / size))
    return np.concatenate(out)


def test_task_diagonal_is_the_definition():
    basis, task, y, _ = basis_and_task()
    np.testing.assert_allclose(task_diagonal(task), dense_w(basis, y, 0.7, 10.0), rtol=1e-6)


def test_single_bands_give_the_exact_weighted_norm():
    basis, task, y, rows = basis_and_task(1)
    w = dense_w(basis, y, 0.7, 10.0)
    bands = EigenBands.single(basis.dim)
    approx = bands.weighted_sq_norms(bands.energies(rows), w)
    reference = [sum(w[i] * p[i] ** 2 for i in range(len(p))) for p in rows]
    np.testing.assert_allclose(approx, reference, rtol=1e-6)
    # and what is left of the task's norm is the z-term, which only lowers it
    dense_inverse = []
    for (off, size), s in zip(basis.spans, basis.values, strict=True):
        yb = y[:, off:off + size]
        r = 0.7 * yb.T @ yb / len(y) + 0.3 * np.diag(s)
        r += np.eye(size) * 10.0 * np.trace(r) / size
        dense_inverse.append(np.linalg.inv(r))
    exact = [sum(p[off:off + size] @ inv @ p[off:off + size]
                 for (off, size), inv in zip(basis.spans, dense_inverse, strict=True))
             for p in rows]
    np.testing.assert_allclose(task.norms(torch.from_numpy(rows)).double().numpy() ** 2, exact,
                               rtol=1e-4)
    assert np.all(np.asarray(exact) <= approx * (1 + 1e-6))


def test_spectrum_bands_stay_in_blocks_and_follow_the_eigenvalues():
    basis, _, _, _ = basis_and_task(2)
    values = np.concatenate(basis.values)
    bands = EigenBands.of_spectrum(basis.spans, values, edges=(2, 5, 11))
    assert bands.n_bands == 8  # 4 bands in each block
    for off, size in basis.spans:
        inside = set(bands.band_of[off:off + size])
        outside = set(np.delete(bands.band_of, np.arange(off, off + size)))
        assert not inside & outside
        ordered = sorted(inside)
        for a, b in zip(ordered[:-1], ordered[1:], strict=True):
            assert values[bands.band_of == a].min() >= values[bands.band_of == b].max()
    sizes = np.bincount(bands.band_of)
    assert list(sizes) == [2, 3, 6, 13, 2, 3, 6, 29]


def test_spectrum_bands_bracket_the_weighted_norm():
    """Exact when W is constant over each band; otherwise between its band minimum and maximum."""
    basis, task, y, rows = basis_and_task(3)
    values = np.concatenate(basis.values)
    bands = EigenBands.of_spectrum(basis.spans, values, edges=(3, 9))
    w = task_diagonal(task)
    e = bands.energies(rows)
    approx = bands.weighted_sq_norms(e, w)
    lo = e @ np.array([w[bands.band_of == b].min() for b in range(bands.n_bands)])
    hi = e @ np.array([w[bands.band_of == b].max() for b in range(bands.n_bands)])
    assert np.all(lo <= approx * (1 + 1e-6)) and np.all(approx <= hi * (1 + 1e-6))
    flat = np.array([w[bands.band_of == b].mean() for b in range(bands.n_bands)])[bands.band_of]
    reference = (rows ** 2) @ flat
    np.testing.assert_allclose(bands.weighted_sq_norms(e, flat), reference, rtol=1e-6)


def brute_depth(approx: np.ndarray, exact: np.ndarray, k: int) -> list[int]:
    out = []
    for a, x in zip(approx, exact, strict=True):
        rank = {j: r + 1 for r, j in enumerate(np.argsort(-a, kind="stable"))}
        out.append(max(rank[j] for j in np.argsort(-x, kind="stable")[:k]))
    return out


@pytest.mark.parametrize("k", [1, 3, 10])
def test_candidate_depth_is_the_deepest_rank_of_the_exact_top_k(k):
    rng = np.random.default_rng(k)
    exact = rng.standard_normal((20, 200))
    approx = exact + rng.standard_normal((20, 200)) * 0.7
    np.testing.assert_array_equal(candidate_depth(approx, exact, k), brute_depth(approx, exact, k))
    np.testing.assert_array_equal(candidate_depth(exact, exact, k), k)


def test_candidate_depth_counts_ties_against_the_stage():
    exact = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    approx = np.array([[1.0, 1.0, 1.0, 1.0, 0.0]])  # the top 2 tie with two others
    assert candidate_depth(approx, exact, 2)[0] == 4
    with pytest.raises(ValueError):
        candidate_depth(approx[:, :3], exact, 2)
