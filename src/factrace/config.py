"""Typed configuration. One dataclass per job; every field documented; hashing gives a fingerprint.

The named variants (the paper's ablation ladder, docs/design.md § "Named variants") are
ready-made :class:`EncoderConfig` defaults; options given explicitly override them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field

from factrace.errors import FactraceError

SECOND_MOMENT_MODES = ("factored", "exact", "adafactor", "estimate", "none")
HESSIAN_MODES = ("mixed", "train", "none")
HESSIAN_STRUCTURES = ("auto", "global", "block")
LAYOUTS = ("layers", "modules")
PROJECTIONS = ("kronecker", "exact")


@dataclass(frozen=True)
class EncoderConfig:
    """How a training passage or a query becomes its TrackStar encoding ψ(z).

    ψ(z) = unit_normalize(R^{-1/2} · P · (∇θ L(z) / (sqrt(V) + ε))).
    """

    variant: str = "trackstar"
    """Name of the ladder step these settings came from (informational once built)."""
    dim: int | None = None
    """Projection dimension d = Σ_k a_k·b_k; ``None`` → 2^16 (on CPU at most 4096 per
    projection block: 2^14 for a 2-layer model's 4 blocks, 2^16 from 8 layers on; with
    ``projection="exact"``: the number of tracked weights, and it may not be set)."""
    projection: str = "kronecker"
    """``kronecker``: seeded two-sided Gaussian projection into d dimensions; ``exact``: no
    projection at all, ψ from the whole corrected per-example gradient (one block per module,
    d = Σ d_out·d_in): the yardstick for every projection, practical for models up to tens of
    millions of parameters, and only without R (``hessian="none"``)."""
    layout: str = "layers"
    """``layers``: contiguous layer groups × {attention, MLP} (the paper's); ``modules``: one
    block per tracked module."""
    layer_groups: int = 8
    """Number of contiguous layer groups in the ``layers`` layout (capped by the layer count)."""
    aspect: float = 1.0
    """Shape of each projection block ``a × b``: ``a/b ≈ aspect``, a being the side of the output
    gradients δ (``L``, rows) and b the side of the inputs x (``R``, columns)."""
    second_moment: str = "factored"
    """Optimizer correction: ``factored`` (rank-one Adafactor form of Adam's V), ``exact``
    (elementwise), ``adafactor`` (the optimizer's own row/column state), ``estimate`` (no
    optimizer state: V estimated from per-example gradients), ``none``."""
    epsilon: float = 1e-8
    """ε in ∇/(sqrt(V) + ε); a floor on the row/column sums in the factored forms."""
    estimate_examples: int = 256
    """Training examples used to estimate V in ``estimate`` mode."""
    hessian: str = "mixed"
    """``mixed``: R = λ R_eval + (1 − λ) R_train (TrackStar); ``train``: R_train; ``none``."""
    hessian_structure: str = "auto"
    """``global`` (d × d), ``block`` (one matrix per projection block) or ``auto`` (global up to
    d = 8192, block-diagonal above, where a float64 d × d matrix and its eigendecomposition no
    longer fit a laptop's budget)."""
    lambda_: float | str | None = 0.5
    """Mixing weight λ of R_eval in [0, 1]. ``"auto"`` (``None`` in stores written before
    it had a name): the paper's rule, the scaled eigenvalue curves of R_eval and R_train cross
    at ``lambda_k`` (``trackstar-paper``, ``trackstar-auto``). The fixed 0.5 was at least as good
    on both MRR and tail-patch on four of five worlds and traded MRR for tail-patch on the
    real-model one, where the rule gave λ ≈ 0.98 (benchmarks/README.md, "damping")."""
    lambda_k: int | None = None
    """Component where the scaled eigenvalue curves cross; ``None`` → d/64, capped below the
    rank of R_eval and R_train."""
    damping: float | str = 10.0
    """η in R^{-1/2} = U (Λ + η·mean(Λ))^{-1/2} Uᵀ. The default damps hard: R^{-1/2} then
    down-weights only R's dominant directions (the gradient directions common to most
    examples) and leaves the rest near the identity. η = 0.1 (``trackstar-paper``) whitens the
    weak directions too, which are mostly sketch noise at this d, and measurably lowered both
    MRR and tail-patch on the benchmarks (benchmarks/README.md, "quality"). ``"auto"``: each
    block's η from R_train's Ledoit–Wolf shrinkage (:meth:`TrainBasis.shrinkage`), measured
    against fixed η on four worlds in benchmarks/README.md, "damping"."""
    train_examples: int = 2048
    """Training examples sampled (evenly spaced over the corpus) to estimate R_train."""
    normalize: bool = True
    """Unit-normalise ψ (cosine scores); off only for ``grad-dot``."""
    seed: int = 0
    """Seed of the projection matrices (regenerated bit for bit from seed and module name)."""
    include: tuple[str, ...] = ()
    """Globs adding linear modules outside the repeated blocks (e.g. ``lm_head``)."""
    only: tuple[str, ...] = ()
    """Globs restricting tracking to the modules they match."""
    exclude: tuple[str, ...] = ()
    """Globs removing tracked modules."""
    loss_reduction: str = "sum"
    """``sum`` or ``mean`` over target tokens; irrelevant after unit normalisation."""
    max_length: int | None = None
    """Tokens per example; ``None`` → the model's context."""
    overflow: str = "window"
    """Longer passages: ``window`` (split into ``<doc>#<n>`` windows) or ``truncate``."""
    device: str | None = None
    """``auto``/``None``, ``cpu``, ``cuda``, ``cuda:N``. Not part of the fingerprint."""
    dtype: str | None = None
    """Model dtype: ``float32`` (CPU default), ``bfloat16`` (CUDA default), ``float16``."""
    batch_tokens: int | None = None
    """Token budget per batch (padded batch × length); ``None``: 8192 on a CPU, grown to fill the
    device on CUDA (:mod:`factrace.encode.budget`). Not part of the fingerprint."""
    compile: bool = False
    """``torch.compile`` the model's forward (the capture hooks stay eager): compilation up front
    for fused elementwise work after. Not part of the fingerprint."""
    extra: dict = field(default_factory=dict)
    """Free-form notes recorded with the configuration (not used by the encoder)."""

    def __post_init__(self):
        _check(self.layout, LAYOUTS, "layout")
        _check(self.projection, PROJECTIONS, "projection")
        _check(self.second_moment, SECOND_MOMENT_MODES, "second-moment")
        _check(self.hessian, HESSIAN_MODES, "hessian")
        _check(self.hessian_structure, HESSIAN_STRUCTURES, "hessian-structure")
        _check(self.loss_reduction, ("sum", "mean"), "loss-reduction")
        _check(self.overflow, ("window", "truncate"), "overflow")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise FactraceError(f"--batch-tokens must be positive, got {self.batch_tokens}")
        if self.dim is not None and self.dim < 1:
            raise FactraceError(f"--dim must be positive, got {self.dim}")
        if self.lambda_ not in (None, "auto"):
            try:
                lam = float(self.lambda_)  # "0.5" from the CLI
            except (TypeError, ValueError):
                lam = math.nan
            if not 0.0 <= lam <= 1.0:
                raise FactraceError(f"--lambda must be a number in [0, 1] or auto, got "
                                    f"{self.lambda_!r}")
            object.__setattr__(self, "lambda_", lam)
        if not self.aspect > 0:
            raise FactraceError(f"--aspect must be positive, got {self.aspect}")
        if self.damping != "auto":
            try:
                object.__setattr__(self, "damping", float(self.damping))  # "3" from the CLI
            except (TypeError, ValueError):
                raise FactraceError(f"--damping must be a number >= 0 or auto, got "
                                    f"{self.damping!r}") from None
            if not self.damping >= 0:
                raise FactraceError(f"--damping must be >= 0, got {self.damping}")
        if self.projection == "exact" and self.hessian != "none":
            raise FactraceError(
                f"--projection exact has no R (a d × d matrix over every weight is out of reach): "
                f"use --hessian none (or a variant without R, e.g. grad-cos+opt), not "
                f"--hessian {self.hessian}")
        if self.projection == "exact" and self.dim is not None:
            raise FactraceError("--projection exact sets d to the number of tracked weights: "
                                "leave --dim unset")

    def replace(self, **changes) -> EncoderConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        d["only"] = list(self.only)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        d = dict(d)
        d["include"], d["exclude"] = tuple(d.get("include", ())), tuple(d.get("exclude", ()))
        d["only"] = tuple(d.get("only", ()))
        return cls(**d)

    def fingerprint(self) -> str:
        """Hash of every field that changes ψ (device, batch size and notes excluded).

        ``dim`` is left out: ``None`` means "the default d", resolved per model and device, so a
        configuration that names the default and one that leaves it unset encode alike; the
        resolved d is fingerprinted on its own (``Encoder.fingerprints()["dim"]``)."""
        d = self.to_dict()
        for k in ("device", "batch_tokens", "extra", "variant", "dtype", "compile", "dim"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _check(value, allowed, option):
    if value not in allowed:
        raise FactraceError(f"--{option} must be one of {', '.join(allowed)}; got {value!r}")


VARIANTS: dict[str, dict] = {
    "grad-dot": dict(second_moment="none", hessian="none", normalize=False),
    "grad-cos": dict(second_moment="none", hessian="none", normalize=True),
    "grad-cos+opt": dict(second_moment="factored", hessian="none", normalize=True),
    "trackstar-train": dict(second_moment="factored", hessian="train", normalize=True),
    "trackstar": dict(second_moment="factored", hessian="mixed", normalize=True),
    "trackstar-paper": dict(second_moment="factored", hessian="mixed", normalize=True,
                            damping=0.1, lambda_="auto"),
    "trackstar-auto": dict(second_moment="factored", hessian="mixed", normalize=True,
                           damping="auto", lambda_="auto"),
}
"""The ladder: each step adds one ingredient of TrackStar; ``trackstar-paper`` is TrackStar with
the light damping η = 0.1 and the paper's automatic λ (the earlier defaults), kept by name
for comparison; ``trackstar-auto`` sets each block's η from R_train's Ledoit–Wolf shrinkage
(``--damping auto``) and λ by the paper's rule: both from the data."""


def variant_config(name: str = "trackstar", **overrides) -> EncoderConfig:
    """The configuration of a named variant, with explicit options overriding its defaults.

    ``None`` values in ``overrides`` mean "not given" and keep the variant's default.
    """
    if name not in VARIANTS:
        raise FactraceError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return EncoderConfig(variant=name, **{**VARIANTS[name], **given})
