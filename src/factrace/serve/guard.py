"""Who may talk to the explorer: checks every request passes before the app sees it.

- **Host**: the ``Host`` header must name the address the server listens on (any port): the
  ``--host`` given, the address it bound, and on loopback ``localhost``, ``127.0.0.1`` and
  ``[::1]``; any other is refused with 400 (a page of another site that rebinds its name to
  this address is not answered). An unspecified address (``0.0.0.0``, ``::``) answers to any
  name of the machine, so it accepts any host: the token guards it.
- **Token**: when there is one (``--token``, or one generated off loopback), every request
  must carry it, as ``Authorization: Bearer TOKEN`` or as the cookie the page gets when it is
  first opened with ``/?token=TOKEN`` (then redirected to ``/``, the token out of its
  address). A request without it gets 401 and nothing else. Compared in constant time.
- **POST** bodies must be ``Content-Type: application/json`` (415 otherwise): a form of another
  site cannot send one without the browser asking this server first (a CORS preflight, which
  it does not grant), so no other page can start a model run.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response

from factrace.serve.limits import shown

#: The cookie holding the token, set by ``/?token=TOKEN``.
COOKIE = "factrace_token"
#: The names of this machine's loopback addresses, as a ``Host`` header gives them.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _address(host: str):
    try:
        return ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback: only it can reach
    the server."""
    address = _address(host)
    return host.strip().lower().rstrip(".") == "localhost" or (address is not None
                                                              and address.is_loopback)


def _host_form(host: str) -> str:
    """``host`` as a ``Host`` header names it: lower case, an IPv6 address in brackets."""
    address = _address(host)
    if address is not None:
        return f"[{address.compressed}]" if address.version == 6 else address.compressed
    return host.strip().lower().rstrip(".")


def accepted_hosts(*hosts: str) -> frozenset[str] | None:
    """The ``Host`` names a server listening on ``hosts`` (the ``--host`` given, the address
    bound) answers to; ``None``: any (an unspecified address such as ``0.0.0.0``)."""
    names = set()
    for host in hosts:
        address = _address(host)
        if address is not None and address.is_unspecified:
            return None
        names.add(_host_form(host))
        if is_loopback(host):
            names |= LOOPBACK_HOSTS
    return frozenset(names)


def host_of(header: str) -> str:
    """The name a ``Host`` header gives, without its port (``""``: none, or malformed)."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        rest = header[end + 1:]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return ""
        return header[:end + 1]
    name, colon, port = header.partition(":")
    if colon and not port.isdigit():
        return ""
    return name.rstrip(".")


def _bearer(headers: Headers) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


class Guard:
    """ASGI middleware refusing a request with another ``Host`` (400), without the token
    (401; ``token`` ``None``: none needed) or a POST body that is not JSON (415)."""

    def __init__(self, app, hosts: Iterable[str] | None, token: str | None):
        self.app = app
        self.hosts = None if hosts is None else frozenset(hosts)
        self._token = None if token is None else token.encode("utf-8")

    def _is_token(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(
            given.encode("utf-8", "surrogatepass"), self._token)

    def check(self, scope) -> Response | None:
        """The refusal of this request, or ``None`` to let it through."""
        headers = Headers(scope=scope)
        api = scope["path"].startswith("/api/")
        if self.hosts is not None and host_of(headers.get("host", "")) not in self.hosts:
            return _refusal(400, "this server does not answer for host "
                            f"{shown(headers.get('host', ''))}", api)
        if self._token is not None:
            request = Request(scope)
            if scope["path"] == "/" and self._is_token(request.query_params.get("token")):
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(COOKIE, self._token.decode(), httponly=True,
                                    samesite="strict", path="/")
                return response
            if not (self._is_token(_bearer(headers))
                    or self._is_token(request.cookies.get(COOKIE))):
                return _refusal(401, "this explorer needs its access token: open the address "
                                "factrace serve printed (/?token=TOKEN), or send "
                                "Authorization: Bearer TOKEN", api,
                                {"WWW-Authenticate": "Bearer"})
        if scope["method"] == "POST":
            media = headers.get("content-type", "").partition(";")[0].strip().lower()
            if media != "application/json":
                return _refusal(415, "a POST body must be JSON, sent with Content-Type: "
                                "application/json", api)
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":  # (the app has no websocket: Starlette closes one)
            refusal = self.check(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _refusal(status: int, message: str, api: bool,
             headers: dict[str, str] | None = None) -> Response:
    if api:
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)
