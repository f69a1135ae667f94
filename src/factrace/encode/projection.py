"""Seeded two-sided Gaussian projection of per-module weight gradients into blocks.

Module i of block k gets ``L_i ∈ R^{a×o_i}`` ~ N(0, 1/a) and ``R_i ∈ R^{b×n_i}`` ~ N(0, 1/b),
generated on the CPU from (seed, module name, side), so any process on any device regenerates
them bit for bit without storing them. The block vector is
``p_k = vec(Σ_{i∈k} L_i G_i R_iᵀ) = vec(Σ_i Σ_t (L_i δ_t)(R_i x_t)ᵀ)``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from factrace.errors import FactraceError
from factrace.model.modules import TrackedModule


@dataclass(frozen=True)
class Block:
    """One projection block: output ``rows × cols`` at ``offset`` in the encoding."""

    name: str
    modules: tuple[str, ...]
    rows: int
    cols: int
    offset: int

    @property
    def size(self) -> int:
        return self.rows * self.cols


def factor_pair(m: int, aspect: float = 1.0) -> tuple[int, int]:
    """``(a, b)`` with ``a·b = m`` and ``a/b`` as close to ``aspect`` as the divisors of ``m``
    allow (on a log scale; ties go to the larger ``a``). ``aspect=1``: the most square pair,
    ``a ≥ b``."""
    target = math.log(aspect)
    best = None
    for a in range(1, m + 1):
        if m % a:
            continue
        gap = abs(math.log(a / (m // a)) - target)
        if best is None or gap <= best[0] + 1e-12:
            best = (gap, a)
    return best[1], m // best[1]


def module_groups(tracked: list[TrackedModule], layout: str = "layers",
                  layer_groups: int = 8) -> list[tuple[str, list[str]]]:
    """The projection blocks' names and modules.

    ``layers``: layers split into ``layer_groups`` contiguous groups (fewer when there are fewer
    layers), each giving an attention block and an MLP block; modules outside the blocks form one
    more block. ``modules``: one block per module.

    Mixture-of-experts: each expert's slice of a fused parameter is a tracked module of its own
    (``<experts>.<parameter>.<expert>``) with its own ``L``, ``R``; experts and routers are
    ``mlp`` modules, so under ``layers`` all experts of a layer group share that group's MLP
    block (their projected gradients add up there, as the dense MLP's parts do), and under
    ``modules`` each expert weight is a block.
    """
    if layout == "modules":
        return [(m.name, [m.name]) for m in tracked]
    if layout != "layers":
        raise FactraceError(f"unknown layout {layout!r} (use layers or modules)")
    layers = sorted({m.layer for m in tracked if m.layer >= 0})
    n_groups = max(1, min(layer_groups, len(layers)))
    group_of = {}
    for g, chunk in enumerate(np.array_split(np.array(layers), n_groups)):
        for layer in chunk.tolist():
            group_of[layer] = g
    groups: dict[str, list[str]] = {}
    for m in tracked:
        if m.layer < 0:
            key = "extra"
        else:
            g = group_of[m.layer]
            lo = min(k for k, v in group_of.items() if v == g)
            hi = max(k for k, v in group_of.items() if v == g)
            key = f"layers{lo}-{hi}.{m.part}"
        groups.setdefault(key, []).append(m.name)
    return list(groups.items())


#: Default d on a CPU: up to 2^16 (the paper's d), at most this many dimensions per block, so
#: that R_train's eigendecomposition per block stays cheap (a float64 eigh of 4096 takes
#: seconds here, of 8192 about a minute) and small models, whose projection costs the most
#: per weight, keep small blocks. Real models (≥ 8 layers: ≥ 16 blocks) get 2^16.
CPU_TARGET, CPU_MAX_BLOCK = 1 << 16, 4096


def default_dim(n_blocks: int, target: int, max_block: int | None = None) -> int:
    """The largest multiple of ``n_blocks`` not above ``target``, with at most ``max_block``
    dimensions per block (at least one per block)."""
    per_block = target // n_blocks
    if max_block is not None:
        per_block = min(per_block, max_block)
    return n_blocks * max(1, per_block)


def plan_blocks(
    tracked: list[TrackedModule], dim: int | None, layout: str = "layers", layer_groups: int = 8,
    aspect: float = 1.0, target: int = CPU_TARGET, max_block: int | None = CPU_MAX_BLOCK,
) -> list[Block]:
    """Partition tracked modules into blocks of equal size ``dim / n_blocks``, each of
    ``a × b`` with ``a/b ≈ aspect`` (:func:`module_groups` says which modules share a block).
    ``dim=None``: :func:`default_dim` of ``target`` and ``max_block``."""
    groups = module_groups(tracked, layout, layer_groups)
    if dim is None:
        dim = default_dim(len(groups), target, max_block)
    if dim % len(groups):
        raise FactraceError(
            f"--dim {dim} is not divisible by the {len(groups)} projection blocks of layout "
            f"{layout!r}; use a multiple of {len(groups)} (or leave --dim unset)"
        )
    rows, cols = factor_pair(dim // len(groups), aspect)
    return [Block(name, tuple(mods), rows, cols, i * rows * cols)
            for i, (name, mods) in enumerate(groups)]


def exact_blocks(tracked: list[TrackedModule]) -> list[Block]:
    """No projection: one block per module holding its whole ``[d_out, d_in]`` gradient."""
    blocks, offset = [], 0
    for m in tracked:
        blocks.append(Block(m.name, (m.name,), m.d_out, m.d_in, offset))
        offset += m.d_out * m.d_in
    return blocks


def _seed_for(seed: int, module: str, side: str) -> int:
    digest = hashlib.sha256(f"factrace-projection:{seed}:{module}:{side}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def gaussian(seed: int, module: str, side: str, rows: int, cols: int) -> torch.Tensor:
    """``[rows, cols]`` float32 with entries N(0, 1/rows), on the CPU, reproducible bit for bit."""
    generator = torch.Generator(device="cpu").manual_seed(_seed_for(seed, module, side))
    return torch.randn(rows, cols, generator=generator, dtype=torch.float32) / math.sqrt(rows)


def module_projections(
    seed: int, module: TrackedModule, block: Block
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, R)`` for a module in a block: ``L`` is ``[a, d_out]``, ``R`` is ``[b, d_in]``."""
    left = gaussian(seed, module.name, "left", block.rows, module.d_out)
    right = gaussian(seed, module.name, "right", block.cols, module.d_in)
    return left, right
