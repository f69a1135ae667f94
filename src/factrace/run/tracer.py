"""``trace``, ``ask`` and ``explain``: questions asked of a store, each answered with the
method's own R.

A :class:`Tracer` is a store opened for a session: the store (verified once), its encoder (model,
configuration and fitted state) and its tasks. ``Tracer.trace(queries)`` ranks the store's rows
for queries; ``Tracer.ask(prompt)`` lets the model complete a prompt and traces the completion
(:mod:`factrace.run.ask`); ``Tracer.explain(query, doc_id)`` splits one pair's score over the
loss terms of the passage and of the query (:mod:`factrace.run.explain`). Each chooses R_eval
from the queries it is given (for ``explain``, the set the query was traced with):

- ``task=NAME``: the named task's R_eval (its row norms were computed when it was added);
- otherwise the queries' own, exactly as ``scan --queries`` would, when there are enough of them
  to stand for a task: R_eval's component k (``--lambda-k``, where ``--lambda auto`` compares
  the spectra), plus one;
- fewer: the store's default task if it has one (the metadata says so), else the queries' own
  with a warning in the metadata.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from factrace.data.io import Ranking, read_queries
from factrace.data.outputs import META_SUFFIX, check_at_least, check_output_file
from factrace.data.records import Query
from factrace.data.sources import Source, source_meta
from factrace.data.tokenize import TokenizedExample
from factrace.encode.whitening import TaskScorer, TaskWhitening
from factrace.errors import FactraceError
from factrace.run import ask as asking
from factrace.run import explain as explaining
from factrace.run.index import load_task, open_encoder_for
from factrace.run.scan import ScanResult, write_with_metadata
from factrace.search.full import check_size, from_kept, write_scores
from factrace.search.topk import exact_topk
from factrace.search.twostage import two_stage
from factrace.store.encodings import EncodingStore
from factrace.store.ids import passage_of

# Tokens of largest contribution kept per explained proponent in an answer's rankings row.
TOP_TOKENS = 5
#: Candidates per query (and side) of a compact store's two-stage search when none are asked for.
COMPACT_CANDIDATES = 200


class Tracer:
    """A store, its encoder and its tasks, opened once for many questions."""

    def __init__(self, store: EncodingStore, encoder):
        self.store = store
        self.encoder = encoder
        self._tasks: dict[str, tuple[TaskWhitening, np.ndarray]] = {}
        self._rows: dict[str, int] | None = None
        self._passages: dict[str, TokenizedExample] = {}
        self._method = "forward-mode"  # how per-token products are computed
        self._products_of = None
        self._approx = None  # the saved approximate index, loaded on first use

    @classmethod
    def open(cls, index: str, model: str | None = None, optimizer_state: str | None = None,
             device: str | None = None, progress: bool = False) -> Tracer:
        """Open ``index`` (shards hashed only if not verified before at their present size and
        time) with the model and optimizer state it was built with (or the ones given;
        ``progress``: say the encoder's coverage on stderr)."""
        store = EncodingStore.open(index, verify="once")
        return cls(store, open_encoder_for(store, model, optimizer_state, device, progress))

    @property
    def default_task(self) -> str | None:
        return self.store.manifest.get("default_task")

    def task(self, name: str) -> tuple[TaskWhitening, np.ndarray]:
        """The named task's R⁻¹ and row norms (loaded once)."""
        if name not in self._tasks:
            _, y, norms = load_task(self.store, name)
            self._tasks[name] = (self.encoder.task(y), norms)
        return self._tasks[name]

    def scorer(self, y: torch.Tensor, task: str | None = None) -> tuple[TaskScorer, dict]:
        """How queries ``y`` (rotated, ``[Q, d]``) are scored, and a record of the choice."""
        enc = self.encoder
        if enc.config.hessian != "mixed":
            whitening = enc.task(None)
            return whitening.scorer(y), {"r_eval": "none", **whitening.describe()}
        needed = enc.eval_examples_needed()
        if task is None and y.shape[0] < needed and self.default_task:
            task = self.default_task
            note = (f"{y.shape[0]} query examples are fewer than the {needed} an R_eval needs; "
                    f"R_eval from the store's default task {task!r}")
        else:
            note = None
        if task is not None:
            whitening, norms = self.task(task)
            record = {"r_eval": f"task {task}", **whitening.describe()}
            if note:
                record["note"] = note
            return whitening.scorer(y, row_norms=norms), record
        whitening = enc.task(y)
        record = {"r_eval": "these queries", **whitening.describe()}
        if y.shape[0] < needed:
            record["note"] = (f"R_eval from only {y.shape[0]} query examples (it needs "
                              f"{needed}); add a task with `factrace index task add`")
        return whitening.scorer(y, own=True), record

    def approx(self):
        """The store's saved approximate index (``index approx``), loaded and checked once."""
        if self._approx is None:
            from factrace.search.approx import ApproxIndex  # FAISS, when asked for

            self._approx = ApproxIndex.load(self.store)
        return self._approx

    def trace(self, queries: list[Query], top_k: int = 10, task: str | None = None,
              faiss: str | None = None, nprobe: int = 16, report_recall: bool = False,
              candidates: int | None = None,
              scores: list | None = None) -> tuple[list[Ranking], dict]:
        """Rank the store's rows for ``queries``: ``(rankings, metadata)``. ``candidates``:
        two-stage search, the exact scores of the ``candidates`` rows the store's saved
        approximate index proposes per query (and side) instead of every row. ``scores``: a
        list that receives every (query, row) score of the exact search, as one
        :class:`~factrace.search.full.FullScores`."""
        candidates = self._check_search(top_k, faiss, candidates, report_recall)
        if scores is not None and (faiss is not None or candidates is not None):
            raise FactraceError("every score comes from exact search: drop --faiss and "
                                "--candidates to write --scores-out")
        _, y = self.encoder.query_vectors(queries)
        return self._trace(queries, y, top_k, task, faiss, nprobe, report_recall,
                           candidates, scores)[:2]

    def _check_search(self, top_k: int, faiss: str | None, candidates: int | None,
                      report_recall: bool = False) -> int | None:
        """Refuse a two-stage search that cannot run, before any encoding; returns the
        candidates to use (a compact store's default: :data:`COMPACT_CANDIDATES`)."""
        if self.store.compact:
            if faiss is not None or report_recall:
                raise FactraceError(f"{self.store.path} is a compact store: it has no rows to "
                                    "search exactly or to build another index from; drop "
                                    "--faiss/--recall")
            candidates = max(COMPACT_CANDIDATES, top_k) if candidates is None else candidates
        if candidates is None:
            return None
        if faiss is not None:
            raise FactraceError("--candidates uses the store's saved index; drop --faiss")
        if candidates < top_k:
            raise FactraceError(f"--candidates {candidates} is fewer than --top-k {top_k}")
        self.approx()
        return candidates

    def _trace(self, queries, y: torch.Tensor, top_k: int, task: str | None,
               faiss: str | None = None, nprobe: int = 16, report_recall: bool = False,
               candidates: int | None = None, scores: list | None = None
               ) -> tuple[list[Ranking], dict, TaskScorer]:
        scorer, choice = self.scorer(y, task)
        metadata = {"command": "trace", "index": str(self.store.path), "top_k": top_k,
                    "encoder": self.encoder.metadata(scorer.task), "whitening": choice,
                    "fingerprints": self.store.fingerprints, "search": "exact"}
        exact = None
        if (faiss is None and candidates is None) or report_recall:
            found = exact_topk(scorer, self.store, top_k, keep_scores=scores is not None)
            exact = found.result([q.id for q in queries])
            if scores is not None:
                scores.append(from_kept(found.kept, [q.id for q in queries], "trace"))
        rankings = exact
        if candidates is not None:
            rankings, record = two_stage(scorer, self.store, self.approx(), candidates, top_k,
                                         [q.id for q in queries],
                                         rows_of=self.rows if self.store.compact else None)
            metadata["search"] = "two-stage"
            metadata["two_stage"] = record
            if report_recall:
                from factrace.search.approx import recall_at_k

                k = min(10, top_k)
                metadata["recall_at_10"] = recall_at_k([r.doc_ids for r in rankings],
                                                       [r.doc_ids for r in exact], k)
        if faiss is not None:
            from factrace.search.approx import ApproxIndex, recall_at_k  # FAISS, when asked for

            index = ApproxIndex.build(_ScaledRows(self.store, scorer), faiss, nprobe=nprobe)
            vectors = scorer.u.numpy() if not scorer.task.normalize else \
                (scorer.u / scorer.qn[:, None]).numpy()
            rankings = index.search(vectors, top_k, query_ids=[q.id for q in queries])
            metadata["search"] = f"faiss {index.spec} nprobe={index.nprobe}"
            metadata["faiss"] = {"requested": faiss, "built": index.spec, "nlist": index.nlist,
                                 "nprobe": index.nprobe, "notes": index.notes,
                                 "description": index.describe()}
            if report_recall:
                from factrace.search.approx import recall_at_k

                k = min(10, top_k)
                metadata["recall_at_10"] = recall_at_k([r.doc_ids for r in rankings],
                                                       [r.doc_ids for r in exact], k)
        return rankings, metadata, scorer

    # ask ---------------------------------------------------------------------------------------
    def ask(self, prompt: str, max_new_tokens: int = 16, temperature: float = 0.0,
            seed: int = 0, span: asking.Span = asking.ANSWER, top_k: int = 10,
            task: str | None = None, explain_top: int = 3, texts: bool = False,
            candidates: int | None = None) -> asking.Answer:
        """The model completes ``prompt`` and its answer is traced: an
        :class:`~factrace.run.ask.Answer` (its ``metadata`` says how).

        Greedy at ``temperature`` 0, else sampled with ``seed``; the completion stops at EOS or
        after ``max_new_tokens``. The query is prompt ⊕ completion with the loss on the
        completion tokens overlapping ``span``, characters of the completion: by default
        ``"answer"``, the completion up to its first sentence end or line break
        (:func:`~factrace.run.ask.answer_span`; all of it when it is blank); ``(start, end)`` or
        ``"START:END"``; ``"whole"`` or ``None`` for the whole completion. ``Answer.span`` and
        ``Answer.traced`` say which. One query is too few to define R_eval: the store's
        default task gives it when there is one (see :meth:`scorer`). The ``explain_top`` best
        proponents get their per-token contributions (``Answer.proponent_tokens``); with
        ``texts``, every passage ranked its text (``Answer.texts``, read from the store's
        corpora in the same pass; none when the corpora cannot be read).
        """
        answers, _ = self.ask_many([prompt], max_new_tokens, temperature, seed, span, top_k,
                                   task, explain_top, texts, candidates)
        return answers[0]

    def ask_many(self, prompts: Sequence[str | tuple[str, str]], max_new_tokens: int = 16,
                 temperature: float = 0.0, seed: int = 0, span: asking.Span = asking.ANSWER,
                 top_k: int = 10, task: str | None = None, explain_top: int = 3,
                 texts: bool = False, candidates: int | None = None
                 ) -> tuple[list[asking.Answer], dict]:
        """:meth:`ask` for several prompts (strings, or ``(id, prompt)`` pairs), traced
        together as one query set (as ``trace`` traces a file): ``(answers, metadata)``.
        ``candidates``: two-stage search, as in :meth:`trace`."""
        check_at_least(1, top_k=top_k)
        candidates = self._check_search(top_k, None, candidates)
        check_at_least(0, explain_top=explain_top)
        asking.check_generation(max_new_tokens, temperature)
        if isinstance(span, str):
            span = asking.parse_span(span)
        if not prompts:
            raise FactraceError("no prompts to ask")
        named = [p if isinstance(p, tuple) else (f"ask-{n}", p) for n, p in enumerate(prompts, 1)]
        if len({i for i, _ in named}) != len(named):
            raise FactraceError("prompt ids must be unique")
        if task is not None:
            self.task(task)
        loaded, limit = self.encoder.loaded, self.encoder.max_length
        timings = {}
        t = time.perf_counter()
        ids = [asking.prompt_ids(loaded.tokenizer, p, limit, i) for i, p in named]
        answers = []
        for (qid, prompt), pids in zip(named, ids, strict=True):
            completion = asking.generate(loaded, pids, min(max_new_tokens, limit - len(pids)),
                                         temperature, seed)
            c = asking.completion_query(loaded.tokenizer, pids, completion, qid, span)
            answers.append(asking.Answer(qid, prompt, c.text, c.query, c.tokens, c.span,
                                         c.traced))
        timings["generate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        _, y = self.encoder.example_vectors([a.query for a in answers])
        rankings, metadata, scorer = self._trace(answers, y, top_k, task,
                                                 candidates=candidates)
        timings["trace_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if texts:
            shown = [r.doc_ids + (r.opponent_ids or []) for r in rankings]
            try:
                found = self.passage_texts([d for ids in shown for d in ids])
            except FactraceError:  # the corpora moved: the answers go without texts
                found = {}
            for a, ids in zip(answers, shown, strict=True):
                a.texts = {d: found[d] for d in ids if d in found}
        wanted = [(i, d) for i, r in enumerate(rankings) for d in r.doc_ids[:explain_top]]
        for (i, d), tokens in zip(wanted, self._passage_tokens(scorer, wanted), strict=True):
            answers[i].proponent_tokens[d] = tokens
        timings["explain_s"] = time.perf_counter() - t
        metadata.update(command="ask", explain_top=explain_top, timings=timings,
                        generation={"max_new_tokens": max_new_tokens,
                                    "temperature": temperature, "seed": seed,
                                    "greedy": temperature == 0, "context": limit})
        for a, r in zip(answers, rankings, strict=True):
            extra = {"prompt": a.prompt, "completion": a.completion,
                     "completion_ids": list(a.query.input_ids[-len(a.completion_tokens):]),
                     "span": list(a.span or (0, len(a.completion))), "traced": a.traced}
            # per proponent, its passage's tokens of largest contribution (null: not explained)
            extra["proponent_tokens"] = [
                asking.top_contributions(a.proponent_tokens[d], TOP_TOKENS)
                if d in a.proponent_tokens else None for d in r.doc_ids]
            a.ranking = Ranking(r.query_id, r.doc_ids, r.scores, r.opponent_ids,
                                r.opponent_scores, extra)
            a.metadata = metadata
        return answers, metadata

    def answer_queries(self, asked: Sequence[asking.Asked]) -> list[TokenizedExample]:
        """The queries the rows of an answers file were traced as, in order (read them with
        :func:`~factrace.run.ask.read_answers`; see :func:`~factrace.run.ask.asked_query`): to
        explain an answer's score, pass them all as ``queries``, as ``ask`` traced them."""
        loaded = self.encoder.loaded
        return [asking.asked_query(loaded.tokenizer, a, self.encoder.max_length) for a in asked]

    # explain -----------------------------------------------------------------------------------
    def explain(self, query: Query | TokenizedExample, doc_id: str,
                queries: Sequence[Query | TokenizedExample] | None = None,
                task: str | None = None) -> dict:
        """The score of ``(query, doc_id)`` as ``trace`` reports it, split over the loss terms
        of the passage (``passage_tokens``) and, separately, of the query (``query_tokens``):
        ``{"score", "passage_tokens": [{"token", "contribution", "position"}], "query_tokens":
        [...], "remainder": {"passage", "query"}, ...}`` where each list's contributions plus
        its remainder is the score (see :mod:`factrace.run.explain`).

        ``queries``: the query set ``query`` was traced with (R_eval depends on it; default:
        ``query`` alone, which takes R_eval from the store's default task when there is one).
        """
        row_index = self.row_index(doc_id)
        queries = list(queries) if queries is not None else [query]
        examples = [q if isinstance(q, TokenizedExample) else None for q in queries]
        plain = [q for q in queries if not isinstance(q, TokenizedExample)]
        if plain:
            tokenized = iter(self.encoder.tokenize_queries(plain))
            examples = [e if e is not None else next(tokenized) for e in examples]
        ids = [e.id for e in examples]
        if query.id not in ids:
            raise FactraceError(f"query {query.id!r} is not among the queries given")
        i = ids.index(query.id)
        if task is not None:
            self.task(task)
        _, y = self.encoder.example_vectors(examples)
        scorer, choice = self.scorer(y, task)
        p = self._pair(scorer, i, doc_id, row_index)
        (passage_tokens,) = self._passage_tokens(scorer, [(i, doc_id)])
        by_query = explaining.query_contributions(p, self._products(examples[i], p.v))
        query_tokens = explaining.token_list(self.encoder.loaded.tokenizer, examples[i],
                                             by_query)
        return {
            "query_id": query.id, "doc_id": doc_id, "score": p.score,
            "passage_tokens": passage_tokens, "query_tokens": query_tokens,
            "remainder": {"passage": p.score - sum(t["contribution"] for t in passage_tokens),
                          "query": p.score - sum(t["contribution"] for t in query_tokens)},
            "whitening": choice, "per_token": self._method,
        }

    def _passage_tokens(self, scorer: TaskScorer, pairs: Sequence[tuple[int, str]]
                        ) -> list[list[dict]]:
        """Per-token contributions of the passages of ``(query index, doc id)`` pairs."""
        if not pairs:
            return []
        unique = list(dict.fromkeys(d for _, d in pairs))
        examples = self.passage_examples(unique)
        _, whole = self.encoder.example_vectors([examples[d] for d in unique])
        whole = dict(zip(unique, whole, strict=True))
        out = []
        for i, d in pairs:
            p = self._pair(scorer, i, d)
            shares = explaining.passage_contributions(p, self._products(examples[d], p.u),
                                                      whole[d], d)
            out.append(explaining.token_list(self.encoder.loaded.tokenizer, examples[d],
                                             shares))
        return out

    def _products(self, example: TokenizedExample, direction: torch.Tensor) -> torch.Tensor:
        """``⟨direction, p_t⟩`` per loss term: forward mode, or each term's projection where
        the model's operations have no forward-mode derivative (then for the session)."""
        if self._method == "forward-mode":
            if self._products_of is None:
                self._products_of = explaining.TermProducts(self.encoder)
            try:
                return self._products_of(example, direction)
            except NotImplementedError:
                self._method = "one-hot loss masks"
                self._products_of = explaining.TermVectors(self.encoder)
        return self._products_of(example, direction)

    # rows and passages -------------------------------------------------------------------------
    def row_index(self, doc_id: str) -> int:
        """The store row of ``doc_id`` (a passage id, or ``<doc>#<n>`` for a window)."""
        if self._rows is None:
            self._rows = {d: n for n, d in enumerate(self.store.ids)}
        if doc_id not in self._rows:
            windows = [d for d in self._rows if d.startswith(f"{doc_id}#")][:3]
            hint = f" (its windows: {', '.join(windows)}, ...)" if windows else ""
            raise FactraceError(f"{self.store.path} has no row {doc_id!r}{hint}")
        return self._rows[doc_id]

    def stored_row(self, row_index: int) -> torch.Tensor:
        """Stored row ``row_index`` as float32 ``[d]`` (rotated; unit norm when normalised)."""
        return self.rows(np.array([row_index]))[0]

    def rows(self, positions: np.ndarray | Sequence[int]) -> torch.Tensor:
        """The store's rows at ``positions`` as float32 ``[n, d]``: read from its shards, or in a
        compact store re-encoded from their passages (read where the store recorded them) and
        rounded to float16 as a build stores them."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if not self.store.compact:
            return torch.from_numpy(self.store.rows(positions)).float()
        ids = self.store.ids
        wanted = [ids[i] for i in positions]
        documents = dict.fromkeys(passage_of(d, self.store.is_passage)[0] for d in wanted)
        passages = []
        for document in documents:
            passage = self.store.passage(document)
            if passage is None:
                raise FactraceError(f"passage {document!r} is in the store but not in its "
                                    f"corpora ({', '.join(map(str, self.store.corpora))})")
            passages.append(passage)
        got, rows = self.encoder.passage_rows(passages)
        where = {d: n for n, d in enumerate(got)}
        missing = [d for d in wanted if d not in where]
        if missing:
            raise FactraceError(f"row {missing[0]!r} of {self.store.path} is not a window of its "
                                "passage as the model encodes it now")
        return rows[[where[d] for d in wanted]].half().float()

    def _pair(self, scorer: TaskScorer, query_index: int, doc_id: str,
              row_index: int | None = None) -> explaining.Pair:
        index = self.row_index(doc_id) if row_index is None else row_index
        return explaining.pair(scorer, query_index, self.stored_row(index), index)

    def passage_texts(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """The text of the passages (windows) behind store rows ``doc_ids``: their tokens
        decoded, special tokens left out (see :meth:`passage_examples`)."""
        tokenizer = self.encoder.loaded.tokenizer
        return {d: tokenizer.decode(list(e.input_ids), skip_special_tokens=True,
                                    clean_up_tokenization_spaces=False)
                for d, e in self.passage_examples(doc_ids).items()}

    def passage_examples(self, doc_ids: Sequence[str]) -> dict[str, TokenizedExample]:
        """The tokenised passages (windows) behind store rows ``doc_ids``, each read directly
        from the corpus file and offset the store recorded for it (no corpus is scanned)."""
        for d in doc_ids:
            if d in self._passages:
                continue
            self.row_index(d)
            document, window = passage_of(d, self.store.is_passage)
            passage = self.store.passage(document)
            if passage is not None:
                for example in self.encoder.tokenize_passages([passage]):
                    if example.id == d:
                        self._passages[d] = example
            if d not in self._passages:
                raise FactraceError(
                    f"passage {d!r} is in the store but not in its corpora "
                    f"({', '.join(str(c) for c in self.store.corpora)}) as the store encoded it")
        return {d: self._passages[d] for d in doc_ids}



class _ScaledRows(EncodingStore):
    """A store's rows as vectors whose inner product with ``R⁻¹q / ‖R^{-1/2} q‖`` is the score
    (``row / ‖R^{-1/2} row‖``), shard by shard on access, for an approximate index."""

    def __init__(self, store: EncodingStore, scorer: TaskScorer, chunk_rows: int = 1024):
        super().__init__(store.path, store.manifest)
        self.scorer, self.chunk_rows = scorer, chunk_rows
        self.first_rows = np.concatenate([[0], np.cumsum(store.shard_rows)]).astype(int)

    def shard_encodings(self, index: int) -> np.ndarray:
        encodings = super().shard_encodings(index)
        scorer, first = self.scorer, int(self.first_rows[index])
        out = np.empty(encodings.shape, np.float32)
        for s in range(0, encodings.shape[0], self.chunk_rows):
            chunk = torch.from_numpy(np.asarray(encodings[s:s + self.chunk_rows], np.float32))
            if scorer.task.normalize:
                if scorer.row_norms is not None:
                    rn = scorer.row_norms[first + s:first + s + chunk.shape[0]]
                else:
                    rn = scorer.task.norms(chunk)
                chunk = chunk / rn.clamp(min=1e-30)[:, None]
            out[s:s + chunk.shape[0]] = chunk.numpy()
        return out


@dataclass
class TraceConfig:
    """A ``trace`` job against a built store."""

    index: str
    queries: str | Source
    out: str | None = None
    top_k: int = 10
    task: str | None = None
    """Named task whose R_eval to use (default: the queries' own, or the store's default task
    when the queries are too few)."""
    model: str | None = None
    """Defaults to the model the store was built with."""
    optimizer_state: str | None = None
    """Defaults to the optimizer state the store was built with."""
    faiss: str | None = None
    """FAISS spec for approximate search, e.g. ``IVF256,Flat`` or ``IVF256,PQ16``."""
    nprobe: int = 16
    report_recall: bool = False
    """Also run exact search and report recall@10 of the approximate one."""
    candidates: int | None = None
    """Two-stage search: exact scores of this many candidates per query from the store's
    saved approximate index (``index approx``)."""
    device: str | None = None
    progress: bool = True
    overwrite: bool = False
    """Replace an existing ``out`` (otherwise refused before any work)."""
    scores_out: str | None = None
    """Also write every (query, passage) score to this ``.npz`` (:mod:`factrace.search.full`;
    exact search only), refused up front when larger than ``scores_max_gib`` or the free
    disk."""
    scores_max_gib: float = 4.0
    """Largest ``scores_out`` file allowed, in GiB."""


def trace(cfg: TraceConfig) -> ScanResult:
    check_at_least(1, top_k=cfg.top_k, nprobe=cfg.nprobe, candidates=cfg.candidates)
    if cfg.out:
        check_output_file(cfg.out, [META_SUFFIX], cfg.overwrite)
    if cfg.scores_out:
        check_output_file(cfg.scores_out, overwrite=cfg.overwrite)
        if cfg.faiss is not None or cfg.candidates is not None:
            raise FactraceError("every score comes from exact search: drop --faiss and "
                                "--candidates to write --scores-out")
    queries = read_queries(cfg.queries)
    scores = None
    if cfg.scores_out:  # refused before the model is loaded
        check_size(cfg.scores_out, len(queries), EncodingStore.open(cfg.index, verify=False).n_rows,
                   int(cfg.scores_max_gib * 2**30))
        scores = []
    tracer = Tracer.open(cfg.index, cfg.model, cfg.optimizer_state, cfg.device, cfg.progress)
    if cfg.task is not None:
        tracer.task(cfg.task)  # a task that does not exist fails before any encoding
    rankings, metadata = tracer.trace(queries, cfg.top_k, cfg.task, cfg.faiss, cfg.nprobe,
                                      cfg.report_recall, cfg.candidates, scores)
    metadata.update(source_meta("queries", cfg.queries))
    if cfg.out:
        write_with_metadata(cfg.out, rankings, metadata)
    if cfg.scores_out:
        write_scores(cfg.scores_out, scores[0])
    return ScanResult(rankings, metadata)


@dataclass
class AskConfig:
    """An ``ask`` job: the store's model completes prompts, the completions are traced."""

    index: str
    prompt: str | None = None
    """One prompt (or ``prompts``)."""
    prompts: str | None = None
    """A prompts file: JSON Lines with ``prompt`` (and optionally ``id``), or text, one prompt
    per line (see :func:`factrace.run.ask.read_prompts`)."""
    out: str | None = None
    """Rankings JSONL to write (``trace``'s rows plus ``prompt``, ``completion``, ...)."""
    max_new_tokens: int = 16
    temperature: float = 0.0
    """0: greedy."""
    seed: int = 0
    """Seed of the sampling (with a temperature)."""
    span: str = asking.ANSWER
    """What of the completion is traced (the tokens overlapping these characters): ``answer``
    (up to its first sentence end or line break), ``whole``, or ``START:END``."""
    top_k: int = 10
    task: str | None = None
    explain_top: int = 3
    """Best proponents whose per-token contributions are computed."""
    texts: bool = False
    """Read every ranked passage's text too (``Answer.texts``, for showing them)."""
    candidates: int | None = None
    """Two-stage search (see :class:`TraceConfig`)."""
    model: str | None = None
    optimizer_state: str | None = None
    device: str | None = None
    overwrite: bool = False


def ask(cfg: AskConfig) -> tuple[list[asking.Answer], dict]:
    """Run an ``ask`` job; options, prompts and ``out`` are checked before the model loads, and
    nothing is written unless every prompt was answered and traced."""
    check_at_least(1, top_k=cfg.top_k, candidates=cfg.candidates)
    check_at_least(0, explain_top=cfg.explain_top)
    asking.check_generation(cfg.max_new_tokens, cfg.temperature)
    span = asking.parse_span(cfg.span)
    if (cfg.prompt is None) == (cfg.prompts is None):
        raise FactraceError("give one prompt, or --prompts FILE (not both)")
    if cfg.out:
        check_output_file(cfg.out, [META_SUFFIX], cfg.overwrite)
    prompts = asking.read_prompts(cfg.prompts) if cfg.prompts else [("ask-1", cfg.prompt)]
    for pid, prompt in prompts:
        if not prompt.strip():
            raise FactraceError(f"prompt {pid!r} is empty")
    tracer = Tracer.open(cfg.index, cfg.model, cfg.optimizer_state, cfg.device)
    answers, metadata = tracer.ask_many(prompts, cfg.max_new_tokens, cfg.temperature, cfg.seed,
                                        span, cfg.top_k, cfg.task, cfg.explain_top,
                                        cfg.texts, cfg.candidates)
    if cfg.prompts:
        metadata["prompts"] = str(cfg.prompts)
    if cfg.out:
        write_with_metadata(cfg.out, [a.ranking for a in answers], metadata)
    return answers, metadata


@dataclass
class ExplainConfig:
    """An ``explain`` job: one (query, passage) pair's score, token by token."""

    index: str
    queries: str | Source
    """The queries file the pair was traced with (R_eval comes from it, as in ``trace``), or
    the answers file of an ``ask`` (``ask --out``): its answers as they were traced."""
    query_id: str
    doc_id: str
    out: str | None = None
    """JSON to write."""
    task: str | None = None
    model: str | None = None
    optimizer_state: str | None = None
    device: str | None = None
    overwrite: bool = False


def explain(cfg: ExplainConfig) -> dict:
    """Run an ``explain`` job (the query id is checked before the model loads, the doc id
    before any encoding); ``queries`` may be an answers file (:meth:`Tracer.answer_queries`)."""
    if cfg.out:
        check_output_file(cfg.out, overwrite=cfg.overwrite)
    answers = asking.is_answers(cfg.queries)
    queries = asking.read_answers(cfg.queries) if answers else read_queries(cfg.queries)
    ids = [q.id for q in queries]
    if cfg.query_id not in ids:
        raise FactraceError(f"{cfg.queries} has no query {cfg.query_id!r}")
    tracer = Tracer.open(cfg.index, cfg.model, cfg.optimizer_state, cfg.device)
    tracer.row_index(cfg.doc_id)
    if answers:
        queries = tracer.answer_queries(queries)
    result = tracer.explain(queries[ids.index(cfg.query_id)], cfg.doc_id, queries, cfg.task)
    result.update(source_meta("queries", cfg.queries))
    if cfg.out:
        import json

        from factrace.data.atomic import atomic_write

        with atomic_write(cfg.out, "w") as f:
            json.dump(result, f, indent=2, ensure_ascii=False)
    return result
