"""Query-time R (Woodbury, in R_train's eigenbasis) against the explicit R^{-1/2} of a scan."""

import numpy as np
import pytest
import torch

from factrace.encode.hessian import RAccumulator, fit_whitening
from factrace.encode.whitening import TaskWhitening, TrainBasis

SPANS = [(0, 24), (24, 16)]
DIM = 40


def _data(seed=0, n_train=60, n_eval=9, n_rows=30):
    g = torch.Generator().manual_seed(seed)
    # anisotropic, as projected gradients are: a few strong directions
    scale = torch.logspace(0, -2, DIM, dtype=torch.float64)
    draw = lambda n: torch.randn(n, DIM, generator=g, dtype=torch.float64) * scale  # noqa: E731
    return draw(n_train), draw(n_eval), draw(n_rows)


def _acc(p):
    acc = RAccumulator(SPANS)
    acc.add(p)
    return acc


def _explicit(mode, train, evals, queries, rows, damping, lam=None):
    """The scan's way: eigh of the mixed R, R^{-1/2} on both sides, unit norm, dot."""
    w = fit_whitening(mode, _acc(train), _acc(evals) if mode == "mixed" else None, damping, lam)
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    return (unit(w.apply(queries.float()).double()) @ unit(w.apply(rows.float()).double()).T), w


@pytest.mark.parametrize("mode", ["none", "train", "mixed"])
@pytest.mark.parametrize("damping", [0.1, 10.0])
@pytest.mark.parametrize("lam", [None, 0.9])
@pytest.mark.parametrize("n_train", [60, 10])  # 10: fewer than a block's dimensions (Gram path)
def test_query_time_scores_equal_the_explicit_whitening(mode, damping, lam, n_train):
    train, evals, rows = _data(n_train=n_train)
    basis = TrainBasis.fit(_acc(train)) if mode != "none" else TrainBasis.identity(DIM)
    if mode == "none":
        expected = (rows / rows.norm(dim=1, keepdim=True))
        expected = (evals / evals.norm(dim=1, keepdim=True)) @ expected.T
    else:
        expected, w = _explicit(mode, train, evals, evals, rows, damping, lam)
    task = TaskWhitening.fit(basis, mode, basis.rotate(evals.float()), damping, lam)
    if mode == "mixed":
        assert task.lam == pytest.approx(w.lam, rel=1e-6)
    stored = basis.rows(rows.float())
    y = basis.rotate(evals.float())
    for scorer in (task.scorer(y), task.scorer(y, own=True),
                   task.scorer(y, row_norms=task.norms(stored).numpy())):
        got = scorer(stored)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-5)


def test_other_queries_are_scored_under_the_task_r():
    """Queries that are not the task's own: R_eval stays the task's."""
    train, evals, rows = _data(1)
    others = _data(2, n_eval=5)[1]
    expected, _ = _explicit("mixed", train, evals, others, rows, 10.0)
    basis = TrainBasis.fit(_acc(train))
    task = TaskWhitening.fit(basis, "mixed", basis.rotate(evals.float()), 10.0)
    got = task.scorer(basis.rotate(others.float()), own=True)(basis.rows(rows.float()))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-5)


def test_row_norms_are_the_whitened_norms():
    train, evals, rows = _data(3)
    basis = TrainBasis.fit(_acc(train))
    task = TaskWhitening.fit(basis, "mixed", basis.rotate(evals.float()), 0.1)
    w = fit_whitening("mixed", _acc(train), _acc(evals), 0.1)
    rotated = basis.rotate(rows.float())
    np.testing.assert_allclose(task.norms(rotated).numpy(),
                               w.apply(rows.float()).norm(dim=1).numpy(), rtol=1e-4)


