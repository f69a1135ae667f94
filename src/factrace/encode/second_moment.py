"""Optimizer correction ``G ⊙ (sqrt(V) + ε)^{-1}`` in its modes (docs/design.md §
"Optimizer correction").

Everything here is in the canonical ``[d_out, d_in]`` layout of a tracked module. The factored
forms use the rank-one approximation ``V ≈ r cᵀ / Σr`` (r, c the row and column sums of V), so

    G ⊙ V^{-1/2} ≈ (Σr)^{1/2} · diag(r^{-1/2}) · G · diag(c^{-1/2})

and the correction becomes a row scale on δ and a column scale on x: G is never built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from factrace.errors import FactraceError
from factrace.model.modules import TrackedModule
from factrace.model.optimizer_state import OptimizerState, ParamMoment


@dataclass
class Correction:
    """The correction of one module.

    Factored: ``row`` ``[d_out]`` multiplies δ and ``col`` ``[d_in]`` multiplies x.
    Exact: ``inverse`` ``[d_out, d_in]`` multiplies the per-example gradient elementwise.
    """

    row: torch.Tensor | None = None
    col: torch.Tensor | None = None
    inverse: torch.Tensor | None = None

    @property
    def factored(self) -> bool:
        return self.row is not None


def factored_from_sums(r: torch.Tensor, c: torch.Tensor, epsilon: float) -> Correction:
    """Row/column scales from the row sums ``r`` ``[d_out]`` and column sums ``c`` ``[d_in]`` of V.

    ``(Σr)^{1/2}`` is split evenly between the two sides. ε floors the sums (r ≥ d_in·ε²,
    c ≥ d_out·ε², the sums of a V that is ε² everywhere), so a dead unit divides by ε, not 0.
    """
    r = r.double().clamp(min=c.numel() * epsilon**2, max=None).clamp(min=1e-300)
    c = c.double().clamp(min=r.numel() * epsilon**2, max=None).clamp(min=1e-300)
    quarter = r.sum() ** 0.25
    return Correction(row=(quarter / r.sqrt()).float(), col=(quarter / c.sqrt()).float())


def canonical(tensor: torch.Tensor, module: TrackedModule) -> torch.Tensor:
    """A tensor shaped like the module's parameter, cut to the module's weight (one expert's
    slice of a fused parameter) in the canonical ``[d_out, d_in]`` layout."""
    return module.weight_of(tensor)


def _check_shape(shape: tuple[int, ...], module: TrackedModule, source: str) -> None:
    """The parameter's whole second moment (all experts of a fused one) fits the model."""
    if tuple(shape) != module.param_shape:
        raise FactraceError(
            f"{source}: second moment of {module.param_name!r} has shape {tuple(shape)}, "
            f"expected {module.param_shape} (the model's)"
        )


def correction_for(
    module: TrackedModule, moment: ParamMoment | None, mode: str, epsilon: float, source: str = ""
) -> Correction | None:
    """The correction of ``module`` in ``mode`` from its saved optimizer moment."""
    if mode == "none":
        return None
    if moment is None:
        raise FactraceError(f"--second-moment {mode} needs optimizer state for "
                            f"{module.param_name!r}")
    if mode == "adafactor":
        if moment.row is None:
            raise FactraceError(f"{source}: no factored (Adafactor) state for "
                                f"{module.param_name!r}; use --second-moment factored")
        row, col = moment.row.double(), moment.col.double()  # means over last / second-to-last dim
        _check_shape((*row.shape, col.shape[-1]), module, source)
        if module.expert >= 0:  # [experts, ..]: this expert's
            row, col = row[module.expert], col[module.expert]
        if module.transposed:  # parameter [d_in, d_out]: row is over d_in, col over d_out
            r, c = module.d_in * col, module.d_out * row
        else:
            r, c = module.d_in * row, module.d_out * col
        return factored_from_sums(r, c, epsilon)
    if moment.exp_avg_sq is None:
        raise FactraceError(f"{source}: no exp_avg_sq for {module.param_name!r}; "
                            "use --second-moment adafactor for factored optimizer state")
    v = moment.bias_corrected()
    _check_shape(tuple(v.shape), module, source)
    v = canonical(v, module)
    if mode == "factored":
        return factored_from_sums(v.sum(dim=1), v.sum(dim=0), epsilon)
    if mode == "exact":
        return Correction(inverse=1.0 / (v.sqrt() + epsilon))
    raise FactraceError(f"unknown second-moment mode {mode!r}")


