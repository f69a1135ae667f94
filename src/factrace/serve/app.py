"""The web app: the page (``/``, ``/static/...``, ``/favicon.ico``) and its JSON API
(``/api/...``).

Every API answer is JSON; a user error (a :class:`~factrace.errors.FactraceError`: an unknown
set or query, a prompt the model cannot answer) is ``{"error": message}`` with status 400, which
the page shows as one message. Routes:

- ``GET /api/info``: the sets (with their load errors; ``default_set``: TrackStar's when
  loaded), the qrels file, whether a store and a model are there.
- ``GET /api/sets/{name}/queries?search=&correct=yes|no&k=&field.<name>=<value>``
- ``GET /api/sets/{name}/queries/{query_id}?k=``
- ``GET /api/compare?a=&b=&q=&k=`` (``q`` empty: the first query both sets rank; ``common``:
  the queries both rank, with their texts, for the page's search)
- ``GET /api/passages/{doc_id}``
- ``POST /api/ask`` ``{"prompt", "span", "max_new_tokens", "top_k"}``
- ``POST /api/explain`` ``{"set", "query_id", "doc_id"}`` or ``{"prompt", "span",
  "max_new_tokens", "top_k", "doc_id"}`` (a proponent of an answer): the store's score of the
  pair split over tokens (``method``: the store's variant), and ``listed``: the rank and score
  the set (or the answer) lists the passage with, which may be another method's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from factrace.data.io import read_queries
from factrace.data.records import Query
from factrace.errors import FactraceError
from factrace.serve import views
from factrace.serve.data import Passages, RankingSet
from factrace.serve.model import ModelSession, answer_json

STATIC = Path(__file__).parent / "static"


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


def _as_int(name: str, value, default: int) -> int:
    """``value`` (a query parameter or a JSON field) as an integer; absent or empty: default."""
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise FactraceError(f"{name} must be an integer, got {value!r}") from None


def _int(request: Request, name: str, default: int) -> int:
    return _as_int(name, request.query_params.get(name), default)


def _handled(endpoint):
    """A user error becomes ``{"error": ...}`` with status 400."""
    async def wrapped(request: Request):
        try:
            return await endpoint(request)
        except FactraceError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
    return wrapped


async def _body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise FactraceError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise FactraceError("the request body must be a JSON object")
    return body


def _need_session(explorer: Explorer) -> ModelSession:
    if explorer.session is None:
        raise FactraceError("no store: start factrace serve with --index STORE to ask and "
                            "explain")
    return explorer.session


def create_app(explorer: Explorer) -> Starlette:
    """The app serving ``explorer``."""
    from starlette.concurrency import run_in_threadpool

    async def page(request: Request):
        return FileResponse(STATIC / "index.html")

    async def favicon(request: Request):
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    async def info(request: Request):
        return JSONResponse({
            "sets": [s.summary() for s in explorer.sets],
            "default_set": views.default_set(explorer.sets), "default_k": views.DEFAULT_K,
            "has_qrels": bool(explorer.qrels), "qrels": explorer.qrels_path,
            "index": explorer.index,
            "can_ask": explorer.session is not None,
            "corpora": explorer.passages.corpora,
        })

    async def query_list(request: Request):
        s = views.find_set(explorer.sets, request.path_params["name"])
        p = request.query_params
        fields = {k.removeprefix("field."): v for k, v in p.items()
                  if k.startswith("field.") and v != ""}
        return JSONResponse(views.query_list(s, explorer.qrels, p.get("search", ""),
                                             p.get("correct", ""), fields,
                                             _int(request, "k", views.DEFAULT_K)))

    async def query_detail(request: Request):
        s = views.find_set(explorer.sets, request.path_params["name"])
        return JSONResponse(views.query_detail(s, request.path_params["query_id"],
                                               explorer.qrels, explorer.passages,
                                               _int(request, "k", views.DEFAULT_K)))

    async def compare(request: Request):
        p = request.query_params
        a = views.find_set(explorer.sets, p.get("a", ""))
        b = views.find_set(explorer.sets, p.get("b", ""))
        common = views.common_queries(a, b)
        if not common:
            raise FactraceError(f"sets {a.name!r} and {b.name!r} rank no query in common")
        qid = p.get("q") or common[0]
        out = views.comparison(a, b, qid, explorer.qrels, explorer.passages,
                               _int(request, "k", views.DEFAULT_K))
        out["common"] = [{"id": q.id, "prompt": q.prompt, "target": q.target,
                          "completion": q.completion} for q in map(a.queries.get, common)]
        return JSONResponse(out)

    async def passage(request: Request):
        return JSONResponse(explorer.passages.get(request.path_params["doc_id"]))

    def _ask(body: dict):
        return _need_session(explorer).ask(
            body.get("prompt", ""), body.get("span") or None,
            _as_int("max_new_tokens", body.get("max_new_tokens"), 16),
            _as_int("top_k", body.get("top_k"), 10))

    async def ask(request: Request):
        body = await _body(request)
        answer = await run_in_threadpool(_ask, body)
        return JSONResponse(answer_json(answer, explorer.passages))

    def _explain(body: dict) -> dict:
        session = _need_session(explorer)
        doc_id = body.get("doc_id")
        if not isinstance(doc_id, str) or not doc_id:
            raise FactraceError("explain needs a doc_id")
        if body.get("set"):
            s = views.find_set(explorer.sets, body["set"])
            qid = str(body.get("query_id", ""))
            if qid not in s.queries:
                raise FactraceError(f"rankings set {s.name!r} has no query {qid!r}")
            q = s.queries[qid]
            if q.prompt is None:
                raise FactraceError(f"the text of query {qid!r} is unknown: start factrace "
                                    "serve with --queries FILE (the queries it was traced with)")
            if q.completion is not None:  # an ask row: the completion, as text, is the target
                result = session.explain(Query(qid, q.prompt, q.completion), doc_id)
            else:
                result = session.explain(Query(qid, q.prompt, q.target), doc_id,
                                         explorer.queries_of(s))
            result["query"] = q.to_json()
            result["listed"] = views.listed(s.rankings[qid], doc_id, s.method, s.name)
        else:
            answer = _ask(body)
            result = session.explain_answer(answer, doc_id)
            result["query"] = {"id": answer.id, "prompt": answer.prompt,
                               "completion": answer.completion, "span": answer.span}
            result["listed"] = views.listed(answer.ranking, doc_id, f"ask ({session.method})")
        result["method"] = session.method
        result["passage"] = explorer.passages.get(doc_id)
        return result

    async def explain(request: Request):
        body = await _body(request)
        return JSONResponse(await run_in_threadpool(_explain, body))

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
    return Starlette(routes=routes)
