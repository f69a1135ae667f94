"""The store's model behind the page's Ask and Explain views.

The :class:`~factrace.run.tracer.Tracer` is opened on the first question (loading the model
takes a while) and kept; every model call holds one lock, so requests that arrive together are
answered one after another (PyTorch on a few cores gains nothing from running them at once).
A :class:`ModelQueue` bounds how many wait: one more is refused (:class:`Busy`), not piled up.
Recent answers are kept, so that explaining one of their proponents reuses the query exactly as
it was traced (the token ids the model generated).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from factrace.data.records import Query
from factrace.errors import FactraceError
from factrace.run.ask import Answer, parse_span
from factrace.serve.data import Passages
from factrace.store.encodings import EncodingStore

# Answers kept for explaining their proponents.
KEPT_ANSWERS = 32
MAX_NEW_TOKENS = 64
#: Model calls that may wait while one runs (``factrace serve --max-queue``).
MAX_QUEUE = 4


class Busy(Exception):
    """The queue of model calls is full."""


class ModelQueue:
    """Model calls let in: one runs (the session's lock) and at most ``max_waiting`` wait for
    it; :meth:`admitted` raises :class:`Busy` for one more."""

    def __init__(self, max_waiting: int = MAX_QUEUE):
        self.max_waiting = max_waiting
        self.admitted_now = 0
        self._lock = threading.Lock()

    @contextmanager
    def admitted(self) -> Iterator[None]:
        with self._lock:
            if self.admitted_now > self.max_waiting:
                raise Busy(f"the model is busy ({self.admitted_now - 1} questions waiting); "
                           "try again shortly")
            self.admitted_now += 1
        try:
            yield
        finally:
            with self._lock:
                self.admitted_now -= 1


class ModelSession:
    """Ask and explain against one store, with its model loaded once, lazily."""

    def __init__(self, store: EncodingStore, model: str | None = None,
                 optimizer_state: str | None = None, device: str | None = None):
        self.store = store
        self.model, self.optimizer_state, self.device = model, optimizer_state, device
        self._tracer = None
        self._lock = threading.Lock()
        self._answers: OrderedDict[tuple, Answer] = OrderedDict()
        self.calls = 0  # model calls made (the tests check the Tracer is reused)
        self.opened = 0

    @property
    def method(self) -> str:
        """The method whose scores the store's model gives: the store's variant."""
        config = (self.store.config.get("encoder") or {}).get("config") or {}
        return str(config.get("variant") or "the store's encoding")

    def _open(self):
        if self._tracer is None:
            from factrace.run.index import open_encoder_for
            from factrace.run.tracer import Tracer

            self._tracer = Tracer(self.store, open_encoder_for(
                self.store, self.model, self.optimizer_state, self.device))
            self.opened += 1
        return self._tracer

    def ask(self, prompt: str, span: str | None = None, max_new_tokens: int = 16,
            top_k: int = 10, explain_top: int = 3) -> Answer:
        """The model's completion of ``prompt``, traced (over the completion's characters
        ``span``, ``"START:END"``, or all of it)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise FactraceError("the prompt is empty")
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise FactraceError(f"max_new_tokens must be 1 to {MAX_NEW_TOKENS}, got "
                                f"{max_new_tokens}")
        parsed = parse_span(span) if span else None
        key = (prompt, parsed, max_new_tokens, top_k, explain_top)
        with self._lock:
            if key in self._answers:
                self._answers.move_to_end(key)
                return self._answers[key]
            tracer = self._open()
            self.calls += 1
            answer = tracer.ask(prompt, max_new_tokens=max_new_tokens, span=parsed,
                                top_k=top_k, explain_top=explain_top)
            self._answers[key] = answer
            while len(self._answers) > KEPT_ANSWERS:
                self._answers.popitem(last=False)
            return answer

    def explain(self, query: Query, doc_id: str, queries: list[Query] | None = None) -> dict:
        """:meth:`Tracer.explain` of ``(query, doc_id)`` (``queries``: the set it was traced
        with)."""
        with self._lock:
            tracer = self._open()
            tracer.row_index(doc_id)
            self.calls += 1
            return tracer.explain(query, doc_id, queries)

    def explain_answer(self, answer: Answer, doc_id: str) -> dict:
        """A proponent of an answer, explained against the query exactly as it was traced."""
        return self.explain(answer.query, doc_id)


def answer_json(answer: Answer, passages: Passages) -> dict:
    """An answer as the Ask view shows it: the completion's tokens (``traced`` marks those the
    span selected) and the proponents, the explained ones with their per-token contributions."""
    r = answer.ranking
    proponents = []
    for n, (doc_id, score) in enumerate(zip(r.doc_ids, r.scores, strict=True), 1):
        entry = {"rank": n, "score": score, **passages.get(doc_id)}
        if doc_id in answer.proponent_tokens:
            entry["tokens"] = answer.proponent_tokens[doc_id]
        proponents.append(entry)
    opponents = [{"rank": n, "score": score, **passages.get(doc_id)} for n, (doc_id, score)
                 in enumerate(zip(r.opponent_ids or [], r.opponent_scores or [], strict=True),
                              1)]
    return {"id": answer.id, "prompt": answer.prompt, "completion": answer.completion,
            "tokens": answer.completion_tokens,
            "span": list(answer.span) if answer.span else None,
            "proponents": proponents, "opponents": opponents,
            "whitening": answer.metadata.get("whitening", {})}
