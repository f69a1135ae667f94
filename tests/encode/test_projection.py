"""Projection: reproducible, block layout, and inner products preserved in expectation."""

import math

import numpy as np
import pytest
import torch

from factrace.encode.projection import factor_pair, gaussian, plan_blocks
from factrace.errors import FactraceError
from factrace.model.modules import discover
from tiny import tiny_model


def test_gaussian_reproducible_and_seeded():
    a = gaussian(0, "m", "left", 8, 5)
    assert torch.equal(a, gaussian(0, "m", "left", 8, 5))
    assert not torch.equal(a, gaussian(1, "m", "left", 8, 5))
    assert not torch.equal(a, gaussian(0, "m", "right", 8, 5))
    assert not torch.equal(a, gaussian(0, "n", "left", 8, 5))


def test_gaussian_scale():
    g = gaussian(3, "m", "left", 64, 4096)
    # entries N(0, 1/64): sample variance within 5% (4096*64 samples, se of var ≈ 0.3%)
    assert abs(g.var().item() * 64 - 1) < 0.05


def test_layers_layout_has_attention_and_mlp_blocks():
    tracked = discover(tiny_model("llama", layers=4))
    blocks = plan_blocks(tracked, dim=1024, layout="layers", layer_groups=2)
    assert [b.name for b in blocks] == ["layers0-1.attention", "layers0-1.mlp",
                                        "layers2-3.attention", "layers2-3.mlp"]
    assert sum(b.size for b in blocks) == 1024
    assert [b.offset for b in blocks] == [0, 256, 512, 768]
    assert {m for b in blocks for m in b.modules} == {t.name for t in tracked}
    modules = plan_blocks(tracked, dim=28 * 16, layout="modules")
    assert len(modules) == len(tracked) == 28


def test_dim_must_divide():
    tracked = discover(tiny_model("llama"))
    with pytest.raises(FactraceError, match="not divisible"):
        plan_blocks(tracked, dim=1001, layout="layers")


def test_factor_pair():
    assert factor_pair(1024) == (32, 32)
    assert factor_pair(2048) == (64, 32)
    assert factor_pair(4096) == (64, 64)
    assert factor_pair(12) == (4, 3)


def two_sided_variance(A, B, a, b):
    """Exact Var⟨L A Rᵀ, L B Rᵀ⟩ for independent L ~ N(0, 1/a)^{a×o}, R ~ N(0, 1/b)^{b×n}.

    With M = LᵀL, N = RᵀR (Wishart, E = I) and C = AᵀB, the law of total variance and
    E[tr(N P N Q)] = tr(PQ) + (⟨P, Q⟩ + tr P tr Q)/b give
    Var = [tr C² + tr(AᵀA BᵀB)]/a + [tr C² + |C|²]/b
          + [|C|² + ⟨A,B⟩² + tr(AᵀA BᵀB) + |A|²|B|²]/(ab).
    (The one-sided JL variance (⟨u,v⟩² + |u|²|v|²)/a is the case R = I.)
    """
    C = A.T @ B
    trC2 = np.trace(C @ C)
    C2 = (C * C).sum()
    ab_ = np.trace(A.T @ A @ B.T @ B)
    inner = (A * B).sum()
    return ((trC2 + ab_) / a + (trC2 + C2) / b
            + (C2 + inner**2 + ab_ + (A * A).sum() * (B * B).sum()) / (a * b))


def test_projection_preserves_inner_products_in_expectation():
    """E[⟨L A Rᵀ, L B Rᵀ⟩] = ⟨A, B⟩, within 4 standard errors derived from the exact
    two-sided JL variance; the sample variance must match that variance too, so a projection
    scaled wrongly, correlated across seeds or degenerate fails."""
    rng = np.random.default_rng(0)
    o, n, a, b = 12, 10, 16, 8
    A = rng.standard_normal((o, n))
    B = 0.6 * A + 0.8 * rng.standard_normal((o, n))
    truth = float((A * B).sum())
    est = []
    for seed in range(400):
        L = gaussian(seed, "m", "left", a, o).double().numpy()
        R = gaussian(seed, "m", "right", b, n).double().numpy()
        est.append(float(((L @ A @ R.T) * (L @ B @ R.T)).sum()))
    est = np.array(est)
    var = two_sided_variance(A, B, a, b)
    assert abs(est.mean() - truth) < 4 * math.sqrt(var / len(est))
    # sample variance of 400 draws: relative standard error ≈ sqrt(2/399) ≈ 7% (more for
    # heavier tails), so 30% is a loose but meaningful band
    assert 0.7 < est.var(ddof=1) / var < 1.3


def test_factor_pair_aspect():
    assert factor_pair(1024, aspect=4) == (64, 16)
    assert factor_pair(1152, aspect=16) == (144, 8)  # 144/8 and 128/9 tie: the larger a
    a, b = factor_pair(576, aspect=0.25)
    assert (a, b) == (12, 48)
    for m in (1, 7, 576, 1170):
        for aspect in (0.1, 1, 3, 100):
            a, b = factor_pair(m, aspect)
            assert a * b == m


@pytest.mark.parametrize("n_blocks", [1, 4, 6, 14, 16, 60, 1 << 15])
@pytest.mark.parametrize("max_block", [None, 4096])
def test_default_dim_fits_every_layout(n_blocks, max_block):
    from factrace.encode.projection import default_dim
    d = default_dim(n_blocks, 1 << 16, max_block)
    assert d % n_blocks == 0 and d >= n_blocks  # at least one dimension per block
    per_block = d // n_blocks
    if n_blocks <= 1 << 16:
        assert d <= 1 << 16 and d + n_blocks > min(1 << 16, n_blocks * (max_block or 1 << 16))
    if max_block is not None:
        assert per_block <= max(max_block, 1)


def test_encoder_default_dim_rounds_to_the_blocks():
    from factrace.config import EncoderConfig
    from factrace.encode.encoder import Encoder
    from tiny import tiny_loaded

    enc = Encoder(tiny_loaded("llama"), EncoderConfig(layout="modules", hessian="none",
                                                      second_moment="none"))
    # on a CPU at most 4096 dimensions per block: 14 × 4096 (not 2^16 / 14 = 4681 per block)
    assert len(enc.blocks) == 14 and enc.dim == 14 * 4096
    layers = Encoder(tiny_loaded("llama"), EncoderConfig(hessian="none", second_moment="none"))
    assert len(layers.blocks) == 4 and layers.dim == 1 << 14
    assert sum(b.size for b in enc.blocks) == enc.dim


def test_include_adds_outside_modules_only_restricts_exclude_removes():
    model = tiny_model("llama")
    default = [m.name for m in discover(model)]
    assert default and all(".layers." in n for n in default)
    with_head = [m.name for m in discover(model, include=["lm_head"])]
    assert set(with_head) == set(default) | {"lm_head"}
    mlp = [m.name for m in discover(model, only=["*.mlp.*"])]
    assert mlp == [n for n in default if ".mlp." in n] and mlp
    assert [m.name for m in discover(model, only=["*.mlp.*"], exclude=["*.down_proj"])] == \
        [n for n in mlp if not n.endswith("down_proj")]
    with pytest.raises(FactraceError, match="use --only"):
        discover(model, include=["*.mlp.*"])  # inside the blocks: that is --only's job
    with pytest.raises(FactraceError, match="--only"):
        discover(model, only=["nothing*"])
