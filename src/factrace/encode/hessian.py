"""The task-specific Hessian approximation of TrackStar and the whitening R^{-1/2}.

``R = (1/N) Σ p pᵀ`` accumulated in float64, globally (d × d) or per projection block.
Mixed: ``R = λ R_eval + (1 − λ) R_train`` with λ chosen so that the scaled descending eigenvalue
curves cross at component k: ``λ = σ_train[k] / (σ_eval[k] + σ_train[k])``.
``R^{-1/2} = U (Λ + η·mean(Λ))^{-1/2} Uᵀ``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from factrace.errors import FactraceError


class RAccumulator:
    """R, TrackStar's Hessian approximation, as a running ``(1/N) Σ p pᵀ`` in float64 (not V,
    the optimizer's second moment); ``spans`` are the (offset, size) of each diagonal
    block (one span covering all of d for the global matrix). Partial sums add (``merge``), so
    workers can accumulate shards and a driver reduce them.

    While fewer examples have been added than the smallest block has dimensions, the examples
    themselves are kept instead of the ``size × size`` sums (:attr:`rows`): R is then of rank at
    most N, cheaper to hold as N rows, and its eigenvectors come from the N × N Gram matrix
    (:meth:`factrace.encode.whitening.TrainBasis.fit`). Past that the sums are formed."""

    def __init__(self, spans: list[tuple[int, int]]):
        self.spans = list(spans)
        self.count = 0
        self.fourth = [0.0] * len(self.spans)
        """``Σ ‖p_block‖⁴`` over the examples, per block: the sampling noise of R's estimate
        (:func:`factrace.encode.whitening.shrinkage_damping`)."""
        self._rows: list[torch.Tensor] | None = []
        self._sums: list[torch.Tensor] | None = None

    @property
    def row_limit(self) -> int:
        """The most examples kept as rows (the smallest block's size, less one)."""
        return min(size for _, size in self.spans) - 1

    @property
    def rows(self) -> torch.Tensor | None:
        """The examples added, ``[N, d]`` float64, while they are kept (else ``None``)."""
        if self._rows is None:
            return None
        dim = sum(size for _, size in self.spans)
        return torch.cat(self._rows) if self._rows else torch.zeros(0, dim, dtype=torch.float64)

    @property
    def sums(self) -> list[torch.Tensor]:
        """``Σ p pᵀ`` per block (formed from the kept rows on first use)."""
        self._form_sums()
        return self._sums

    def _form_sums(self) -> None:
        if self._sums is not None:
            return
        self._sums = [torch.zeros(size, size, dtype=torch.float64) for _, size in self.spans]
        rows, self._rows = self.rows, None
        if rows is not None and rows.shape[0]:
            self._add_to_sums(rows)

    def _add_to_sums(self, p: torch.Tensor) -> None:
        for i, (off, size) in enumerate(self.spans):
            block = p[:, off:off + size]
            self._sums[i].addmm_(block.T, block)

    def add(self, p: torch.Tensor) -> None:
        """``p``: ``[batch, d]``."""
        p = p.double().cpu()
        for i, (off, size) in enumerate(self.spans):
            self.fourth[i] += float(p[:, off:off + size].square().sum(1).square().sum())
        if self._rows is not None and self.count + p.shape[0] <= self.row_limit:
            self._rows.append(p.clone())
        else:
            self._form_sums()
            self._add_to_sums(p)
        self.count += p.shape[0]

    def merge(self, other: RAccumulator) -> RAccumulator:
        if other.spans != self.spans:
            raise ValueError("cannot merge second-moment matrices of different structure")
        theirs = other.rows
        if self._rows is not None and theirs is not None and \
                self.count + other.count <= self.row_limit:
            self._rows.append(theirs)
        else:
            for mine, their_sum in zip(self.sums, other.sums, strict=True):
                mine += their_sum
        self.fourth = [a + b for a, b in zip(self.fourth, other.fourth, strict=True)]
        self.count += other.count
        return self

    def matrices(self) -> list[np.ndarray]:
        if self.count == 0:
            raise FactraceError("no examples to estimate the Hessian approximation R from")
        return [(s / self.count).numpy() for s in self.sums]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if state["_rows"] is not None:  # one tensor travels faster than many
            state["_rows"] = [self.rows]
        return state


def eigh_blocks(matrices: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(eigenvalues ascending, eigenvectors)`` of each symmetric block."""
    out = []
    for m in matrices:
        w, u = np.linalg.eigh((m + m.T) / 2)
        out.append((np.clip(w, 0.0, None), u))
    return out


def descending_spectrum(matrices: list[np.ndarray]) -> np.ndarray:
    """All eigenvalues of a block-diagonal matrix, descending (values only: no eigenvectors)."""
    values = [np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None) for m in matrices]
    return np.sort(np.concatenate(values))[::-1]


def auto_lambda(sigma_train: np.ndarray, sigma_eval: np.ndarray, k: int) -> float:
    """``λ = σ_train[k] / (σ_eval[k] + σ_train[k])`` on descending spectra (0-based k)."""
    a, b = float(sigma_train[k]), float(sigma_eval[k])
    if a + b <= 0:
        raise FactraceError(f"both eigenvalue curves are zero at component {k}; set --lambda")
    return a / (a + b)


def default_k(dim: int, n_train: int, n_eval: int) -> int:
    """d/64, kept below the rank of R_eval and R_train (at most N nonzero eigenvalues each)."""
    return int(max(0, min(dim // 64, n_eval - 1, n_train - 1)))


def inverse_sqrt(w: np.ndarray, u: np.ndarray, damping: float) -> np.ndarray:
    """``U (Λ + η·mean(Λ))^{-1/2} Uᵀ`` for one eigendecomposition."""
    shift = damping * float(w.mean())
    if np.any(w + shift <= 0):
        raise FactraceError("R is singular and damping is 0: set --damping > 0")
    return (u * (w + shift) ** -0.5) @ u.T


@dataclass
class Whitening:
    """R^{-1/2} as one or several diagonal blocks; ``None`` blocks means the identity."""

    spans: list[tuple[int, int]]
    blocks: list[np.ndarray] | None
    mode: str
    lam: float | None = None
    k: int | None = None
    damping: float | None = None
    n_train: int = 0
    n_eval: int = 0

    @classmethod
    def identity(cls) -> Whitening:
        return cls([], None, "none")

    def apply(self, p: torch.Tensor) -> torch.Tensor:
        """``[batch, d] → [batch, d]``, ``p R^{-1/2}`` (R^{-1/2} is symmetric)."""
        if self.blocks is None:
            return p
        out = torch.empty_like(p)
        if not hasattr(self, "_torch") or self._torch[0].device != p.device:
            self._torch = [torch.from_numpy(b).to(p.device, torch.float32) for b in self.blocks]
        for (off, size), w in zip(self.spans, self._torch, strict=True):
            out[:, off:off + size] = p[:, off:off + size] @ w
        return out

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.mode}:{self.lam}:{self.k}:{self.damping}:{self.spans}".encode())
        for b in self.blocks or []:
            h.update(np.ascontiguousarray(b, dtype=np.float64).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        return {"hessian": self.mode, "lambda": self.lam, "lambda_k": self.k,
                "damping": self.damping, "blocks": len(self.spans),
                "train_examples": self.n_train, "eval_examples": self.n_eval}


@dataclass
class Decomposed:
    """The eigendecomposition of R for one mode and λ: everything R^{-1/2} needs but the
    damping, so several dampings share one decomposition (:func:`whiten`)."""

    spans: list[tuple[int, int]]
    eig: list[tuple[np.ndarray, np.ndarray]]
    mode: str
    lam: float | None
    k: int | None
    n_train: int
    n_eval: int


def decompose(
    mode: str,
    r_train: RAccumulator | None,
    r_eval: RAccumulator | None,
    lam: float | str | None = None,
    k: int | None = None,
) -> Decomposed:
    """R for ``mode`` in ``mixed`` / ``train`` (λ a number, or ``"auto"`` / ``None`` for the
    paper's rule, :func:`auto_lambda`) and its eigenvectors."""
    if r_train is None:
        raise FactraceError(f"--hessian {mode} needs training examples for R_train")
    train = r_train.matrices()
    spans = r_train.spans
    dim = sum(size for _, size in spans)
    if mode == "train":
        mixed, lam, k = train, None, None
    elif mode == "mixed":
        if r_eval is None:
            raise FactraceError("--hessian mixed needs queries for R_eval")
        evals = r_eval.matrices()
        if lam in (None, "auto"):
            k = default_k(dim, r_train.count, r_eval.count) if k is None else k
            k = min(k, dim - 1)
            lam = auto_lambda(descending_spectrum(train), descending_spectrum(evals), k)
        mixed = [lam * e + (1 - lam) * t for e, t in zip(evals, train, strict=True)]
    else:
        raise FactraceError(f"unknown hessian mode {mode!r}")
    return Decomposed(spans, eigh_blocks(mixed), mode, lam, k, r_train.count,
                      r_eval.count if r_eval is not None else 0)


def whiten(d: Decomposed, damping: float) -> Whitening:
    """R^{-1/2} with damping η from a decomposition."""
    # Kept in float32, the precision it is applied in: the saved state is half the size and
    # encodes exactly as before saving.
    blocks = [inverse_sqrt(w, u, damping).astype(np.float32) for w, u in d.eig]
    return Whitening(d.spans, blocks, d.mode, d.lam, d.k, damping, d.n_train, d.n_eval)


def fit_whitening(
    mode: str,
    r_train: RAccumulator | None,
    r_eval: RAccumulator | None,
    damping: float,
    lam: float | str | None = None,
    k: int | None = None,
) -> Whitening:
    """R^{-1/2} for ``mode`` in ``mixed`` / ``train`` / ``none``."""
    if mode == "none":
        return Whitening.identity()
    return whiten(decompose(mode, r_train, r_eval, lam, k), damping)
