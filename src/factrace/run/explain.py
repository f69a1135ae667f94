"""Per-token attribution: a (query, passage) score split exactly over loss terms.

An example's loss is a sum of per-token terms, ``L = Σ_t m_t ℓ_t`` (``ℓ_t`` the cross-entropy of
token t given the tokens before it), and everything an encoding does before its normalisation —
gradient, optimizer correction, projection, rotation into R_train's eigenbasis — is linear, so
an example's projection is the sum of its terms' projections, ``p = Σ_t p_t``. With the two
norms of the score held fixed,

    score(q, m) = qᵀ R⁻¹ p_m / (‖R^{-1/2} q‖ · ‖R^{-1/2} p_m‖)
                = Σ_t  qᵀ R⁻¹ p_{m,t} / (…)      (over the passage's loss terms)
                = Σ_t  q_tᵀ R⁻¹ p_m / (…)        (over the query's loss terms)

and each summand is that token's contribution. Only the scalars ``⟨w, p_t⟩`` are needed, for
one direction ``w`` per side (``R⁻¹ q`` for the passage's terms, ``R⁻¹ p_m`` for the query's):
``⟨w, p_t⟩ = ⟨H, ∇_W ℓ_t⟩`` with ``H`` the direction carried back through the rotation, the
projection and the optimizer correction to the tracked weights, and all of them at once are
the forward-mode derivative of the per-token losses along ``H`` — one forward pass with dual
numbers (:class:`TermProducts`), exact to float rounding. Where a model's operations have no
forward-mode derivative, the same numbers come from each ``p_t`` itself, computed as the encoder
computes ``p`` on copies of the example whose loss mask keeps token t only (:func:`loss_terms`:
an example of n loss terms costs n examples of its length, n² tokens).

A store keeps each passage's row in float16, and the score ``trace`` reports is computed from
that row, while the terms are computed afresh in float32; the rounding's part of the score
(about 1e-5 of it) is shared among the passage's tokens in proportion to the size of their
contributions (:func:`passage_contributions`), so that they sum to the score ``trace``
reports. What float32 arithmetic leaves over is reported as the *remainder*: ``score = Σ
contributions + remainder`` for each side (about 1e-7 of the score).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from factrace.data.tokenize import TokenizedExample
from factrace.encode.capture import ProjectedGradients
from factrace.encode.whitening import TaskScorer
from factrace.errors import FactraceError
from factrace.model.adapters import forward_ad_experts
from factrace.model.attention import eager_attention
from factrace.model.loss import token_logprobs

# A re-encoded passage whose direction differs more than this from its stored row was not
# encoded from the text the corpus now holds (or with another model).
MIN_ROW_COSINE = 0.99


def loss_positions(example: TokenizedExample) -> list[int]:
    """The positions of an example's loss terms (``loss_mask = 1``)."""
    return [j for j, m in enumerate(example.loss_mask) if m]


