"""TrackStar's R at query time: R_train fitted once, R_eval and λ from the questions asked.

The score of a query q and a training example m is the cosine of their whitened projections,

    I(m, q) = qᵀ R⁻¹ p / (‖R^{-1/2} q‖ · ‖R^{-1/2} p‖),   R = λ R_eval + (1 − λ) R_train + c·I,

with c = η · tr(R_mixed)/size per diagonal block (η times the mean eigenvalue, as in
:func:`factrace.encode.hessian.inverse_sqrt`). Only R⁻¹ is needed, never R^{-1/2}; and
R_eval = YᵀY/T is of rank at most T (the number of query examples), so per block

    R⁻¹ = W − W Yᵀ M⁻¹ Y W,   W = ((1 − λ) S + c)⁻¹,   M = (T/λ) I + Y W Yᵀ  (Woodbury)

where S are R_train's eigenvalues and every vector is written in R_train's eigenbasis (so W is
diagonal). A store therefore keeps each example's projection rotated into that basis and unit
normalised (:meth:`TrainBasis.rows`); any set of queries can then be scored against it exactly
as a scan with those queries would, at the cost of the T-dimensional products below
(:class:`TaskWhitening`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from factrace.encode.hessian import RAccumulator, auto_lambda, default_k
from factrace.errors import FactraceError


def _unit(p: torch.Tensor) -> torch.Tensor:
    return p / p.norm(dim=1, keepdim=True).clamp(min=1e-30)


@dataclass
class Reflectors:
    """An orthogonal ``size × size`` basis kept as ``r`` Householder reflectors (LAPACK's
    ``geqrf`` form): ``Q = H_1 ⋯ H_r``, whose first ``r`` columns span R_train's nonzero
    eigenvectors and whose other columns complete them to a basis (R_train is 0 there, so any
    completion serves). ``size × r`` numbers instead of ``size × size``."""

    a: torch.Tensor  # [size, r] float32, the reflectors below the diagonal
    tau: torch.Tensor  # [r] float32

    @classmethod
    def spanning(cls, u: torch.Tensor) -> Reflectors:
        """The reflectors whose ``Q[:, :r]`` equals ``u``'s orthonormal columns up to sign."""
        a, tau = torch.geqrf(u)
        return cls(a.float(), tau.float())

    def apply(self, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``x Q`` (``x Qᵀ`` with ``transpose``) for rows ``x`` ``[n, size]``."""
        a, tau = self.a.to(x.device, x.dtype), self.tau.to(x.device, x.dtype)
        return torch.ormqr(a, tau, x.T.contiguous(), left=True, transpose=not transpose).T

    def dense(self) -> torch.Tensor:
        """``Q`` as a ``[size, size]`` matrix (for references and small blocks)."""
        return self.apply(torch.eye(self.a.shape[0], dtype=self.a.dtype), transpose=True).T


def _low_rank_eigh(rows: torch.Tensor) -> tuple[np.ndarray, Reflectors]:
    """The eigenvalues of ``rowsᵀ rows / N`` (``[N, size]``, N < size, float64) on a basis
    (:class:`Reflectors`), from the N × N Gram matrix: ``size`` values, the nonzero ones first,
    each in the position of its basis vector."""
    n, size = rows.shape
    values, v = np.linalg.eigh((rows @ rows.T).numpy() / n)
    keep = values > max(float(values[-1]), 0.0) * 1e-12
    values, v = values[keep], torch.from_numpy(v[:, keep])
    u = rows.T @ v / torch.from_numpy(np.sqrt(values * n))  # [size, r], orthonormal columns
    spectrum = np.zeros(size)
    spectrum[:values.size] = values
    return spectrum, Reflectors.spanning(u)


@dataclass
class TrainBasis:
    """R_train per diagonal block: eigenvalues (float64, in the order of the basis vectors) and
    the basis: eigenvectors as float32 columns, or, when R_train came from fewer examples than
    the block has dimensions, :class:`Reflectors` spanning them (rank ≤ N: what is left of the
    block has eigenvalue 0). ``values is None``: no R (``--hessian none``), the identity."""

    spans: list[tuple[int, int]]
    values: list[np.ndarray] | None
    vectors: list[torch.Tensor | Reflectors] | None
    n_train: int = 0
    fourth: list[float] | None = None
    """``Σ ‖p_block‖⁴`` over the training examples, per block (``None`` in stores built before
    it was kept: :func:`shrinkage_damping` then assumes Gaussian rows)."""

    @classmethod
    def identity(cls, dim: int) -> TrainBasis:
        return cls([(0, dim)], None, None, 0)

    @classmethod
    def fit(cls, r_train: RAccumulator) -> TrainBasis:
        """The eigendecomposition of R_train's blocks (float64, kept in float32 for rotating):
        from the examples' Gram matrix while they are fewer than a block's dimensions, else
        from the accumulated ``size × size`` sums."""
        if r_train.count == 0:
            raise FactraceError("no examples to estimate the Hessian approximation R from")
        rows = r_train.rows
        values, vectors = [], []
        if rows is not None:
            for off, size in r_train.spans:
                w, reflectors = _low_rank_eigh(rows[:, off:off + size])
                values.append(w)
                vectors.append(reflectors)
        else:
            for m in r_train.matrices():
                w, u = np.linalg.eigh((m + m.T) / 2)
                values.append(np.clip(w, 0.0, None))
                vectors.append(torch.from_numpy(u.astype(np.float32)))
        return cls(list(r_train.spans), values, vectors, r_train.count, list(r_train.fourth))

    @property
    def dim(self) -> int:
        return sum(size for _, size in self.spans)

    @property
    def is_identity(self) -> bool:
        return self.values is None

    def _apply(self, p: torch.Tensor, transpose: bool) -> torch.Tensor:
        if self.vectors is None:
            return p
        out = torch.empty_like(p)
        for (off, size), u in zip(self.spans, self.vectors, strict=True):
            block = p[:, off:off + size]
            if isinstance(u, Reflectors):
                out[:, off:off + size] = u.apply(block, transpose)
            else:
                u = u.to(p.device, p.dtype)
                out[:, off:off + size] = block @ (u.T if transpose else u)
        return out

    def rotate(self, p: torch.Tensor) -> torch.Tensor:
        """``[n, d] → [n, d]``: each block's coordinates in R_train's eigenbasis (``p U``)."""
        return self._apply(p, transpose=False)

    def unrotate(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`rotate` (``x Uᵀ``): rotated coordinates back to the projection's."""
        return self._apply(x, transpose=True)

    def dense_vectors(self) -> list[torch.Tensor] | None:
        """Each block's basis as a ``[size, size]`` float32 matrix (columns: basis vectors)."""
        if self.vectors is None:
            return None
        return [u.dense() if isinstance(u, Reflectors) else u for u in self.vectors]

    def rows(self, p: torch.Tensor) -> torch.Tensor:
        """What a store keeps of each example: ``p`` rotated, then unit norm (the scale of a
        training example's projection cancels in its cosine)."""
        return _unit(self.rotate(p))

    def shrinkage(self) -> list[float]:
        """``--damping auto``: each block's η from R_train alone, Ledoit and Wolf's shrinkage
        weight of its estimate (:func:`shrinkage_damping` with λ = 0). A property of the store:
        every task on it, one question or thousands, is damped alike."""
        if self.values is None:
            return []
        fourth = self.fourth or [None] * len(self.spans)
        return [shrinkage_damping(v, f, self.n_train, None, 0.0)
                for v, f in zip(self.values, fourth, strict=True)]

    def spectrum(self) -> np.ndarray:
        """All eigenvalues of R_train, descending."""
        return np.sort(np.concatenate(self.values))[::-1]

    def to_state(self) -> dict:
        vectors = None if self.vectors is None else [
            {"a": u.a, "tau": u.tau} if isinstance(u, Reflectors) else u for u in self.vectors]
        return {"spans": [list(s) for s in self.spans], "n_train": self.n_train,
                "values": None if self.values is None else [torch.from_numpy(v) for v in self.values],
                "vectors": vectors, "fourth": self.fourth}

    @classmethod
    def from_state(cls, state: dict) -> TrainBasis:
        values, vectors = state["values"], state["vectors"]
        if vectors is not None:
            vectors = [Reflectors(u["a"], u["tau"]) if isinstance(u, dict) else u for u in vectors]
        return cls([tuple(s) for s in state["spans"]],
                    None if values is None else [v.numpy() for v in values],
                    vectors, state["n_train"], state.get("fourth"))


ETA_MAX = 1e6
"""The largest η :func:`shrinkage_damping` returns (its shrinkage weight 1: R ∝ I)."""


def shrinkage_damping(values: np.ndarray, fourth: float | None, n_train: int,
                      y: torch.Tensor | None, lam: float) -> float:
    """η for one diagonal block of R, set from the data: Ledoit and Wolf's shrinkage weight.

    R + η·μ·I (μ = tr R / size) is, up to a scale no cosine sees, the shrinkage estimate
    (1 − δ) R + δ μ I with δ = η / (1 + η). Ledoit and Wolf (2004, "A well-conditioned
    estimator for large-dimensional covariance matrices") give the δ that minimises the expected
    Frobenius error of that estimate from the samples themselves: δ = b² / d², where d² =
    ‖R − μI‖² is how far R is from a multiple of the identity and b² (at most d²) is the
    sampling variance of R's estimate, Σ_k ‖x_k x_kᵀ − S‖² / N² for N rows x_k with second
    moment S. R here mixes two independent estimates, R = λ R_eval + (1 − λ) R_train, so
    b² = λ² b²_eval + (1 − λ)² b²_train.

    A spectrum far from flat relative to its noise (a few strong directions that every query
    shares, e.g. a phrasing no training passage uses) gives a small δ: whiten strongly. A noisy,
    nearly flat one gives δ near 1: leave R near the identity. No gold and no tail-patch enter.

    ``values``: R_train's eigenvalues in this block; ``fourth``: Σ ‖x_k‖⁴ over R_train's N
    examples (``None``: as for Gaussian rows, N (tr² + 2‖S‖²)); ``y``: the task's query rows in
    R_train's basis ``[T, size]`` (R_eval = yᵀy / T), ignored when λ = 0.
    """
    size = values.size
    tr_t, s2_t = float(values.sum()), float(np.square(values).sum())
    if fourth is None:
        fourth = n_train * (tr_t ** 2 + 2 * s2_t)
    noise = (1 - lam) ** 2 * max(fourth / n_train - s2_t, 0.0) / n_train if n_train else 0.0
    tr, s2 = (1 - lam) * tr_t, (1 - lam) ** 2 * s2_t
    if lam > 0 and y is not None and y.shape[0]:
        y = y.double()
        t = y.shape[0]
        sq = y.square()
        norms = sq.sum(1)
        gram = y @ y.T
        s2_e = float(gram.square().sum()) / t ** 2
        tr += lam * float(norms.sum()) / t
        s2 += lam ** 2 * s2_e + 2 * lam * (1 - lam) * float(
            (sq @ torch.from_numpy(values)).sum()) / t  # tr(R_eval R_train): R_train diagonal
        noise += lam ** 2 * max(float(norms.square().sum()) / t - s2_e, 0.0) / t
    spread = s2 - tr ** 2 / size
    if spread <= 0 or noise >= spread:
        return ETA_MAX
    delta = noise / spread
    return min(delta / (1 - delta), ETA_MAX)


@dataclass
class _Block:
    """One diagonal block of R⁻¹ = W − W Yᵀ M⁻¹ Y W (Y, M absent without R_eval)."""

    off: int
    size: int
    w: torch.Tensor  # [size] float32, the diagonal of W
    yw: torch.Tensor | None = None  # [T, size] float32, Y W
    m_inv: torch.Tensor | None = None  # [T, T] float32
    scale: float = 0.0  # T / λ
    factor: tuple[torch.Tensor, torch.Tensor] | None = None  # (V, coefficients), see factor()


@dataclass
class TaskWhitening:
    """R⁻¹ for one task (a set of query examples defining R_eval, or none), in R_train's basis.

    Build it with :meth:`fit`; score with :meth:`scorer`.
    """

    mode: str
    dim: int
    blocks: list[_Block] = field(repr=False)
    lam: float | None = None
    k: int | None = None
    damping: float | str | None = None
    n_train: int = 0
    n_eval: int = 0
    normalize: bool = True
    """Cosines (TrackStar); ``False``: plain products ``qᵀ R⁻¹ p`` (stored rows then keep
    their scale)."""
    etas: list[float] | None = None
    """η of each block (all equal to ``damping`` unless it is ``"auto"``)."""

    @classmethod
    def fit(cls, basis: TrainBasis, mode: str, y: torch.Tensor | None = None,
            damping: float | str | list[float] = 10.0, lam: float | str | None = None,
            k: int | None = None,
            normalize: bool = True) -> TaskWhitening:
        """R⁻¹ for ``mode`` (``none`` / ``train`` / ``mixed``); ``y``: the task's query
        projections rotated into ``basis`` (``[T, d]``, needed by ``mixed``); ``lam``: λ, or
        ``"auto"`` / ``None`` for the paper's rule, as in
        :func:`factrace.encode.hessian.decompose`; ``damping``: η, ``"auto"`` for each block's η
        from R_train's data (:meth:`TrainBasis.shrinkage`), or a list of one η per block."""
        dim = basis.dim
        if mode == "none" or basis.is_identity:
            if mode != "none":
                raise FactraceError(f"--hessian {mode} needs R_train; this encoder has none")
            return cls("none", dim, [_Block(0, dim, torch.ones(dim))], normalize=normalize)
        n_eval = 0
        if mode == "train":
            lam, k = 0.0, None
        elif mode == "mixed":
            if y is None or y.shape[0] == 0:
                raise FactraceError("--hessian mixed needs queries for R_eval")
            y = y.double().cpu()
            n_eval = y.shape[0]
            grams = [y[:, off:off + size] @ y[:, off:off + size].T / n_eval
                     for off, size in basis.spans]
            if lam in (None, "auto"):
                k = default_k(dim, basis.n_train, n_eval) if k is None else k
                k = min(k, dim - 1)
                eval_values = np.concatenate([np.clip(np.linalg.eigvalsh(g.numpy()), 0.0, None)
                                              for g in grams])
                sigma_eval = np.zeros(dim)
                sigma_eval[:eval_values.size] = np.sort(eval_values)[::-1][:dim]
                lam = auto_lambda(basis.spectrum(), sigma_eval, k)
        else:
            raise FactraceError(f"unknown hessian mode {mode!r}")
        blocks, etas = [], []
        per_block = basis.shrinkage() if damping == "auto" else (
            list(damping) if isinstance(damping, (list, tuple)) else None)
        for i, (off, size) in enumerate(basis.spans):
            s = basis.values[i]
            trace = (1 - lam) * float(s.sum())
            if n_eval:
                yb = y[:, off:off + size]
                trace += lam * float((yb * yb).sum()) / n_eval
            eta = damping if per_block is None else per_block[i]
            etas.append(float(eta))
            shift = eta * trace / size
            diag = (1 - lam) * s + shift
            if np.any(diag <= 0):
                raise FactraceError("R is singular and damping is 0: set --damping > 0")
            w = torch.from_numpy(1.0 / diag)
            block = _Block(off, size, w.float())
            if n_eval and lam > 0:
                yw = yb * w
                m = yw @ yb.T + (n_eval / lam) * torch.eye(n_eval, dtype=torch.float64)
                block.yw, block.scale = yw.float(), n_eval / lam
                block.m_inv = torch.linalg.inv((m + m.T) / 2).float()
            blocks.append(block)
        return cls(mode, dim, blocks, lam if mode == "mixed" else None, k, damping,
                   basis.n_train, n_eval, normalize, etas)

    # R⁻¹ applied ------------------------------------------------------------------------------
    def apply_inverse(self, x: torch.Tensor) -> torch.Tensor:
        """``R⁻¹ x`` for rows ``x`` ``[n, d]`` (rotated coordinates)."""
        x = x.float()
        out = torch.empty_like(x)
        for b in self.blocks:
            xb = x[:, b.off:b.off + b.size]
            u = xb * b.w
            if b.yw is not None:
                u = u - ((xb @ b.yw.T) @ b.m_inv) @ b.yw
            out[:, b.off:b.off + b.size] = u
        return out

    def norms(self, rows: torch.Tensor) -> torch.Tensor:
        """``sqrt(xᵀ R⁻¹ x)`` of each row ``[n]`` (a training example's ‖R^{-1/2} p‖)."""
        return self._norms_and_products(rows)[0]

    def _norms_and_products(self, rows: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Row norms, and per block ``M⁻¹ Y W xᵀ`` ``[T, n]`` (reused by own-query scores)."""
        rows = rows.float()
        if not hasattr(self, "_w"):
            self._w = torch.zeros(self.dim)  # W's diagonal over every block
            for b in self.blocks:
                self._w[b.off:b.off + b.size] = b.w
        sq = rows.square() @ self._w
        products = []
        for b in self.blocks:
            xb = rows[:, b.off:b.off + b.size]
            if b.yw is not None:
                z = b.yw @ xb.T  # [T, n]
                mz = b.m_inv @ z
                sq -= (z * mz).sum(0)
                products.append((b, mz))
        return sq.clamp(min=0).sqrt(), products

    def factor(self, x: torch.Tensor) -> torch.Tensor:
        """``x Fᵀ`` for rows ``x`` ``[n, d]`` (rotated coordinates), with ``FᵀF = R⁻¹``: explicit
        encodings whose dot products are ``qᵀR⁻¹p`` (and whose norms are ``‖R^{-1/2}p‖``).

        Per block R = D + (λ/T) YᵀY with D = W⁻¹ diagonal, and F = (I + ZᵀZ)^{-1/2} D^{-1/2}
        with Z = √(λ/T) Y D^{-1/2} (rank ≤ T): from the T × T matrix Z Zᵀ = V' diag(μ) V'ᵀ,
        (I + ZᵀZ)^{-1/2} = I + V diag((1 + μ)^{-1/2} − 1) Vᵀ with V = Zᵀ V' μ^{-1/2}. F is not
        the symmetric R^{-1/2}, but no score can tell them apart."""
        x = x.float()
        out = torch.empty_like(x)
        for b in self.blocks:
            xw = x[:, b.off:b.off + b.size] * b.w.sqrt()
            if b.yw is not None:
                v, coef = self._factor_parts(b)
                xw = xw + ((xw @ v) * coef) @ v.T
            out[:, b.off:b.off + b.size] = xw
        return out

    @staticmethod
    def _factor_parts(b: _Block) -> tuple[torch.Tensor, torch.Tensor]:
        if b.factor is None:
            z = b.yw.double() / b.w.double().sqrt() / np.sqrt(b.scale)  # √(λ/T) Y W^{1/2}
            mu, vecs = torch.linalg.eigh(z @ z.T)
            keep = mu > mu.max().clamp(min=0) * 1e-12
            mu, vecs = mu[keep], vecs[:, keep]
            v = z.T @ vecs / mu.sqrt()
            b.factor = (v.float(), ((1 + mu) ** -0.5 - 1).float())
        return b.factor

    # scoring ----------------------------------------------------------------------------------
    def scorer(self, queries: torch.Tensor, own: bool = False,
               row_norms: np.ndarray | None = None) -> TaskScorer:
        """A scorer of stored rows against ``queries`` (rotated, ``[Q, d]``).

        ``own``: the queries are this task's own (the Y of R_eval, in order), so their products
        with the rows are read off the row-norm computation (one T-sized product per block
        instead of a Q-sized one). ``row_norms``: the rows' norms under this task, computed
        before (``[n_rows]``), so that only ``R⁻¹q · row`` remains per chunk.
        """
        queries = queries.float()
        u = self.apply_inverse(queries)
        qn = (u * queries).sum(1).clamp(min=0).sqrt()
        if own and (self.n_eval != queries.shape[0] or not any(
                b.yw is not None for b in self.blocks)):
            own = False
        return TaskScorer(self, u, qn, own, row_norms)

    def describe(self) -> dict:
        return {"hessian": self.mode, "lambda": self.lam, "lambda_k": self.k,
                "damping": self.damping, "block_dampings": self.etas, "blocks": len(self.blocks),
                "train_examples": self.n_train, "eval_examples": self.n_eval}


class TaskScorer:
    """Cosines of whitened projections: ``score(rows, start)`` → ``[Q, n]`` for stored rows
    ``rows`` (rotated, unit norm, ``[n, d]``) whose first has global index ``start``."""

    def __init__(self, task: TaskWhitening, u: torch.Tensor, qn: torch.Tensor, own: bool,
                 row_norms: np.ndarray | None):
        self.task, self.u, self.qn, self.own = task, u, qn.clamp(min=1e-30), own
        self.row_norms = None if row_norms is None else torch.from_numpy(
            np.asarray(row_norms, dtype=np.float32))

    @property
    def n_queries(self) -> int:
        return self.u.shape[0]

    @property
    def dim(self) -> int:
        return self.u.shape[1]

    def at(self, rows: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
        """Scores ``[Q, n]`` of stored rows ``rows`` found at global ``positions`` (any, e.g. a
        first stage's candidates): as :meth:`__call__` gives them in a pass over every row."""
        if self.row_norms is None or not self.task.normalize:
            return self(rows)  # row norms, when needed, come from the rows themselves
        rn = self.row_norms[torch.as_tensor(np.asarray(positions, dtype=np.int64))]
        return (self.u @ rows.float().T) / self.qn[:, None] / rn.clamp(min=1e-30)[None, :]

    def __call__(self, rows: torch.Tensor, start: int = 0) -> torch.Tensor:
        rows = rows.float()
        if not self.task.normalize:
            return self.u @ rows.T
        if self.row_norms is not None:
            rn = torch.ones(rows.shape[0])  # rows past the end are padding
            known = self.row_norms[start:start + rows.shape[0]]
            rn[:known.shape[0]] = known
            num = self.u @ rows.T
        elif self.own:
            rn, products = self.task._norms_and_products(rows)
            num = torch.zeros(self.n_queries, rows.shape[0])
            for b, mz in products:
                num += b.scale * mz
            # blocks without R_eval (none here: a task's R_eval spans every block)
        else:
            rn, _ = self.task._norms_and_products(rows)
            num = self.u @ rows.T
        return num / self.qn[:, None] / rn.clamp(min=1e-30)[None, :]
