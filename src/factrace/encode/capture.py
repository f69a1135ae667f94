"""Hooks that capture module inputs x and output gradients δ during one forward/backward.

No weight gradient is ever computed: every parameter is set to ``requires_grad=False`` while the
hooks are installed (and restored after), and a tracked module's output that nothing upstream
makes require grad (the first block's) is made a leaf that does, so backward flows through the
activations only, and only as far back as the first tracked modules.

How each kind of module hands over x and δ (forward hooks, a watched ``F.linear``, a per-expert
loop for fused experts) is its adapter's business (:mod:`factrace.model.adapters`); collectors
here see every tracked weight the same way, its x and δ on the ``[batch, tokens, ·]`` grid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from factrace.data.batching import Batch
from factrace.encode.projection import Block, module_projections
from factrace.encode.second_moment import (
    Correction,
    SquaredGradientSums,
    merge_squared_sums,
)
from factrace.errors import FactraceError
from factrace.model.adapters import BY_KIND
from factrace.model.attention import attention_for_width
from factrace.model.loss import forward_logits, per_example_loss
from factrace.model.modules import TrackedModule

#: ``place(t)``: a per-token tensor ``[.., k]`` of one module onto ``[batch, tokens, k]``.
Place = Callable[[torch.Tensor], torch.Tensor]


class HookCollector:
    """Owns hook lifetime and the activation-only backward; subclasses say what to do with
    ``x`` (forward) and ``δ`` (backward) of each tracked module, both in the model's dtype.

    The module adapters (:mod:`factrace.model.adapters`) hand over x and the output y one row
    per token, in the shape the module saw them (``[batch, tokens, d]``, ``[batch·tokens, d]``,
    or an expert's routed tokens ``[n, d]`` with their ``rows``); subclasses get them with a
    ``place`` function mapping a per-token tensor ``[.., k]`` (x, δ, or anything computed from
    them token by token, such as a projection) onto ``[batch, tokens, k]``, zero at the tokens
    the module did not see. ``self.mask`` ``[batch, tokens, 1]`` marks real tokens: δ is
    exactly zero at padding (no loss there, and no real token attends to it), so zeroing padding
    on one side of each product — whichever is cheaper — removes it from every sum. What a
    subclass keeps of ``x`` until its ``δ`` arrives goes in ``self._inputs`` (emptied after every
    backward, finished or not)."""

    def __init__(self, model: nn.Module, tracked: list[TrackedModule],
                 forward: nn.Module | None = None):
        self.model = model
        self.tracked = tracked
        # What runs the forward: the model, or its torch.compile'd wrapper (same submodules, so
        # the same hooks fire; they run eagerly, outside the compiled graphs).
        self.forward = forward if forward is not None else model
        self._handles: list = []
        self._requires_grad: dict[nn.Parameter, bool] = {}
        self.mask: torch.Tensor | None = None
        self._inputs: dict[str, torch.Tensor] = {}

    # subclass interface -------------------------------------------------------------------
    def on_forward(self, module: TrackedModule, x: torch.Tensor, place: Place) -> None:
        raise NotImplementedError

    def on_backward(self, module: TrackedModule, delta: torch.Tensor, place: Place) -> None:
        raise NotImplementedError

    # the adapters' sink --------------------------------------------------------------------
    def input(self, tm: TrackedModule, x: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        self.on_forward(tm, x, self._placer(tm, rows))

    def output(self, tm: TrackedModule, y: torch.Tensor,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        if not y.requires_grad:
            # No tracked module upstream (e.g. q/k/v of the first block): backward starts
            # here and never computes the input gradient of this module. The clone keeps
            # in-place operations of the model on its output legal.
            y = y.detach().requires_grad_(True).clone()
        place = self._placer(tm, rows)
        y.register_hook(lambda g: self.on_backward(tm, g, place))
        return y

    def _placer(self, tm: TrackedModule, rows: torch.Tensor | None) -> Place:
        batch, tokens = self.mask.shape[:2]

        def place(t: torch.Tensor) -> torch.Tensor:
            if rows is None:
                if t.shape[:-1].numel() != batch * tokens:
                    raise FactraceError(
                        f"{tm.name}: saw {t.shape[:-1].numel()} tokens where the batch has "
                        f"{batch}×{tokens}; a module that sees only some tokens (experts kept "
                        "as separate modules) cannot be traced: leave it out with --exclude")
                return t.reshape(batch, tokens, t.shape[-1])
            out = t.new_zeros(batch * tokens, t.shape[-1])
            return out.index_copy_(0, rows, t).view(batch, tokens, t.shape[-1])
        return place

    # hook lifetime -----------------------------------------------------------------------
    def __enter__(self):
        for p in self.model.parameters():
            self._requires_grad[p] = p.requires_grad
            p.requires_grad_(False)
        modules = dict(self.model.named_modules())
        owners: dict[str, list[TrackedModule]] = {}
        for tm in self.tracked:
            owners.setdefault(tm.owner, []).append(tm)
        wrap = (lambda f: f) if self.forward is self.model else torch._dynamo.disable
        try:
            for owner, tms in owners.items():
                self._handles += BY_KIND[tms[0].kind].install(modules[owner], tms, self, wrap)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p, flag in self._requires_grad.items():
            p.requires_grad_(flag)
        self._requires_grad.clear()
        return False

    def forward_backward(self, batch: Batch, loss_reduction: str = "sum") -> None:
        """One forward and an activation-only backward of the summed per-example losses."""
        self.mask = batch.attention_mask[..., None].float()
        try:
            with torch.enable_grad(), attention_for_width(self.model, batch.input_ids.shape[1]):
                logits = forward_logits(self.forward, batch)
                loss = per_example_loss(logits, batch.input_ids, batch.loss_mask, loss_reduction)
                loss.sum().backward()
        finally:  # also after running out of memory: the next batch starts clean
            self.mask = None
            self._inputs.clear()


class ProjectedGradients(HookCollector):
    """Per-example corrected, projected block vectors ``p(z)`` ``[batch, d]`` (with
    ``projected=False``: the corrected per-example gradients themselves, one block per module).

    Factored or no correction: ``p_k = Σ_i Σ_t (L̃_i δ_t)(R̃_i x_t)ᵀ`` with the row and column
    scales folded into ``L̃ = L·diag(row)`` and ``R̃ = R·diag(col)``. Exact: per-example
    ``G = δᵀ x`` is built (chunked over examples), divided elementwise by ``sqrt(V) + ε`` and
    projected as ``L G Rᵀ``.

    The first projection of each side (``x R̃ᵀ``, ``δ L̃ᵀ``) runs in bfloat16 when the model does
    (its x and δ are bfloat16 already; this is where the projection's cost is), everything after
    it — the per-example products and their sums — in float32. Other dtypes project in float32.
    """

    def __init__(self, model, tracked, blocks: list[Block], seed: int,
                 corrections: dict[str, Correction | None], device: torch.device,
                 exact_chunk_elements: int = 1 << 25, forward: nn.Module | None = None,
                 projected: bool = True):
        super().__init__(model, tracked, forward)
        self.dim = sum(b.size for b in blocks)
        self.exact_chunk_elements = exact_chunk_elements
        block_of = {name: b for b in blocks for name in b.modules}
        self.block_of = block_of
        dtypes = {p.dtype for p in model.parameters()}
        self.project_dtype = torch.bfloat16 if dtypes == {torch.bfloat16} else torch.float32
        # Projected: L̃ [a, d_out] and R̃ [b, d_in]. Unprojected (``projected=False``): the
        # factored correction's row [d_out] and column [d_in] scales, or None.
        self.left: dict[str, torch.Tensor | None] = {}
        self.right: dict[str, torch.Tensor | None] = {}
        self.inverse: dict[str, torch.Tensor] = {}
        self.projected = projected
        for tm in tracked:
            corr = corrections.get(tm.name)
            if corr is not None and not corr.factored:
                self.inverse[tm.name] = corr.inverse.to(device)
            if not projected:
                factored = corr is not None and corr.factored
                self.left[tm.name] = corr.row.to(device) if factored else None
                self.right[tm.name] = corr.col.to(device) if factored else None
                continue
            left, right = module_projections(seed, tm, block_of[tm.name])
            if corr is not None and corr.factored:
                left, right = left * corr.row[None, :], right * corr.col[None, :]
            dtype = torch.float32 if tm.name in self.inverse else self.project_dtype
            self.left[tm.name] = left.to(device, dtype)
            self.right[tm.name] = right.to(device, dtype)
        self._out: torch.Tensor | None = None

    def on_forward(self, tm, x, place):
        right = self.right[tm.name]
        if not self.projected:  # x·diag(col): [batch, tokens, d_in]
            x = place(x.float()) * self.mask
            self._inputs[tm.name] = x if right is None else x * right
        elif tm.name in self.inverse:
            self._inputs[tm.name] = place(x.float()) * self.mask
        else:  # x R̃ᵀ: [batch, tokens, b] (projected before placing: the cheaper side)
            self._inputs[tm.name] = place((x.to(right.dtype) @ right.T).float()) * self.mask

    def on_backward(self, tm, delta, place):
        block = self.block_of[tm.name]
        x = self._inputs.pop(tm.name)
        left = self.left[tm.name]
        if not self.projected:  # the whole G̃ = diag(row) δᵀ x diag(col), or (δᵀ x) ⊙ V^{-1/2}
            delta = place(delta.float())
            delta = delta if left is None else delta * left
            p = torch.bmm(delta.transpose(1, 2), x)  # [batch, d_out, d_in]
            if tm.name in self.inverse:
                p *= self.inverse[tm.name]
        elif tm.name in self.inverse:
            p = self._exact(tm, x, place(delta.float()))
        else:
            dl = place((delta.to(left.dtype) @ left.T).float())  # [batch, tokens, a]
            p = torch.bmm(dl.transpose(1, 2), x)  # [batch, a, b]
        self._out[:, block.offset:block.offset + block.size] += p.reshape(p.shape[0], -1)

    def _exact(self, tm, x, delta):
        per = max(1, self.exact_chunk_elements // (tm.d_out * tm.d_in))
        left, right, inverse = self.left[tm.name], self.right[tm.name], self.inverse[tm.name]
        parts = []
        for s in range(0, x.shape[0], per):
            g = torch.bmm(delta[s:s + per].transpose(1, 2), x[s:s + per])  # [chunk, o, n]
            parts.append(left @ (g * inverse) @ right.T)
        return torch.cat(parts)

    def project(self, batch: Batch, loss_reduction: str = "sum") -> torch.Tensor:
        """``[batch, d]`` float32 on the model's device."""
        self._out = torch.zeros(batch.input_ids.shape[0], self.dim,
                                device=batch.input_ids.device)
        try:
            self.forward_backward(batch, loss_reduction)
            return self._out
        finally:
            self._out = None


class GradientSquares(HookCollector):
    """Feeds :class:`SquaredGradientSums` (``estimate`` mode) from captured x and δ; a batch
    counts only once its backward has finished (:meth:`add_batch`)."""

    def __init__(self, model, tracked, forward: nn.Module | None = None):
        super().__init__(model, tracked, forward)
        self.sums = SquaredGradientSums()
        self._batch: SquaredGradientSums | None = None

    def add_batch(self, batch: Batch, loss_reduction: str = "sum") -> None:
        self._batch = SquaredGradientSums()
        try:
            self.forward_backward(batch, loss_reduction)
            for tm in self.tracked:  # experts no token was routed to: zero gradients
                if tm.name not in self._batch.examples:
                    self._batch.add_examples(tm.name, batch.input_ids.shape[0])
            self.sums = merge_squared_sums([self.sums, self._batch])
        finally:
            self._batch = None

    def on_forward(self, tm, x, place):
        self._inputs[tm.name] = place(x.float()) * self.mask

    def on_backward(self, tm, delta, place):
        self._batch.add(tm.name, self._inputs.pop(tm.name), place(delta.float()) * self.mask)