def test_a_score_does_not_depend_on_the_rows_scale_or_chunk():
    train, evals, rows = _data(4)
    basis = TrainBasis.fit(_acc(train))
    task = TaskWhitening.fit(basis, "mixed", basis.rotate(evals.float()), 10.0)
    scorer = task.scorer(basis.rotate(evals.float()), own=True)
    stored = basis.rows(rows.float())
    whole = scorer(stored)
    parts = torch.cat([scorer(stored[:7], 0), scorer(stored[7:], 7)], 1)
    np.testing.assert_allclose(parts.numpy(), whole.numpy(), atol=1e-6)
    np.testing.assert_allclose(scorer(3.0 * stored).numpy(), whole.numpy(), atol=1e-5)


@pytest.mark.parametrize("n_train", [3, 10, 15])
def test_a_basis_from_fewer_examples_than_dimensions_diagonalises_r_train(n_train):
    """The Gram-matrix path: an orthonormal basis of each block in which R_train is diagonal with
    the basis's eigenvalues (R_train = Q diag(S) Qᵀ), R_train's rank = N."""
    train = _data(n_train=n_train)[0]
    acc = RAccumulator(SPANS)
    for part in train.split(4):  # several batches, as an encoder adds them
        acc.add(part)
    assert acc.rows is not None
    basis = TrainBasis.fit(acc)
    assert not isinstance(basis.vectors[0], torch.Tensor)  # reflectors, not dense columns
    for (off, size), q, s in zip(SPANS, basis.dense_vectors(), basis.values, strict=True):
        q = q.double()
        np.testing.assert_allclose((q.T @ q).numpy(), np.eye(size), atol=1e-5)
        block = train[:, off:off + size]
        r = (block.T @ block / n_train).numpy()
        np.testing.assert_allclose((q * torch.from_numpy(s)) @ q.T, r, atol=1e-6 * np.abs(r).max())
        assert (s > 0).sum() == n_train
    # rotate and unrotate are inverse to each other, and rotate is p Q
    x = _data(5, n_rows=7)[2].float()
    np.testing.assert_allclose(basis.unrotate(basis.rotate(x)).numpy(), x.numpy(), atol=1e-5)
    dense = TrainBasis(basis.spans, basis.values, basis.dense_vectors(), basis.n_train)
    np.testing.assert_allclose(basis.rotate(x).numpy(), dense.rotate(x).numpy(), atol=1e-5)


def test_kept_rows_merge_and_turn_into_sums_past_the_smallest_block():
    train = _data(n_train=30)[0]
    parts = [RAccumulator(SPANS) for _ in range(3)]
    for acc, chunk in zip(parts, train.split(10), strict=True):
        acc.add(chunk)
    assert all(acc.rows is not None for acc in parts)  # 10 < 16 dimensions: rows kept
    merged = parts[0].merge(parts[1])
    assert merged.rows is None  # 20 examples: past the smallest block, sums formed
    merged.merge(parts[2])
    whole = RAccumulator(SPANS)
    whole._form_sums()
    whole.add(train)
    for got, want in zip(merged.matrices(), whole.matrices(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert merged.count == whole.count == 30


def test_the_basis_survives_its_saved_state():
    acc = _acc(_data(n_train=8)[0])
    basis = TrainBasis.fit(acc)
    back = TrainBasis.from_state(basis.to_state())
    x = _data(3, n_rows=5)[2].float()
    assert torch.equal(back.rotate(x), basis.rotate(x))


@pytest.mark.parametrize("mode", ["train", "mixed"])
@pytest.mark.parametrize("n_train", [60, 10])
def test_the_explicit_factor_gives_r_inverse(mode, n_train):
    """F with FᵀF = R⁻¹: factor(x)·factor(z) = xᵀR⁻¹z, so explicit encodings score as stores do."""
    train, evals, rows = _data(4, n_train=n_train)
    basis = TrainBasis.fit(_acc(train))
    task = TaskWhitening.fit(basis, mode, basis.rotate(evals.float()), 0.1)
    x = basis.rotate(rows.float())
    fx = task.factor(x).double()
    np.testing.assert_allclose((fx @ fx.T).numpy(), (x.double() @ task.apply_inverse(x).double().T)
                               .numpy(), rtol=1e-4, atol=1e-6 * float((fx @ fx.T).abs().max()))
