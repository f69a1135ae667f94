"""Tracked-module discovery: every linear weight inside the transformer blocks.

Each tracked module is described in a canonical ``(out, in)`` layout: ``nn.Linear`` stores its
weight as ``[out, in]``; Hugging Face's ``Conv1D`` (GPT-2) stores ``[in, out]`` and is marked
``transposed``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from factrace.errors import FactraceError


@dataclass(frozen=True)
class TrackedModule:
    """A linear map ``y = W x`` whose weight gradient is traced.

    ``d_out``/``d_in``: the canonical weight shape ``[d_out, d_in]``; ``layer``: index of the
    transformer block (``-1`` outside the blocks); ``part``: ``"attention"`` or ``"mlp"``.
    """

    name: str
    param_name: str
    d_out: int
    d_in: int
    layer: int
    part: str
    transposed: bool


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks: the longest ``ModuleList`` whose children share one class."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if len({type(m) for m in module}) == 1 and any(_is_linear(m) for m in module.modules()):
                if best is None or len(module) > len(best[1]):
                    best = (name, module)
    if best is None:
        raise FactraceError(
            f"{type(model).__name__}: found no list of transformer blocks to trace"
        )
    return best


def _part(name: str) -> str:
    leaf = name.lower()
    return "attention" if ("attn" in leaf or "attention" in leaf) else "mlp"


def discover(
    model: nn.Module,
    include: list[str] | tuple[str, ...] = (),
    exclude: list[str] | tuple[str, ...] = (),
    only: list[str] | tuple[str, ...] = (),
) -> list[TrackedModule]:
    """Tracked modules in ``model.named_modules()`` order.

    Default: every ``nn.Linear``/``Conv1D`` inside the blocks. ``include`` globs add linear
    modules outside the blocks (e.g. ``"lm_head"``); ``only`` globs restrict tracking to the
    modules they match; ``exclude`` globs remove modules. Globs match the module name, e.g.
    ``"*.mlp.*"``; a glob that matches nothing it could act on is an error.
    """
    blocks_name, blocks = find_blocks(model)
    prefix = blocks_name + "."
    inside, outside = {}, {}
    for name, module in model.named_modules():
        if not _is_linear(module):
            continue
        if name.startswith(prefix):
            inside[name] = module
        else:
            outside[name] = module
    selected = dict(inside)
    if include:
        matched = {n for n in outside if any(fnmatch.fnmatch(n, g) for g in include)}
        if not matched:
            raise FactraceError(f"--include {list(include)} matches no linear module outside "
                                f"the blocks ({blocks_name}); to track fewer modules inside "
                                "them, use --only")
        selected.update({n: outside[n] for n in matched})
    if only:
        selected = {n: m for n, m in selected.items()
                    if any(fnmatch.fnmatch(n, g) for g in only)}
        if not selected:
            raise FactraceError(f"--only {list(only)} matches no tracked module")
    if exclude:
        selected = {n: m for n, m in selected.items()
                    if not any(fnmatch.fnmatch(n, g) for g in exclude)}
    if not selected:
        raise FactraceError("no module left to trace after --include/--only/--exclude")
    tracked = []
    for name, module in model.named_modules():
        if name not in selected:
            continue
        weight: torch.Tensor = module.weight
        if _is_conv1d(module):
            d_in, d_out = weight.shape
        else:
            d_out, d_in = weight.shape
        layer = -1
        if name.startswith(prefix):
            layer = int(name[len(prefix):].split(".", 1)[0])
        tracked.append(TrackedModule(
            name=name,
            param_name=f"{name}.weight",
            d_out=int(d_out),
            d_in=int(d_in),
            layer=layer,
            part=_part(name[len(prefix):] if layer >= 0 else name),
            transposed=_is_conv1d(module),
        ))
    return tracked
