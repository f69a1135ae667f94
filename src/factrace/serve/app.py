"""The web app: the page (``/``, ``/static/...``, ``/favicon.ico``) and its JSON API
(``/api/...``).

Every API answer is JSON; a user error (a :class:`~factrace.errors.FactraceError`: an unknown
set or query, a prompt the model cannot answer, a value out of its limits) is
``{"error": message}`` with status 400, which the page shows as one message; a refusal of
:mod:`~factrace.serve.guard` (another host, no token, a POST that is not JSON) or of the limits
(a body too large, the model's queue full: 503 with ``Retry-After``) has its own status. Every
value a request gives is checked by :mod:`~factrace.serve.limits` before it is used, and none
names a file: sets, queries and passages are those loaded. Routes:

- ``GET /api/info``: the sets (with their load errors; ``default_set``: TrackStar's when
  loaded), the qrels file, whether a store and a model are there (files by name only).
- ``GET /api/sets/{name}/queries?search=&correct=yes|no&k=&field.<name>=<value>``
- ``GET /api/sets/{name}/queries/{query_id}?k=``
- ``GET /api/compare?a=&b=&q=&k=`` (``q`` empty: the first query both sets rank; ``common``:
  the queries both rank, with their texts, for the page's search)
- ``GET /api/passages/{doc_id}`` (404: an id neither the store nor a corpus has)
- ``POST /api/ask`` ``{"prompt", "span", "max_new_tokens", "top_k"}``
- ``POST /api/explain`` ``{"set", "query_id", "doc_id"}`` or ``{"prompt", "span",
  "max_new_tokens", "top_k", "doc_id"}`` (a proponent of an answer): the store's score of the
  pair split over tokens (``method``: the store's variant), and ``listed``: the rank and score
  the set (or the answer) lists the passage with, which may be another method's.

Ask and explain run the model: one at a time, at most ``max_queue`` waiting
(:class:`~factrace.serve.model.ModelQueue`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from factrace.data.io import read_queries
from factrace.data.records import Query
from factrace.errors import FactraceError
from factrace.serve import limits, model, views
from factrace.serve.data import Passages, RankingSet, file_name, without_directories
from factrace.serve.guard import LOOPBACK_HOSTS, Guard
from factrace.serve.limits import MAX_ID, MAX_SEARCH, Refused, shown, text
from factrace.serve.model import MAX_QUEUE, Busy, ModelQueue, ModelSession, answer_json

STATIC = Path(__file__).parent / "static"
#: Seconds a client told the model is busy (503) waits before asking again.
RETRY_AFTER = 5
ASK_FIELDS = frozenset({"prompt", "span", "max_new_tokens", "top_k"})
EXPLAIN_FIELDS = ASK_FIELDS | {"set", "query_id", "doc_id"}


@dataclass
class Explorer:
    """Everything the app serves, loaded once."""

    sets: list[RankingSet]
    qrels: dict[str, set[str]]
    passages: Passages
    session: ModelSession | None = None
    index: str | None = None
    qrels_path: str | None = None
    _queries: dict[str, list[Query]] = field(default_factory=dict)

    def queries_of(self, s: RankingSet) -> list[Query] | None:
        """The query set ``s`` was traced with (R_eval for an explanation), read once."""
        if not s.queries_path:
            return None
        if s.queries_path not in self._queries:
            self._queries[s.queries_path] = read_queries(s.queries_path)
        return self._queries[s.queries_path]


@dataclass(frozen=True)
class AskRequest:
    """A question to the model, checked."""

    prompt: str
    span: str | None
    max_new_tokens: int
    top_k: int

    @classmethod
    def of(cls, body: dict) -> AskRequest:
        prompt = text("prompt", body.get("prompt", ""), limits.MAX_PROMPT)
        if not prompt.strip():
            raise FactraceError("the prompt is empty")
        return cls(prompt, limits.span(body.get("span")),
                   limits.integer("max_new_tokens", body.get("max_new_tokens"), 16, 1,
                                  model.MAX_NEW_TOKENS),
                   limits.integer("top_k", body.get("top_k"), 10, 1, limits.MAX_K))


def _handled(endpoint):
    """A user error becomes ``{"error": ...}`` with status 400 (a refusal: its own status)."""
    async def wrapped(request: Request):
        try:
            return await endpoint(request)
        except Refused as e:
            return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)
        except FactraceError as e:
            return JSONResponse({"error": without_directories(str(e))}, status_code=400)
    return wrapped


def _param(request: Request, name: str, limit: int = MAX_ID) -> str:
    return text(name, request.query_params.get(name, ""), limit)


def _k(request: Request) -> int:
    return limits.integer("k", request.query_params.get("k"), views.DEFAULT_K, 1, limits.MAX_K,
                          from_text=True)


def _path(request: Request, name: str) -> str:
    return text(name, request.path_params[name], MAX_ID)


def _filters(request: Request) -> dict[str, str]:
    """The ``field.<name>=<value>`` filters of a query list (empty values: none)."""
    given = [(k, v) for k, v in request.query_params.multi_items()
             if k.startswith("field.") and v != ""]
    if len(given) > limits.MAX_FILTERS:
        raise FactraceError(f"at most {limits.MAX_FILTERS} field filters, got {len(given)}")
    return {text("a filter's field", k.removeprefix("field."), MAX_SEARCH):
            text("a filter's value", v, MAX_SEARCH) for k, v in given}


async def _body(request: Request, fields: frozenset[str]) -> dict:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limits.MAX_BODY:
            break
    return limits.json_body(bytes(raw), fields)


def _need_session(explorer: Explorer) -> ModelSession:
    if explorer.session is None:
        raise FactraceError("no store: start factrace serve with --index STORE to ask and "
                            "explain")
    return explorer.session


def create_app(explorer: Explorer, *, hosts: Iterable[str] | None = LOOPBACK_HOSTS,
               token: str | None = None, max_queue: int = MAX_QUEUE) -> Starlette:
    """The app serving ``explorer`` to requests whose ``Host`` is one of ``hosts`` (``None``:
    any) carrying ``token`` (``None``: none needed); at most ``max_queue`` model calls wait
    while one runs (see :mod:`factrace.serve.guard`)."""
    from starlette.concurrency import run_in_threadpool

    queue = ModelQueue(max_queue)

    async def model_call(work):
        """``work()`` in a thread, once the queue lets it in (503 when it is full)."""
        try:
            with queue.admitted():
                return await run_in_threadpool(work)
        except Busy as e:
            raise Refused(503, str(e), {"Retry-After": str(RETRY_AFTER)}) from None

    async def page(request: Request):
        return FileResponse(STATIC / "index.html")

    async def favicon(request: Request):
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    async def info(request: Request):
        return JSONResponse({
            "sets": [s.summary() for s in explorer.sets],
            "default_set": views.default_set(explorer.sets), "default_k": views.DEFAULT_K,
            "has_qrels": bool(explorer.qrels), "qrels": file_name(explorer.qrels_path),
            "index": file_name(explorer.index),
            "can_ask": explorer.session is not None,
            "corpora": [file_name(c) for c in explorer.passages.corpora],
        })

    async def query_list(request: Request):
        s = views.find_set(explorer.sets, _path(request, "name"))
        return JSONResponse(views.query_list(s, explorer.qrels,
                                             _param(request, "search", MAX_SEARCH),
                                             _param(request, "correct"), _filters(request),
                                             _k(request)))

    async def query_detail(request: Request):
        s = views.find_set(explorer.sets, _path(request, "name"))
        return JSONResponse(views.query_detail(s, _path(request, "query_id"), explorer.qrels,
                                               explorer.passages, _k(request),
                                               _param(request, "kind")))

    async def compare(request: Request):
        a = views.find_set(explorer.sets, _param(request, "a"))
        b = views.find_set(explorer.sets, _param(request, "b"))
        common = views.common_queries(a, b)
        if not common:
            raise FactraceError(f"sets {a.name!r} and {b.name!r} rank no query in common")
        qid = _param(request, "q") or common[0]
        out = views.comparison(a, b, qid, explorer.qrels, explorer.passages, _k(request))
        out["common"] = [{"id": q.id, "prompt": q.prompt, "target": q.target,
                          "completion": q.completion} for q in map(a.queries.get, common)]
        return JSONResponse(out)

    async def passage(request: Request):
        doc_id = _path(request, "doc_id")
        found = explorer.passages.get(doc_id)
        if found["text"] is None and not explorer.passages.in_store(doc_id):
            raise Refused(404, f"no passage {shown(doc_id)}")
        return JSONResponse(found)

    def _ask(question: AskRequest):
        return _need_session(explorer).ask(question.prompt, question.span,
                                           question.max_new_tokens, question.top_k)

    async def ask(request: Request):
        question = AskRequest.of(await _body(request, ASK_FIELDS))
        _need_session(explorer)
        answer = await model_call(partial(_ask, question))
        return JSONResponse(answer_json(answer, explorer.passages))

    def _explain_listed(s: RankingSet, qid: str, doc_id: str) -> dict:
        session = _need_session(explorer)
        q = s.queries[qid]
        if q.completion is not None:  # an ask row: the completion, as text, is the target
            result = session.explain(Query(qid, q.prompt, q.completion), doc_id)
        else:
            result = session.explain(Query(qid, q.prompt, q.target), doc_id,
                                     explorer.queries_of(s))
        result["query"] = q.to_json()
        result["listed"] = views.listed(s.rankings[qid], doc_id, s.method, s.name)
        return result

    def _explain_answer(question: AskRequest, doc_id: str) -> dict:
        session = _need_session(explorer)
        answer = _ask(question)
        result = session.explain_answer(answer, doc_id)
        result["query"] = {"id": answer.id, "prompt": answer.prompt,
                           "completion": answer.completion, "span": answer.span}
        result["listed"] = views.listed(answer.ranking, doc_id, f"ask ({session.method})")
        return result

    async def explain(request: Request):
        body = await _body(request, EXPLAIN_FIELDS)
        session = _need_session(explorer)
        doc_id = text("doc_id", body.get("doc_id", ""), MAX_ID)
        if not doc_id:
            raise FactraceError("explain needs a doc_id")
        if body.get("set") not in (None, ""):
            s = views.find_set(explorer.sets, text("set", body["set"], MAX_ID))
            qid = text("query_id", body.get("query_id", ""), MAX_ID)
            if qid not in s.queries:
                raise FactraceError(f"rankings set {s.name!r} has no query {shown(qid)}")
            if s.queries[qid].prompt is None:
                raise FactraceError(f"the text of query {shown(qid)} is unknown: start "
                                    "factrace serve with --queries FILE (the queries it was "
                                    "traced with)")
            work = partial(_explain_listed, s, qid, doc_id)
        else:
            work = partial(_explain_answer, AskRequest.of(body), doc_id)
        if not explorer.passages.in_store(doc_id):
            raise FactraceError(f"the store has no row {shown(doc_id)}")
        result = await model_call(work)
        result["method"] = session.method
        result["passage"] = explorer.passages.get(doc_id)
        return JSONResponse(result)

    routes = [
        Route("/", page),
        Route("/favicon.ico", favicon),
        Route("/api/info", _handled(info)),
        Route("/api/sets/{name}/queries", _handled(query_list)),
        Route("/api/sets/{name}/queries/{query_id:path}", _handled(query_detail)),
        Route("/api/compare", _handled(compare)),
        Route("/api/passages/{doc_id:path}", _handled(passage)),
        Route("/api/ask", _handled(ask), methods=["POST"]),
        Route("/api/explain", _handled(explain), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(Guard, hosts=hosts, token=token)])
    app.state.queue = queue
    return app
