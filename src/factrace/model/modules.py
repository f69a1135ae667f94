"""Tracked-module discovery: every linear weight inside the transformer blocks (of the module
kinds :mod:`factrace.model.adapters` knows); and coverage: which of the model's parameters that
tracks, by kind.

Each tracked module is described in a canonical ``(out, in)`` layout: ``nn.Linear`` stores its
weight as ``[out, in]``; Hugging Face's ``Conv1D`` (GPT-2) stores ``[in, out]`` and is marked
``transposed``; one expert of fused experts is its slice ``[e]`` of a ``[experts, out, in]``
parameter (``[experts, in, out]``: transposed).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

from factrace.errors import FactraceError
from factrace.model.adapters import Conv1DAdapter, LinearAdapter, Weight, adapter_for


@dataclass(frozen=True)
class TrackedModule:
    """A linear map ``y = W x`` whose weight gradient is traced.

    ``d_out``/``d_in``: the canonical weight shape ``[d_out, d_in]``; ``layer``: index of the
    transformer block (``-1`` outside the blocks); ``part``: ``"attention"`` or ``"mlp"``;
    ``kind``: the adapter that captures it (:mod:`factrace.model.adapters`); ``module``: the
    module holding the weight (its ``name`` unless one module holds several, as fused experts
    do); ``expert``: for one expert's slice of a fused ``[experts, .., ..]`` parameter, its index.
    """

    name: str
    param_name: str
    d_out: int
    d_in: int
    layer: int
    part: str
    transposed: bool
    kind: str = "linear"
    module: str = ""
    expert: int = -1
    experts: int = 0

    @property
    def owner(self) -> str:
        """The name of the module holding the weight."""
        return self.module or self.name

    @property
    def param_shape(self) -> tuple[int, ...]:
        """The shape of the parameter holding the weight (all experts of a fused one)."""
        shape = (self.d_in, self.d_out) if self.transposed else (self.d_out, self.d_in)
        return (self.experts, *shape) if self.expert >= 0 else shape

    def weight_of(self, tensor: torch.Tensor) -> torch.Tensor:
        """This weight's part of a tensor shaped like its parameter (gradient, V, ...), in the
        canonical ``[d_out, d_in]`` layout."""
        if self.expert >= 0:
            tensor = tensor[self.expert]
        return tensor.t() if self.transposed else tensor


def _is_conv1d(module: nn.Module) -> bool:
    return Conv1DAdapter().matches(module)


def _is_linear(module: nn.Module) -> bool:
    return LinearAdapter().matches(module) or _is_conv1d(module)


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

    Default: every weight inside the blocks that a module adapter knows
    (:data:`factrace.model.adapters.ADAPTERS`: ``nn.Linear``, ``Conv1D``, routers, each expert of
    fused experts). ``include`` globs add linear modules outside the blocks (e.g. ``"lm_head"``);
    ``only`` globs restrict tracking to the modules they match; ``exclude`` globs remove modules.
    Globs match the module name, e.g. ``"*.mlp.*"`` (an expert's weights are named
    ``<experts module>.<parameter>.<expert>``, e.g. ``"*.experts.down_proj.3"``); a glob that
    matches nothing it could act on is an error.
    """
    blocks_name, blocks = find_blocks(model)
    prefix = blocks_name + "."
    found: dict[str, tuple[str, Weight]] = {}  # in named_modules() order
    for name, module in model.named_modules():
        adapter = adapter_for(module)
        if adapter is not None:
            found.update({w.name: (adapter.kind, w) for w in adapter.weights(name, module)})
    inside = {n: w for n, w in found.items() if n.startswith(prefix)}
    outside = {n: w for n, w in found.items() if not n.startswith(prefix)}
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
    for name, (kind, w) in found.items():
        if name not in selected:
            continue
        layer = -1
        if name.startswith(prefix):
            layer = int(name[len(prefix):].split(".", 1)[0])
        owner = w.param_name.rpartition(".")[0]
        tracked.append(TrackedModule(
            name=name,
            param_name=w.param_name,
            d_out=w.d_out,
            d_in=w.d_in,
            layer=layer,
            part=_part(name[len(prefix):] if layer >= 0 else name),
            transposed=w.transposed,
            kind=kind,
            module="" if owner == name else owner,
            expert=w.expert,
            experts=w.experts,
        ))
    return tracked


# coverage ----------------------------------------------------------------------------------------
#: Kinds of parameter, in the order a parameter is classified (the first that applies).
COVERAGE_KINDS = {
    "tracked": "weights of the tracked linear modules (their gradients are traced)",
    "embeddings": "token and position embeddings (an output head tied to them included)",
    "norms": "parameters of normalisation layers",
    "untracked_linear": "weights of linear modules left out (outside the blocks, or excluded; "
                        "excluded routers and experts too)",
    "biases": "1-D biases (and fused experts' biases, one per expert)",
    "untracked_matrix": "other weights of 2 or more dimensions, of no module kind discovery "
                        "knows (model.adapters)",
    "other": "any other parameter (scalars, 1-D gates, ...)",
}


#: How the terminal line names each kind.
COVERAGE_LABELS = {"tracked": "tracked", "embeddings": "embeddings", "norms": "norms",
                   "untracked_linear": "other linear weights", "biases": "biases",
                   "untracked_matrix": "weights of no linear module", "other": "other"}


