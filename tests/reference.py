"""Slow, obviously correct references: autograd one example at a time, dense projections."""

from __future__ import annotations

import torch

from factrace.data.batching import collate
from factrace.encode.projection import module_projections
from factrace.model.loss import forward_logits, per_example_loss
from factrace.model.modules import TrackedModule


def autograd_gradients(model, example, tracked, reduction="sum"):
    """Per-tracked-module weight gradients of one example alone, canonical ``[d_out, d_in]``
    layout (an expert's: its slice of the fused parameter's gradient)."""
    batch = collate([example], pad_id=0)
    model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(True)
    logits = forward_logits(model, batch)
    per_example_loss(logits, batch.input_ids, batch.loss_mask, reduction).sum().backward()
    params = dict(model.named_parameters())
    grads = {tm.name: tm.weight_of(params[tm.param_name].grad.detach()).clone().double()
             for tm in tracked}
    model.zero_grad(set_to_none=True)
    return grads


def autograd_gradient(model, example, module_names, transposed, reduction="sum"):
    """Per-module weight gradients of one example alone, canonical ``[d_out, d_in]`` layout."""
    tracked = [TrackedModule(name, f"{name}.weight", 0, 0, -1, "mlp", transposed[name])
               for name in module_names]
    return autograd_gradients(model, example, tracked, reduction)


def dense_projection(encoder) -> dict[str, torch.Tensor]:
    """For each module, the dense ``[d, d_out·d_in]`` matrix ``kron(L, R)`` placed at its block's
    rows: ``vec(L G Rᵀ) = (L ⊗ R) vec(G)`` (row-major vec)."""
    out = {}
    for block in encoder.blocks:
        for tm in encoder.tracked:
            if tm.name not in block.modules:
                continue
            left, right = module_projections(encoder.config.seed, tm, block)
            dense = torch.zeros(encoder.dim, tm.d_out * tm.d_in, dtype=torch.float64)
            dense[block.offset:block.offset + block.size] = torch.kron(left.double(), right.double())
            out[tm.name] = dense
    return out


def reference_projection(encoder, example, correct=None, reduction="sum") -> torch.Tensor:
    """``P · (G ⊙ correction)`` built the slow way; ``correct(name, G) → G̃``."""
    grads = autograd_gradients(encoder.loaded.model, example, encoder.tracked, reduction)
    dense = dense_projection(encoder)
    p = torch.zeros(encoder.dim, dtype=torch.float64)
    for name, g in grads.items():
        if correct is not None:
            g = correct(name, g)
        p += dense[name] @ g.reshape(-1)
    return p


def fitted_correction(encoder):
    """``correct(name, G)`` applying the encoder's own fitted correction factors the plain way:
    ``G ⊙ (row colᵀ)`` (factored) or ``G ⊙ inverse`` (exact); ``None`` without a correction."""
    corrections = encoder._corrections

    def correct(name, g):
        c = corrections[name]
        if c is None:
            return g
        if c.factored:
            return g * torch.outer(c.row.double(), c.col.double())
        return g * c.inverse.double()
    return correct


def rotate(basis, p: torch.Tensor) -> torch.Tensor:
    """``p`` ``[d]`` (float64) in R_train's eigenbasis, block by block, in float64."""
    if basis.vectors is None:
        return p
    out = torch.empty_like(p)
    for (off, size), u in zip(basis.spans, basis.dense_vectors(), strict=True):
        out[off:off + size] = p[off:off + size] @ u.double()
    return out


def dense_r_inverse(basis, y: torch.Tensor, lam: float, damping) -> torch.Tensor:
    """R⁻¹ as one dense float64 matrix in R_train's eigenbasis, built from its definition:
    per block R = λ YᵀY/T + (1 − λ) diag(S) + η · tr(λ YᵀY/T + (1 − λ) diag(S)) / size · I
    (``damping``: η, or a list of one η per block)."""
    y = y.double()
    out = torch.zeros(basis.dim, basis.dim, dtype=torch.float64)
    etas = damping if isinstance(damping, list) else [damping] * len(basis.spans)
    for (off, size), s, eta in zip(basis.spans, basis.values, etas, strict=True):
        yb = y[:, off:off + size]
        mixed = lam * yb.T @ yb / y.shape[0] + (1 - lam) * torch.diag(torch.from_numpy(s))
        r = mixed + eta * torch.trace(mixed) / size * torch.eye(size, dtype=torch.float64)
        out[off:off + size, off:off + size] = torch.linalg.inv(r)
    return out
