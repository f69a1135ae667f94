"""``--damping auto``: each block's η from Ledoit and Wolf's shrinkage weight, against
scikit-learn's estimator and against the weight written out from its definition."""

import numpy as np
import pytest
import torch
from sklearn.covariance import ledoit_wolf_shrinkage
from tests.reference import dense_r_inverse

from factrace.encode.hessian import RAccumulator
from factrace.encode.whitening import ETA_MAX, TaskWhitening, TrainBasis, shrinkage_damping

SPANS = [(0, 24), (24, 16)]
DIM = 40


def _draw(n, seed, scale=None, common=0.0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(0, -1.5, DIM, dtype=torch.float64) if scale is None else scale
    x = torch.randn(n, DIM, generator=g, dtype=torch.float64) * scale
    if common:  # a direction every row shares (one phrasing common to every query)
        d = torch.randn(DIM, generator=torch.Generator().manual_seed(seed + 1),
                        dtype=torch.float64)
        x += common * d / d.norm() * (1 + 0.1 * torch.randn(n, 1, generator=g,
                                                               dtype=torch.float64))
    return x


def _basis(x):
    acc = RAccumulator(SPANS)
    acc.add(x)
    return TrainBasis.fit(acc)


def _delta(eta):
    return 1.0 if eta >= ETA_MAX else eta / (1 + eta)


def _definition(train, evals, lam, off, size):
    """δ = min(b², d²) / d² written out: explicit outer products, no shortcut."""
    def sample(x):
        s = x.T @ x / x.shape[0]
        noise = sum(float(((r[:, None] * r[None, :] - s) ** 2).sum()) for r in x) / x.shape[0] ** 2
        return s, noise

    s_t, b_t = sample(train[:, off:off + size])
    s_e, b_e = sample(evals[:, off:off + size]) if lam > 0 else (torch.zeros_like(s_t), 0.0)
    r = lam * s_e + (1 - lam) * s_t
    mu = torch.trace(r) / size
    d2 = float(((r - mu * torch.eye(size, dtype=torch.float64)) ** 2).sum())
    b2 = lam ** 2 * b_e + (1 - lam) ** 2 * b_t
    return min(b2, d2) / d2


@pytest.mark.parametrize("n_train", [60, 12])  # 12: fewer than a block's dimensions (Gram path)
def test_one_estimate_equals_scikit_learn(n_train):
    """λ = 0 (R_train alone) and λ = 1 (R_eval alone) each give scikit-learn's Ledoit–Wolf
    shrinkage of those rows, read in R_train's eigenbasis (rotation changes no norm)."""
    train, evals = _draw(n_train, 0), _draw(9, 5)
    basis = _basis(train)
    y = basis.rotate(evals.float()).double()
    for i, (off, size) in enumerate(SPANS):
        got = shrinkage_damping(basis.values[i], basis.fourth[i], n_train, None, 0.0)
        want = ledoit_wolf_shrinkage(train[:, off:off + size].numpy(), assume_centered=True)
        assert _delta(got) == pytest.approx(want, rel=1e-6)
        got = shrinkage_damping(basis.values[i], basis.fourth[i], n_train,
                                y[:, off:off + size], 1.0)
        want = ledoit_wolf_shrinkage(evals[:, off:off + size].numpy(), assume_centered=True)
        assert _delta(got) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("lam", [0.3, 0.85])
def test_mixed_r_equals_the_definition(lam):
    train, evals = _draw(50, 1), _draw(11, 2, common=2.0)
    basis = _basis(train)
    y = basis.rotate(evals.float()).double()
    for i, (off, size) in enumerate(SPANS):
        got = shrinkage_damping(basis.values[i], basis.fourth[i], 50, y[:, off:off + size], lam)
        assert _delta(got) == pytest.approx(_definition(train, evals, lam, off, size), rel=1e-5)


def test_fourth_moments_add_up_and_are_kept():
    """Σ‖x‖⁴ per block: the same whether rows come in one batch or merged from workers, kept
    rows or formed sums, and through the saved state."""
    x = _draw(40, 3)
    one = RAccumulator(SPANS)
    one.add(x)
    a, b = RAccumulator(SPANS), RAccumulator(SPANS)
    a.add(x[:7])
    a.add(x[7:19])  # past the kept-rows limit of the 16-wide block: sums
    b.add(x[19:])
    a.merge(b)
    want = [float((x[:, o:o + s].square().sum(1) ** 2).sum()) for o, s in SPANS]
    assert one.fourth == pytest.approx(want, rel=1e-12)
    assert a.fourth == pytest.approx(want, rel=1e-12)
    basis = TrainBasis.fit(a)
    assert TrainBasis.from_state(basis.to_state()).fourth == pytest.approx(want, rel=1e-12)
    older = basis.to_state()
    del older["fourth"]  # a store saved before the sums were kept
    assert TrainBasis.from_state(older).fourth is None


def test_gaussian_fallback_is_close_for_gaussian_rows():
    """A store without Σ‖x‖⁴ assumes Gaussian rows: close to the measured value for them."""
    x = _draw(4000, 4)
    basis = _basis(x)
    for i in range(len(SPANS)):
        exact = shrinkage_damping(basis.values[i], basis.fourth[i], 4000, None, 0.0)
        approx = shrinkage_damping(basis.values[i], None, 4000, None, 0.0)
        assert _delta(approx) == pytest.approx(_delta(exact), rel=0.1)


def test_a_direction_every_query_shares_is_whitened_hard():
    """R mixing in queries that share one strong direction the training rows lack gets a far
    smaller η (stronger whitening) than one mixing in queries like the training rows; R_train
    of isotropic noise is left near the identity."""
    mild = torch.logspace(0, -0.5, DIM, dtype=torch.float64)
    basis = _basis(_draw(200, 6, scale=mild))
    alike = basis.rotate(_draw(40, 7, scale=mild).float()).double()
    shared = basis.rotate(_draw(40, 7, scale=mild, common=5.0).float()).double()
    for i, (off, size) in enumerate(SPANS):
        eta = [shrinkage_damping(basis.values[i], basis.fourth[i], 200, y[:, off:off + size],
                                 0.8) for y in (alike, shared)]
        assert eta[1] < 0.1 * eta[0]
    flat = _basis(_draw(200, 8, scale=torch.ones(DIM, dtype=torch.float64)))
    assert min(flat.shrinkage()) > 10


def test_auto_damps_every_task_on_a_store_alike():
    """``--damping auto`` reads R_train only: one question or many, the same η per block,
    each R_train's own shrinkage."""
    basis = _basis(_draw(60, 12))
    etas = [TaskWhitening.fit(basis, "mixed", basis.rotate(_draw(t, 13 + t).float()), "auto").etas
            for t in (1, 5, 40)]
    etas.append(TaskWhitening.fit(basis, "train", None, "auto").etas)
    want = [shrinkage_damping(basis.values[i], basis.fourth[i], 60, None, 0.0)
            for i in range(len(SPANS))]
    for got in etas:
        assert got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("mode", ["train", "mixed"])
def test_auto_scores_equal_the_dense_r_of_each_blocks_eta(mode):
    train, evals, rows = _draw(30, 9), _draw(8, 10, common=1.0), _draw(20, 11)
    basis = _basis(train)
    y = basis.rotate(evals.float())
    task = TaskWhitening.fit(basis, mode, y if mode == "mixed" else None, "auto", lam=None)
    assert task.damping == "auto" and len(task.etas) == len(SPANS)
    assert task.describe()["block_dampings"] == task.etas
    lam = task.lam if mode == "mixed" else 0.0
    r_inv = dense_r_inverse(basis, y, lam, task.etas)
    stored = basis.rows(rows.float()).double()
    yd = y.double()
    want = (yd @ r_inv @ stored.T) / torch.sqrt(((yd @ r_inv) * yd).sum(1))[:, None] \
        / torch.sqrt(((stored @ r_inv) * stored).sum(1))[None, :]
    got = task.scorer(y)(basis.rows(rows.float()))
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-5)