@dataclass(frozen=True)
class Coverage:
    """Which parameters a tracking traces, by kind (:data:`COVERAGE_KINDS`).

    ``kinds``: kind → ``{"tensors", "parameters", "share", "names"}`` (``names``: the parameters'
    names, with the block index written ``*`` for a name that occurs in several blocks, aliases
    of a shared tensor joined by ``=``);
    ``unseen``: the ≥2-D parameters inside the blocks that discovery cannot track (no linear
    module holds them), the same way.
    """

    total: int
    kinds: dict
    unseen: tuple[str, ...]
    unseen_parameters: int
    blocks: int

    def to_dict(self) -> dict:
        return {"parameters": self.total, "blocks": self.blocks, "kinds": self.kinds,
                "untracked_in_blocks": list(self.unseen),
                "untracked_in_blocks_parameters": self.unseen_parameters}

    def line(self) -> str:
        """One line for the terminal."""
        def amount(kind: str) -> str:
            k = self.kinds[kind]
            return f"{_count(k['parameters'])} ({_percent(k['share'])})"

        untracked = [f"{COVERAGE_LABELS[kind]} {amount(kind)}" for kind in self.kinds
                     if kind != "tracked" and self.kinds[kind]["parameters"]]
        return (f"coverage: {_count(self.total)} parameters in {self.blocks} blocks; tracked "
                f"{amount('tracked')} in {self.kinds['tracked']['tensors']} linear weights; "
                f"not tracked: {', '.join(untracked) or 'none'}")

    def warning(self) -> str | None:
        """The warning an encoding gives when weights inside the blocks cannot be traced."""
        if not self.unseen:
            return None
        share = self.unseen_parameters / self.total if self.total else 0.0
        return (f"weights inside the transformer blocks that no linear module holds are not "
                f"traced: {', '.join(self.unseen)} ({_count(self.unseen_parameters)} parameters, "
                f"{_percent(share)} of the model); the encodings leave their gradients out")


def _count(n: int) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _percent(share: float) -> str:
    return f"{100 * share:.3g}%"


def _labeller(names: list[str], prefix: str):
    """A function giving a parameter name its label: the block index written ``*`` when the
    same name occurs in several blocks (names outside the blocks, or in one block, unchanged)."""
    def pattern(name: str) -> tuple[str, str | None]:
        if name.startswith(prefix):
            index, _, rest = name[len(prefix):].partition(".")
            if index.isdigit():
                return f"{prefix}*.{rest}", index
        return name, None

    blocks: dict[str, set[str]] = {}
    for name in names:
        key, index = pattern(name)
        blocks.setdefault(key, set()).add(index)

    def label(name: str) -> str:
        key, _ = pattern(name)
        return key if len(blocks[key]) > 1 else name

    return label


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or "norm" in type(module).__name__.lower()


def coverage(model: nn.Module, tracked: list[TrackedModule]) -> Coverage:
    """Every parameter of ``model`` (each shared tensor once) classified by kind."""
    blocks_name, blocks = find_blocks(model)
    prefix = blocks_name + "."
    tracked_params = {t.param_name for t in tracked}
    modules = dict(model.named_modules())
    # weights of a module kind discovery knows (an excluded router or experts: left out, not
    # unseen)
    known = {w.param_name for name, m in modules.items() if (a := adapter_for(m)) is not None
             for w in a.weights(name, m)}
    names: dict[int, list[str]] = {}
    params: dict[int, torch.Tensor] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        params[id(p)] = p
    label_of = _labeller([n for aliases in names.values() for n in aliases], prefix)
    kinds = {k: {"tensors": 0, "parameters": 0, "share": 0.0, "names": []} for k in COVERAGE_KINDS}
    unseen: list[str] = []
    total = unseen_parameters = 0
    for key, p in params.items():
        aliases = names[key]
        owners = [(modules[n.rpartition(".")[0]], n.rpartition(".")[2]) for n in aliases]
        if any(n in tracked_params for n in aliases):
            kind = "tracked"
        elif any(isinstance(m, nn.Embedding) for m, _ in owners):
            kind = "embeddings"
        elif any(_is_norm(m) for m, _ in owners):
            kind = "norms"
        elif any(n in known for n in aliases):
            kind = "untracked_linear"
        elif any((p.dim() == 1 and leaf == "bias")  # experts' biases: [experts, out]
                 or (leaf.endswith("_bias") and adapter_for(m) is not None) for m, leaf in owners):
            kind = "biases"
        elif p.dim() >= 2:
            kind = "untracked_matrix"
        else:
            kind = "other"
        entry = kinds[kind]
        entry["tensors"] += 1
        entry["parameters"] += p.numel()
        total += p.numel()
        label = " = ".join(dict.fromkeys(label_of(n) for n in aliases))
        if label not in entry["names"]:
            entry["names"].append(label)
        if (p.dim() >= 2 and kind in ("embeddings", "untracked_matrix")
                and any(n.startswith(prefix) for n in aliases)):
            unseen_parameters += p.numel()
            if label not in unseen:
                unseen.append(label)
    for entry in kinds.values():
        entry["share"] = entry["parameters"] / total if total else 0.0
    return Coverage(total, kinds, tuple(unseen), unseen_parameters, len(blocks))