def corrections_from_state(
    tracked: list[TrackedModule], state: OptimizerState | None, mode: str, epsilon: float
) -> dict[str, Correction | None]:
    """Per-module corrections (``None`` everywhere in mode ``none``)."""
    if mode == "none":
        return {m.name: None for m in tracked}
    if state is None:
        raise FactraceError(
            f"--second-moment {mode} needs --optimizer-state; without one use "
            "--second-moment estimate (V estimated from gradients) or none"
        )
    return {m.name: correction_for(m, state[m.param_name], mode, epsilon, state.source)
            for m in tracked}


class SquaredGradientSums:
    """Accumulates the row and column sums of Σ_examples G ⊙ G for ``estimate`` mode.

    For one example with activations ``x`` ``[tokens, d_in]`` and output gradients ``δ``
    ``[tokens, d_out]``, ``G = δᵀ x``; its squared row sums are ``diag(δᵀ (x xᵀ) δ)`` and column
    sums ``diag(xᵀ (δ δᵀ) x)``, computed without building G.
    """

    def __init__(self):
        self.r: dict[str, torch.Tensor] = {}
        self.c: dict[str, torch.Tensor] = {}
        self.examples: dict[str, int] = {}

    def add(self, name: str, x: torch.Tensor, delta: torch.Tensor) -> None:
        """``x``: ``[batch, tokens, d_in]``; ``delta``: ``[batch, tokens, d_out]`` (float32)."""
        x, delta = x.double(), delta.double()
        kx = torch.bmm(x, x.transpose(1, 2))  # [batch, tokens, tokens]
        kd = torch.bmm(delta, delta.transpose(1, 2))
        r = (torch.bmm(kx, delta) * delta).sum(dim=(0, 1))
        c = (torch.bmm(kd, x) * x).sum(dim=(0, 1))
        self.r[name] = self.r.get(name, 0) + r.cpu()
        self.c[name] = self.c.get(name, 0) + c.cpu()
        self.examples[name] = self.examples.get(name, 0) + x.shape[0]

    def add_examples(self, name: str, n: int) -> None:
        """Count ``n`` examples whose gradient of ``name`` is zero (an expert no token of the
        batch was routed to)."""
        self.examples[name] = self.examples.get(name, 0) + n

    def corrections(self, tracked: list[TrackedModule], epsilon: float) -> dict[str, Correction]:
        if not self.examples:
            raise FactraceError("estimate mode saw no training examples to estimate V from")
        # Means over examples, so that V has the scale of a squared gradient and ε its meaning.
        out = {}
        for m in tracked:
            n = self.examples[m.name]
            r = self.r.get(m.name, torch.zeros(m.d_out, dtype=torch.float64))
            c = self.c.get(m.name, torch.zeros(m.d_in, dtype=torch.float64))
            out[m.name] = factored_from_sums(r / n, c / n, epsilon)
        return out


def merge_squared_sums(parts: list[SquaredGradientSums]) -> SquaredGradientSums:
    """Add partial :class:`SquaredGradientSums` (from several workers) in the order given."""
    total = SquaredGradientSums()
    for part in parts:
        for name in part.r:
            total.r[name] = total.r.get(name, 0) + part.r[name]
            total.c[name] = total.c.get(name, 0) + part.c[name]
        for name, n in part.examples.items():
            total.examples[name] = total.examples.get(name, 0) + n
    return total
