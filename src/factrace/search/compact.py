"""Pieces of a compact first stage: a few bytes per stored row that give approximate TrackStar
scores for any task, and the measure of how deep its candidate lists must go.

A stored row ``p`` (rotated into R_train's eigenbasis, unit norm) is scored against a query by
``uᵀp / ‖R^{-1/2} p‖`` (the query's own norm is the same for every row), with ``u = R⁻¹q`` and

    ‖R^{-1/2} p‖² = pᵀ W p − zᵀ M⁻¹ z,   W = ((1 − λ) S + c)⁻¹ diagonal,  z = Y W p

(:mod:`factrace.encode.whitening`). ``W`` changes with every task (λ, c) but only through R_train's
eigenvalues ``S``, so a row's energy in **bands** of coordinates of similar eigenvalue
(:class:`EigenBands`) gives ``pᵀWp`` for any task without the row: exactly when every band is one
coordinate, and within the spread of ``W`` over a band otherwise.

:func:`candidate_depth` is how a first stage is judged against exact scores: per query, the
number of candidates it must return for the exact top k to be among them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EigenBands:
    """A partition of the ``d`` rotated coordinates into bands (never across a diagonal block
    of R: ``c`` differs per block)."""

    band_of: np.ndarray
    """``[d]`` int: the band of each coordinate."""
    n_bands: int

    @classmethod
    def single(cls, dim: int) -> EigenBands:
        """Every coordinate its own band (``pᵀWp`` then exact; the reference)."""
        return cls(np.arange(dim), dim)

    @classmethod
    def of_spectrum(cls, spans: Sequence[tuple[int, int]], values: np.ndarray,
                    edges: Sequence[int] = (16, 64, 256, 1024)) -> EigenBands:
        """Per block ``(offset, size)`` of ``spans``, its coordinates ranked by eigenvalue
        (``values``: ``[d]``, R_train's eigenvalue of each coordinate), largest first, cut at
        the ranks ``edges``: bands of the top 16, the next 48, ... and the rest of the block."""
        band_of = np.empty(len(values), dtype=np.int64)
        band = 0
        for off, size in spans:
            ranked = off + np.argsort(-values[off:off + size], kind="stable")
            cuts = [0, *(e for e in edges if 0 < e < size), size]
            for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
                band_of[ranked[lo:hi]] = band
                band += 1
        return cls(band_of, band)

    def energies(self, rows: np.ndarray | torch.Tensor) -> np.ndarray:
        """``[n, n_bands]`` float32: each row's sum of squares over each band."""
        sq = np.square(np.asarray(rows, dtype=np.float32))
        out = np.zeros((sq.shape[0], self.n_bands), dtype=np.float32)
        np.add.at(out.T, self.band_of, sq.T)
        return out

    def weights(self, w: np.ndarray, profile: np.ndarray | None = None) -> np.ndarray:
        """``[n_bands]``: one W per band, its mean over the band's coordinates (weighted by
        ``profile``, e.g. the rows' mean energy per coordinate, when given). ``w``: ``[d]``."""
        w = np.asarray(w, dtype=np.float64)
        p = np.ones_like(w) if profile is None else np.asarray(profile, dtype=np.float64)
        num = np.bincount(self.band_of, weights=w * p, minlength=self.n_bands)
        den = np.bincount(self.band_of, weights=p, minlength=self.n_bands)
        return num / np.where(den > 0, den, 1.0)

    def weighted_sq_norms(self, energies: np.ndarray, w: np.ndarray,
                          profile: np.ndarray | None = None) -> np.ndarray:
        """``[n]``: ≈ ``pᵀ W p`` of each row from its band ``energies`` (exact for single
        bands)."""
        return np.asarray(energies, dtype=np.float64) @ self.weights(w, profile)


def task_diagonal(task) -> np.ndarray:
    """``[d]``: the diagonal ``W`` of a :class:`factrace.encode.whitening.TaskWhitening`."""
    w = np.zeros(task.dim, dtype=np.float64)
    for b in task.blocks:
        w[b.off:b.off + b.size] = b.w.double().numpy()
    return w


def candidate_depth(approx: np.ndarray, exact: np.ndarray, k: int = 10) -> np.ndarray:
    """``[Q]``: for each query (a row of ``approx`` and ``exact``, both ``[Q, n]``), how many
    of the rows ranked first by ``approx`` must be taken for the ``k`` best by ``exact`` to be
    among them (ties of ``approx`` counted against it). A first stage returning ``C`` candidates
    holds the whole exact top ``k`` of the queries whose depth is at most ``C``."""
    approx = np.asarray(approx)
    exact = np.asarray(exact)
    if approx.shape != exact.shape or approx.ndim != 2:
        raise ValueError(f"approx {approx.shape} and exact {exact.shape} must be the same [Q, n]")
    k = min(k, exact.shape[1])
    top = np.argpartition(-exact, k - 1, axis=1)[:, :k]
    threshold = np.take_along_axis(approx, top, axis=1).min(axis=1)
    return (approx >= threshold[:, None]).sum(axis=1)