class TermProducts:
    """``⟨w, p_t⟩`` for every loss term t of an example and a direction ``w`` (both in R_train's
    eigenbasis): the forward-mode derivative of the per-token losses along the weight direction
    ``H`` whose inner product with each term's weight gradient is that term's ``⟨w, p_t⟩``.

    ``H`` per tracked module, from the encoder's own projection and correction (``w`` rotated
    back, ``W`` its block as a matrix): ``L̃ᵀ W R̃`` (factored or no correction, folded into
    ``L̃``, ``R̃``), ``(Lᵀ W R) ⊙ V̂^{-1/2}`` (exact correction), or ``W`` scaled the same way
    without a projection. Attention runs as plain matrix products ("eager") meanwhile: fused
    kernels have no forward-mode derivative.
    """

    def __init__(self, encoder):
        self.encoder = encoder
        c = encoder.config
        self.capture = ProjectedGradients(encoder.loaded.model, encoder.tracked, encoder.blocks,
                                          c.seed, encoder._corrections, torch.device("cpu"),
                                          projected=c.projection != "exact")

    def weight_directions(self, direction: torch.Tensor) -> dict[str, torch.Tensor]:
        """``H`` per tracked parameter (in the parameter's own layout and dtype; computed in
        float32, as the encoder projects)."""
        cap, basis = self.capture, self.encoder.basis
        w = direction.float().cpu()
        if basis is not None and basis.vectors is not None:
            w = basis.unrotate(w[None])[0]
        params = dict(self.encoder.loaded.model.named_parameters())
        out = {}
        for tm in self.encoder.tracked:
            block = cap.block_of[tm.name]
            left, right = cap.left[tm.name], cap.right[tm.name]
            chunk = w[block.offset:block.offset + block.size]
            if cap.projected:
                left, right = left.float(), right.float()
                h = left.T @ chunk.reshape(left.shape[0], right.shape[0]) @ right
            else:
                h = chunk.reshape(tm.d_out, tm.d_in)
                if left is not None:
                    h = h * torch.outer(left.float(), right.float())
            if tm.name in cap.inverse:
                h = h * cap.inverse[tm.name]
            param = params[tm.param_name]
            h = (h.T if tm.transposed else h).to(param.device, param.dtype)
            if tm.expert >= 0:  # one expert's slice of a fused parameter
                out.setdefault(tm.param_name, torch.zeros_like(param))[tm.expert] = h
            else:
                out[tm.param_name] = h
        return out

    def __call__(self, example: TokenizedExample, direction: torch.Tensor) -> torch.Tensor:
        """``[⟨w, p_t⟩ for t in loss_positions(example)]``, float64 on the CPU."""
        from torch.func import functional_call, jvp

        model = self.encoder.loaded.model
        tangents = self.weight_directions(direction)
        params = dict(model.named_parameters())
        primals = {name: params[name].detach() for name in tangents}
        ids = torch.tensor([example.input_ids], device=self.encoder.device)

        def losses(weights):
            out = functional_call(model, weights, (ids,), {"use_cache": False}, strict=False)
            return -token_logprobs(out.logits, ids)[0]

        with eager_attention(model), forward_ad_experts(model), torch.no_grad(), \
                warnings.catch_warnings():
            # torch registers its forward-mode decompositions with torch.jit on first use
            warnings.filterwarnings("ignore", ".*torch.jit.script.*", DeprecationWarning)
            _, derivative = jvp(losses, (primals,), (tangents,))
        positions = loss_positions(example)
        out = derivative[positions].double().cpu()
        if self.encoder.config.loss_reduction == "mean" and positions:
            out = out / len(positions)
        return out


# the same by brute force: each term's projection --------------------------------------------------
@dataclass
class Terms:
    """An example's loss terms: their positions and each term's projection ``p_t`` rotated
    into R_train's eigenbasis (``[n_terms, d]``, float32, CPU)."""

    example: TokenizedExample
    positions: list[int]
    vectors: torch.Tensor


def one_hot_copies(example: TokenizedExample) -> list[TokenizedExample]:
    """One copy of ``example`` per loss term, its mask keeping that term only."""
    n = len(example)
    return [TokenizedExample(f"{example.id}\x00{j}", example.input_ids,
                             tuple(int(k == j) for k in range(n)))
            for j in loss_positions(example)]


def loss_terms(encoder, examples: list[TokenizedExample]) -> list[Terms]:
    """Every loss term's rotated projection of each example, in one pass over all the copies.

    With ``loss_reduction="mean"`` an example's ``p`` is the mean of its terms' (a one-token
    mean is the term itself), so each term is scaled by ``1/n``: the terms still sum to ``p``.
    """
    copies = [one_hot_copies(e) for e in examples]
    flat = [c for cs in copies for c in cs]
    if not flat:
        return [Terms(e, [], torch.zeros(0, encoder.dim)) for e in examples]
    _, vectors = encoder.example_vectors(flat)
    out, start = [], 0
    for e, cs in zip(examples, copies, strict=True):
        v = vectors[start:start + len(cs)]
        start += len(cs)
        if encoder.config.loss_reduction == "mean" and len(cs):
            v = v / len(cs)
        out.append(Terms(e, loss_positions(e), v))
    return out


class TermVectors:
    """:class:`TermProducts` from each term's projection (:func:`loss_terms`), kept per
    example: n examples' worth of encoding per example of n terms, then products only."""

    def __init__(self, encoder):
        self.encoder = encoder
        self._terms: dict[TokenizedExample, torch.Tensor] = {}

    def __call__(self, example: TokenizedExample, direction: torch.Tensor) -> torch.Tensor:
        if example not in self._terms:
            self._terms[example] = loss_terms(self.encoder, [example])[0].vectors.double()
        return self._terms[example] @ direction.double().cpu()


