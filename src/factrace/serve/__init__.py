"""``factrace serve``: a local web explorer of rankings, answers and explanations.

:func:`load_explorer` reads everything once (the store's ids and corpora, each rankings file,
queries and qrels); :func:`serve` binds the address first (a port in use is a one-line error),
says where it listens and runs the app (:mod:`factrace.serve.app`) until interrupted.

Off loopback the explorer needs an access token (:mod:`factrace.serve.guard`): ``--token``, or
one generated and printed once with the address to open.
"""

from __future__ import annotations

import errno
import re
import secrets
import socket
import sys
from dataclasses import dataclass, field

from factrace.data.sources import Source
from factrace.errors import FactraceError
from factrace.extras import require

__all__ = ["ServeConfig", "bind", "load_explorer", "serve"]


@dataclass
class ServeConfig:
    """A ``serve`` job."""

    index: str | None = None
    """Store built by ``factrace index build`` (passage texts, Ask and Explain)."""
    rankings: list[str] = field(default_factory=list)
    """Rankings files, or directories of them (a ``compare`` output directory)."""
    qrels: str | None = None
    """Gold passages (default: the qrels the rankings' metadata name, as ``compare``'s do)."""
    queries: str | Source | None = None
    """Queries for every rankings file (default: each file's own, from its metadata)."""
    corpus: list[str | Source] = field(default_factory=list)
    """Corpora for passage texts (default: the store's, else the one the rankings' metadata
    name, as ``compare``'s do)."""
    model: str | None = None
    optimizer_state: str | None = None
    device: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    """Access token every request must carry (default: none on loopback, else one generated
    and printed)."""
    max_queue: int = 4
    """Model calls (ask, explain) that may wait while one runs; more are answered 503."""


_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,256}")


def load_explorer(cfg: ServeConfig):
    """Read the inputs of ``cfg`` into an :class:`~factrace.serve.app.Explorer`.

    Raises:
        FactraceError: no store and no rankings, a store or qrels that cannot be read, or no
            corpus for the passages' text. A rankings file that cannot be read is not an error:
            its set carries the message, for the page to show (and a warning says it).
    """
    from factrace.serve.app import Explorer
    from factrace.serve.data import Passages, load_qrels, load_sets, named_in_metadata, qrels_named
    from factrace.serve.model import ModelSession

    if cfg.index is None and not cfg.rankings:
        raise FactraceError("give --index STORE, --rankings FILE, or both")
    store = session = None
    corpora = list(cfg.corpus)
    if cfg.index is not None:
        from factrace.store.encodings import EncodingStore

        store = EncodingStore.open(cfg.index, verify="once")
        if not corpora:
            corpora = [c for c in store.corpora if c is not None]
        session = ModelSession(store, cfg.model, cfg.optimizer_state, cfg.device)
    sets = load_sets(cfg.rankings, cfg.queries) if cfg.rankings else []
    if not corpora:
        corpora = named_in_metadata(sets, "corpus")
    if not corpora:
        raise FactraceError("give --corpus FILE (or --index STORE) for the passages' text")
    qrels_path = cfg.qrels or qrels_named(sets)
    return Explorer(sets=sets, qrels=load_qrels(qrels_path), passages=Passages(corpora, store),
                    session=session, index=cfg.index, qrels_path=qrels_path)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a one-line error (port in use, bad host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise FactraceError(f"cannot listen on {host}:{port}: {e}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        reason = "the port is in use" if e.errno == errno.EADDRINUSE else e.strerror or str(e)
        raise FactraceError(f"cannot listen on {host}:{port}: {reason} (choose another with "
                            "--port)") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(cfg: ServeConfig, announce=None) -> None:
    """Bind, load, say where it listens (``announce(url)``; default: a line on stderr) and
    serve until interrupted."""
    require("factrace serve", "serve")
    import uvicorn

    from factrace.serve.app import create_app
    from factrace.serve.guard import accepted_hosts, is_loopback

    if not 0 <= cfg.port <= 65535:
        raise FactraceError(f"--port must be 0 to 65535, got {cfg.port}")
    if cfg.token is not None and not _TOKEN.fullmatch(cfg.token):
        raise FactraceError("--token must be 1 to 256 letters, digits or . _ ~ -")
    if cfg.max_queue < 0:
        raise FactraceError(f"--max-queue must be 0 or more, got {cfg.max_queue}")
    sock = bind(cfg.host, cfg.port)  # a port in use fails before anything is read
    try:
        address = sock.getsockname()[0]
        token = cfg.token
        if token is None and not is_loopback(address):
            token = secrets.token_urlsafe(24)
        explorer = load_explorer(cfg)
        url = url_of(sock)
        if announce is None:
            print(f"factrace serve: listening on {url} (Ctrl-C stops)", file=sys.stderr,
                  flush=True)
        else:
            announce(url)
        if token is not None and cfg.token is None:
            print(f"factrace serve: open {url}?token={token} (other machines can reach this "
                  "address: requests need this access token; --token sets one)",
                  file=sys.stderr, flush=True)
        app = create_app(explorer, hosts=accepted_hosts(cfg.host, address), token=token,
                         max_queue=cfg.max_queue)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        server.run(sockets=[sock])
    finally:
        sock.close()
