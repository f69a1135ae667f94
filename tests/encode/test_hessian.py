"""R, λ and R^{-1/2} against numpy.linalg.eigh on small matrices."""

import numpy as np
import pytest
import torch
from test_capture import PASSAGES, QUERIES, random_state

from factrace.config import EncoderConfig
from factrace.encode.encoder import Encoder
from factrace.encode.hessian import (
    RAccumulator,
    auto_lambda,
    default_k,
    fit_whitening,
)
from tiny import tiny_loaded


def _acc(p, spans):
    acc = RAccumulator(spans)
    for chunk in torch.split(torch.from_numpy(p).float(), 7):
        acc.add(chunk)
    return acc


def _inv_sqrt(m, damping):
    w, u = np.linalg.eigh(m)
    w = np.clip(w, 0, None)
    return u @ np.diag((w + damping * w.mean()) ** -0.5) @ u.T


def test_second_moment_matrix_is_mean_outer_product():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((50, 12)).astype(np.float32)
    (r,) = _acc(p, [(0, 12)]).matrices()
    np.testing.assert_allclose(r, p.astype(np.float64).T @ p / 50, rtol=1e-6)
    a, b = _acc(p[:20], [(0, 12)]), _acc(p[20:], [(0, 12)])
    np.testing.assert_allclose(a.merge(b).matrices()[0], r, rtol=1e-10)


@pytest.mark.parametrize("mode", ["train", "mixed"])
def test_whitening_matches_eigh(mode):
    rng = np.random.default_rng(1)
    d = 16
    ptrain = rng.standard_normal((40, d)) @ rng.standard_normal((d, d))
    peval = rng.standard_normal((10, d)) @ rng.standard_normal((d, d))
    train, evals = _acc(ptrain, [(0, d)]), _acc(peval, [(0, d)])
    w = fit_whitening(mode, train, evals if mode == "mixed" else None, damping=0.1)
    rt = ptrain.T @ ptrain / 40
    re = peval.T @ peval / 10
    if mode == "mixed":
        k = default_k(d, 40, 10)
        st = np.sort(np.linalg.eigvalsh(rt))[::-1]
        se = np.sort(np.linalg.eigvalsh(re))[::-1]
        lam = st[k] / (st[k] + se[k])
        assert w.lam == pytest.approx(lam, rel=1e-6)
        r = lam * re + (1 - lam) * rt
    else:
        r = rt
    want = _inv_sqrt(r, 0.1)
    np.testing.assert_allclose(w.blocks[0], want, rtol=1e-5, atol=1e-8)
    p = torch.from_numpy(peval).float()
    np.testing.assert_allclose(w.apply(p).numpy(), peval @ want, rtol=1e-4, atol=1e-4)


def test_block_diagonal_whitening():
    rng = np.random.default_rng(2)
    p = rng.standard_normal((30, 8)) @ rng.standard_normal((8, 8))
    spans = [(0, 4), (4, 4)]
    w = fit_whitening("train", _acc(p, spans), None, damping=0.05)
    r = p.T @ p / 30
    for (off, size), block in zip(spans, w.blocks, strict=True):
        want = _inv_sqrt(r[off:off + size, off:off + size], 0.05)
        np.testing.assert_allclose(block, want, rtol=1e-5, atol=1e-8)


def test_auto_lambda_crossing():
    st = np.array([10.0, 4.0, 1.0])
    se = np.array([5.0, 1.0, 0.5])
    lam = auto_lambda(st, se, 1)
    assert lam == pytest.approx(0.8)
    # the scaled curves cross at k
    assert lam * se[1] == pytest.approx((1 - lam) * st[1])


def test_default_k_is_capped_by_rank():
    assert default_k(65536, 10**6, 10**6) == 1024
    assert default_k(65536, 10**6, 50) == 49


@pytest.mark.parametrize("lambda_", ["auto", "default"])
def test_encoder_trackstar_matches_numpy_end_to_end(lambda_):
    loaded = tiny_loaded("llama")
    state = random_state(loaded.model)
    fixed = {} if lambda_ == "default" else {"lambda_": lambda_}
    cfg = EncoderConfig(dim=32, second_moment="factored", hessian="mixed",
                        hessian_structure="global", damping=0.1, **fixed)
    enc = Encoder(loaded, cfg, state)
    enc.fit_hessian(PASSAGES, QUERIES)
    raw = Encoder(loaded, cfg.replace(hessian="none", normalize=False), state)
    ptrain = torch.cat([p for _, p in raw.project(raw.tokenize_passages(PASSAGES))]).double()
    _, peval = raw.encode_queries(QUERIES)  # hessian none, no normalisation: p in query order
    peval = peval.double()
    rt, re = (ptrain.T @ ptrain / len(ptrain)).numpy(), (peval.T @ peval / len(peval)).numpy()
    k = default_k(32, len(ptrain), len(peval))
    st, se = np.sort(np.linalg.eigvalsh(rt))[::-1], np.sort(np.linalg.eigvalsh(re))[::-1]
    lam = st[k] / (st[k] + se[k]) if lambda_ == "auto" else 0.5  # the default: fixed 0.5
    w = _inv_sqrt(lam * re + (1 - lam) * rt, 0.1)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    pin = raw.encode_passages(PASSAGES)[1].double().numpy()  # input order, as encode_passages
    want_q, want_p = unit(peval.numpy() @ w), unit(pin @ w)
    _, psi_q = enc.encode_queries(QUERIES)
    _, psi_p = enc.encode_passages(PASSAGES)
    # the API's promise: psi_q @ psi_p.T are the scores (ψ need not be R^{-1/2} p itself)
    np.testing.assert_allclose(psi_q.numpy() @ psi_p.numpy().T, want_q @ want_p.T, atol=2e-4)
    np.testing.assert_allclose(psi_q.numpy() @ psi_q.numpy().T, want_q @ want_q.T, atol=2e-4)
    assert enc.whitening.lam == pytest.approx(lam, rel=1e-6)


def test_whitening_is_kept_in_the_precision_it_is_applied_in():
    """R^{-1/2} is stored as float32 (half the saved state) and applies exactly as the float64
    matrix rounded to float32, which is what apply() multiplies by."""
    rng = np.random.default_rng(2)
    p = rng.standard_normal((30, 8))
    acc = _acc(p, [(0, 8)])
    w = fit_whitening("train", acc, None, damping=0.1)
    assert w.blocks[0].dtype == np.float32
    want = _inv_sqrt(p.T @ p / 30, 0.1).astype(np.float32)
    np.testing.assert_allclose(w.blocks[0], want, rtol=1e-5, atol=1e-7)
    x = torch.from_numpy(p).float()
    assert torch.equal(w.apply(x), x @ torch.from_numpy(w.blocks[0]))