def token_pieces(tokenizer, ids: list[int] | tuple[int, ...]) -> list[str]:
    """The text each token adds to the decoded sequence (``"".join`` of the pieces is the
    decoded text). Decoding prefixes keeps word-initial spaces and characters split across
    byte-level tokens right: a token ending inside a character gets ``""`` and the token that
    completes it the whole character."""
    pieces, done = [], ""
    for j in range(len(ids)):
        text = tokenizer.decode(list(ids[:j + 1]), skip_special_tokens=False,
                                clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd") and j + 1 < len(ids):  # ends inside a character
            pieces.append("")
            continue
        common = len(done)
        if not text.startswith(done):  # a decoder that rewrote earlier text (rare)
            common = next((i for i, (a, b) in enumerate(zip(text, done, strict=False))
                           if a != b),
                          min(len(text), len(done)))
        pieces.append(text[common:])
        done = text
    return pieces


@dataclass
class Pair:
    """What a (query, stored row) score is made of under a scorer: ``score = ⟨u, row⟩ /
    denominator = ⟨y, v⟩ / denominator`` with ``u = R⁻¹ y``, ``v = R⁻¹ row`` (rotated basis)."""

    score: float
    u: torch.Tensor
    v: torch.Tensor
    denominator: float
    row: torch.Tensor
    normalize: bool


def pair(scorer: TaskScorer, query_index: int, row: torch.Tensor, row_index: int) -> Pair:
    """The pair of query ``query_index`` of ``scorer`` and the stored ``row`` (global index
    ``row_index``): its score computed as ``trace`` computes it, and the parts of that score."""
    row = row.float()
    score = float(scorer(row[None], row_index)[query_index, 0])
    task = scorer.task
    denominator = 1.0
    if task.normalize:
        if scorer.row_norms is not None:
            rn = float(scorer.row_norms[row_index])
        else:
            rn = float(task.norms(row[None])[0])
        denominator = float(scorer.qn[query_index]) * max(rn, 1e-30)
    return Pair(score, scorer.u[query_index], task.apply_inverse(row[None])[0], denominator, row,
                task.normalize)


def passage_contributions(p: Pair, products: torch.Tensor, whole: torch.Tensor,
                          example_id: str = "") -> torch.Tensor:
    """Each passage loss term's share of the score, float64 ``[n_terms]``.

    ``products``: ``⟨u, p_t⟩`` per term (``u = R⁻¹ q``, see :class:`TermProducts`); ``whole``:
    the passage's ``p`` encoded again (rotated). The stored row ``s`` is ``ŝ = p / ‖p‖`` (``p``
    without normalisation) rounded to float16, so the score is ``⟨u, ŝ⟩ / denominator`` plus
    the rounding's part ``⟨u, s − ŝ⟩ / denominator``. Term t's share is ``⟨u, p_t⟩ / (‖p‖ ·
    denominator)`` plus a part of the rounding's in proportion to its size: the shares sum to
    the score computed from the stored row exactly when the terms sum to ``p``.
    """
    whole = whole.double().cpu()
    row = p.row.double()
    norm = float(whole.norm())
    if norm == 0:
        return torch.zeros_like(products, dtype=torch.float64)
    cosine = float(whole @ row) / norm / max(float(row.norm()), 1e-30)
    if cosine < MIN_ROW_COSINE:
        raise FactraceError(
            f"passage {example_id!r} encoded now differs from its stored row (cosine "
            f"{cosine:.4f}): the corpus text or the model changed since the store was built")
    fresh, shares = whole, products.double() / p.denominator
    if p.normalize:
        fresh, shares = whole / norm, shares / norm
    rounding = float(p.u.double() @ (row - fresh)) / p.denominator
    size = shares.abs()
    if float(size.sum()) > 0:
        shares = shares + rounding * size / size.sum()
    return shares


def query_contributions(p: Pair, products: torch.Tensor) -> torch.Tensor:
    """Each query loss term's share of the score, ``⟨p_t, R⁻¹ row⟩ / denominator``
    (``products``: ``⟨R⁻¹ row, p_t⟩`` per term)."""
    return products.double() / p.denominator


def token_list(tokenizer, example: TokenizedExample, contributions: torch.Tensor) -> list[dict]:
    """``[{"token", "contribution", "position"}]`` of an example's loss terms, in order."""
    pieces = token_pieces(tokenizer, example.input_ids)
    return [{"token": pieces[j], "contribution": float(c), "position": j}
            for j, c in zip(loss_positions(example), contributions.tolist(), strict=True)]
