"""One adapter per kind of module whose weights are traced: what a module of that kind holds
(its weights, each in the canonical ``[d_out, d_in]`` layout) and how capture gets each weight's
inputs ``x`` and output gradients ``δ`` during the forward. Adding a kind is adding an adapter
to :data:`ADAPTERS`.

Capture talks to adapters through a :class:`Sink`: during the forward an adapter hands the sink,
for each tracked weight ``W`` it applies as ``y = W x (+ b)``, the input ``x`` (``sink.input``)
and the output ``y`` (``sink.output``, which returns ``y`` with a gradient hook on it: the
gradient arriving there is δ). ``x`` and ``y`` come one row per token: ``[batch, tokens, d]``,
the same flattened ``[batch·tokens, d]``, or — for a weight that sees only some tokens (an
expert) — ``[n, d]`` with ``rows`` ``[n]`` saying which of the ``batch·tokens`` tokens they are.

Kinds:

- ``linear``: ``nn.Linear`` (weight ``[out, in]``); forward hook.
- ``conv1d``: Hugging Face's ``Conv1D`` (GPT-2; weight ``[in, out]``, ``transposed``); forward hook.
- ``router``: a mixture-of-experts router kept as a module with a plain ``weight`` ``[E, h]``
  (``MixtralTopKRouter``, ...): its forward runs with ``F.linear`` watched, and the call that
  applies the router's weight gives x and the router logits.
- ``experts``: fused experts as transformers 5 keeps them — ``gate_up_proj`` (or ``up_proj``)
  and ``down_proj`` as 3-D parameters ``[E, out, in]`` (``[E, in, out]`` when the class says
  ``is_transposed``), one forward routing tokens to experts (``MixtralExperts``, ``OlmoeExperts``,
  ``Qwen2MoeExperts``, ...). Each expert's slice of each 3-D parameter is a tracked weight of its
  own. The module's forward is replaced, while hooks are installed, by a per-expert loop computing
  what transformers' ``batched_mm`` experts implementation computes — the routed tokens of expert
  e through ``W_e``, gate, ``W'_e``, times the routing weight, summed back into the tokens — so
  each expert's x and δ are exactly its routed tokens' (δ includes the routing weight, as
  autograd gives it).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from factrace.errors import FactraceError


@dataclass(frozen=True)
class Weight:
    """One weight a module holds, as an adapter describes it: ``name`` (unique, the tracked
    module's name), ``param_name`` (the parameter holding it), canonical ``d_out × d_in``,
    ``transposed`` (the parameter stores ``[d_in, d_out]``), and for an expert's slice of a
    fused ``[E, .., ..]`` parameter, its index ``expert`` of ``experts``."""

    name: str
    param_name: str
    d_out: int
    d_in: int
    transposed: bool = False
    expert: int = -1
    experts: int = 0


class Sink(Protocol):
    """What capture offers an adapter (see the module docstring)."""

    def input(self, tm, x: torch.Tensor, rows: torch.Tensor | None = None) -> None: ...

    def output(self, tm, y: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor: ...


class _Restore:
    """A handle putting a module's forward back as it was (``remove()``, like a hook handle):
    the class's, or a forward some other wrapper had set on the instance."""

    _NONE = object()

    def __init__(self, module: nn.Module):
        self.module = module
        self.saved = module.__dict__.get("forward", self._NONE)

    def remove(self) -> None:
        if self.saved is self._NONE:
            self.module.__dict__.pop("forward", None)
        else:
            self.module.__dict__["forward"] = self.saved


def _replace_forward(module: nn.Module, forward: Callable) -> _Restore:
    handle = _Restore(module)
    module.forward = forward  # an instance attribute: shadows the class's forward until removed
    return handle


class Adapter:
    """A module kind: ``matches`` says whether a module is of this kind, ``weights`` what it
    holds, ``install`` hooks it (returning handles with ``remove()``). ``wrap`` is applied to
    every function that runs in the model's forward (``torch._dynamo.disable`` under a compiled
    forward: capture runs eagerly)."""

    kind: str = ""

    def matches(self, module: nn.Module) -> bool:
        raise NotImplementedError

    def weights(self, name: str, module: nn.Module) -> list[Weight]:
        raise NotImplementedError

    def install(self, module: nn.Module, tracked: list, sink: Sink, wrap: Callable) -> list:
        raise NotImplementedError


class LinearAdapter(Adapter):
    """``nn.Linear``: ``y = x Wᵀ + b``, W ``[out, in]``; x is the forward's first argument."""

    kind = "linear"

    def matches(self, module):
        return isinstance(module, nn.Linear)

    def weights(self, name, module):
        d_out, d_in = module.weight.shape
        return [Weight(name, f"{name}.weight", int(d_out), int(d_in))]

    def install(self, module, tracked, sink, wrap):
        (tm,) = tracked

        def hook(_module, args, output):
            sink.input(tm, args[0])
            return sink.output(tm, output)
        return [module.register_forward_hook(wrap(hook))]


class Conv1DAdapter(LinearAdapter):
    """Hugging Face ``Conv1D`` (GPT-2): ``y = x W + b``, W ``[in, out]``: transposed."""

    kind = "conv1d"

    def matches(self, module):
        return type(module).__name__ == "Conv1D" and hasattr(module, "nf")

    def weights(self, name, module):
        d_in, d_out = module.weight.shape
        return [Weight(name, f"{name}.weight", int(d_out), int(d_in), transposed=True)]


class _WatchLinear(TorchFunctionMode):
    """Calls ``on_call(x, y) → y`` for every ``F.linear(x, weight)`` with this very weight."""

    def __init__(self, weight: torch.Tensor, on_call: Callable):
        super().__init__()
        self.weight, self.on_call, self.calls = weight, on_call, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear:
            weight = args[1] if len(args) > 1 else kwargs.get("weight")
            if weight is self.weight:
                self.calls += 1
                x = args[0] if args else kwargs["input"]
                out = self.on_call(x, out)
        return out


class RouterAdapter(Adapter):
    """A router module holding a plain ``weight`` ``[E, h]`` that it applies with
    ``F.linear(hidden, weight)`` (the logits); routing itself (softmax, top-k) is not linear in
    the weight and stays as the model computes it, inside δ."""

    kind = "router"

    def matches(self, module):
        weight = getattr(module, "weight", None)
        own = dict(module.named_parameters(recurse=False))
        return ("router" in type(module).__name__.lower() and not isinstance(module, nn.Linear)
                and isinstance(weight, nn.Parameter) and weight.dim() == 2
                and set(own) <= {"weight", "bias"})

    def weights(self, name, module):
        d_out, d_in = module.weight.shape
        return [Weight(name, f"{name}.weight", int(d_out), int(d_in))]

    def install(self, module, tracked, sink, wrap):
        (tm,) = tracked
        original = module.forward

        def on_call(x, y):
            sink.input(tm, x)
            return sink.output(tm, y)

        def forward(*args, **kwargs):
            watch = _WatchLinear(module.weight, on_call)
            with watch:
                out = original(*args, **kwargs)
            if watch.calls != 1:
                raise FactraceError(
                    f"{tm.name}: the router applied its weight with F.linear {watch.calls} times "
                    "in one forward (expected once); leave it out with --exclude")
            return out
        return [_replace_forward(module, wrap(forward))]


class FusedExpertsAdapter(Adapter):
    """Fused experts (transformers' ``@use_experts_implementation`` classes): 3-D
    ``gate_up_proj``/``up_proj`` and ``down_proj``, ``forward(hidden_states, top_k_index,
    top_k_weights)`` with ``hidden_states`` ``[batch·tokens, h]``."""

    kind = "experts"
    #: the forward's arguments: tokens ``[n, h]``, expert indices and routing weights
    #: ``[n, top_k]`` (GPT-OSS names the last two ``router_indices``, ``routing_weights``)
    ARGS = (("hidden_states", "top_k_index", "top_k_weights"),
            ("hidden_states", "router_indices", "routing_weights"))

    @staticmethod
    def _up(module) -> str:
        return "gate_up_proj" if getattr(module, "has_gate", True) else "up_proj"

    def matches(self, module):
        if not all(hasattr(module, a) for a in ("has_gate", "has_bias", "is_transposed",
                                                 "num_experts", "down_proj")):
            return False
        params = [getattr(module, self._up(module), None), module.down_proj]
        if not all(isinstance(p, nn.Parameter) and p.dim() == 3 for p in params):
            return False
        if getattr(module, "_is_expert_parallel", False):
            return False
        try:
            names = list(inspect.signature(type(module).forward).parameters)[1:4]
        except (TypeError, ValueError):
            return False
        return tuple(names) in self.ARGS

    def weights(self, name, module):
        out = []
        transposed = bool(module.is_transposed)
        for e in range(module.num_experts):
            for proj in (self._up(module), "down_proj"):
                p = getattr(module, proj)
                a, b = p.shape[1:]
                d_out, d_in = (b, a) if transposed else (a, b)
                out.append(Weight(f"{name}.{proj}.{e}", f"{name}.{proj}", int(d_out), int(d_in),
                                  transposed, e, int(p.shape[0])))
        return out

    def install(self, module, tracked, sink, wrap):
        by_slot = {(tm.param_name.rpartition(".")[2], tm.expert): tm for tm in tracked}
        up = self._up(module)

        def linear(x, proj, e, rows):
            weight = getattr(module, proj)[e]
            if module.is_transposed:
                weight = weight.t()
            bias = getattr(module, f"{proj}_bias")[e] if module.has_bias else None
            tm = by_slot.get((proj, e))
            if tm is not None:
                sink.input(tm, x, rows)
            y = F.linear(x, weight, bias)
            return y if tm is None else sink.output(tm, y, rows)

        names = list(inspect.signature(type(module).forward).parameters)[1:4]

        def forward(*args, **kwargs):
            values = dict(zip(names, args, strict=False)) | kwargs
            hidden_states, top_k_index, top_k_weights = (values[n] for n in names)
            final = torch.zeros_like(hidden_states)
            for e in range(module.num_experts):
                token, slot = torch.where(top_k_index == e)
                if token.numel() == 0:
                    continue
                h = linear(hidden_states[token], up, e, token)
                h = module._apply_gate(h) if module.has_gate else module.act_fn(h)
                h = linear(h, "down_proj", e, token)
                if getattr(module, "has_post_expert_norm", False):
                    h = module.post_expert_norm(h)
                h = h * top_k_weights[token, slot, None]
                final.index_add_(0, token, h.to(final.dtype))
            return final
        return [_replace_forward(module, wrap(forward))]


#: The module kinds, in the order they are tried.
ADAPTERS: tuple[Adapter, ...] = (LinearAdapter(), Conv1DAdapter(), RouterAdapter(),
                                 FusedExpertsAdapter())
BY_KIND = {a.kind: a for a in ADAPTERS}


def adapter_for(module: nn.Module) -> Adapter | None:
    """The adapter of ``module``'s kind, or ``None`` (a module holding no traced weight)."""
    return next((a for a in ADAPTERS if a.matches(module)), None)


@contextlib.contextmanager
def forward_ad_experts(model: nn.Module) -> Iterator[None]:
    """Fused experts run transformers' ``batched_mm`` implementation inside the block (the
    same function as its default ``grouped_mm``, by batched matrix products, which forward-mode
    autodiff supports; ``grouped_mm`` has no forward-mode derivative)."""
    adapter = FusedExpertsAdapter()
    configs = {id(m.config): m.config for m in model.modules()
               if adapter.matches(m) and hasattr(m, "config")}
    saved = {k: c.__dict__.get("_experts_implementation_internal") for k, c in configs.items()}
    try:
        for c in configs.values():
            c.__dict__["_experts_implementation_internal"] = "batched_mm"
        yield
    finally:
        for k, c in configs.items():
            c.__dict__["_experts_implementation_internal"] = saved[k]
