"""What a request to the explorer may carry, checked before anything uses it.

Every value a request gives (a path segment, a query parameter, a JSON field) is checked here:
its type, its length, its range. None of them ever names a file: rankings sets, queries and
passages are looked up among those the server loaded. A value refused is one short message
(status 400, or the status :class:`Refused` carries) that shows at most :data:`SHOWN`
characters of it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from factrace.errors import FactraceError

#: Bytes of a POST body.
MAX_BODY = 64 * 1024
#: Characters of a prompt.
MAX_PROMPT = 4000
#: Characters of a rankings set's name, a query id or a passage id.
MAX_ID = 512
#: Characters of a search of the queries, and of a filter's name or value.
MAX_SEARCH = 1000
#: ``field.<name>=<value>`` filters of one query list.
MAX_FILTERS = 20
#: ``k`` (the cut-off of "gold in top k") and ``top_k`` (an answer's proponents).
MAX_K = 1000
#: Characters of a span (``START:END``, ``answer`` or ``whole``).
MAX_SPAN = 24
#: Characters of a request value an error message shows.
SHOWN = 100

_INTEGER = re.compile(r"\s*[+-]?\d{1,12}\s*")


class Refused(Exception):
    """A request refused with ``status`` and a one-line ``message`` (``headers``: more
    response headers, e.g. ``Retry-After``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def shown(value: Any) -> str:
    """``value`` as an error message shows it: a string quoted and cut to :data:`SHOWN`
    characters (``…`` marks the cut), a number as written, anything else by its kind."""
    if isinstance(value, str):
        return repr(value[:SHOWN]) + ("…" if len(value) > SHOWN else "")
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "a very large integer"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def text(name: str, value: Any, limit: int) -> str:
    """``value`` as a string of at most ``limit`` characters, with no NUL and no lone
    surrogate (a ``\\udXXX`` escape of JSON that no UTF-8 text holds)."""
    if not isinstance(value, str):
        raise FactraceError(f"{name} must be a string, got {shown(value)}")
    if len(value) > limit:
        raise FactraceError(f"{name} is too long ({len(value)} characters; at most {limit})")
    if "\x00" in value:
        raise FactraceError(f"{name} must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FactraceError(f"{name} is not valid UTF-8 text") from None
    return value


def integer(name: str, value: Any, default: int, low: int, high: int, *,
            from_text: bool = False) -> int:
    """``value`` as an integer in ``[low, high]``; absent (``None``, or ``""`` when
    ``from_text``): ``default``. A JSON field must be a JSON integer (not ``true``, not
    ``2.0``); a query parameter (``from_text``) is its digits."""
    if value is None or (from_text and value == ""):
        return default
    if from_text and isinstance(value, str) and _INTEGER.fullmatch(value):
        number = int(value)
    elif not from_text and isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        raise FactraceError(f"{name} must be an integer, got {shown(value)}")
    if not low <= number <= high:
        raise FactraceError(f"{name} must be {low} to {high}, got {shown(number)}")
    return number


def span(value: Any) -> str | None:
    """The traced span of a completion: ``None`` (or ``""``: the whole completion),
    ``"START:END"``, ``"answer"`` or ``"whole"``."""
    if value is None or value == "":
        return None
    from factrace.run.ask import parse_span

    value = text("span", value, MAX_SPAN)
    parse_span(value)  # its message says what a span is
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite(number: str) -> float:
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(f"{shown(number)} is too large a number")
    return value


def json_body(raw: bytes, fields: frozenset[str]) -> dict:
    """A POST body: a JSON object of at most :data:`MAX_BODY` bytes whose keys are among
    ``fields``. ``NaN`` and ``Infinity`` (which Python's parser takes) are refused, as is
    nesting too deep to parse."""
    if len(raw) > MAX_BODY:
        raise Refused(413, f"the request body is too large (at most {MAX_BODY} bytes)")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant,
                          parse_float=_finite)
    except UnicodeDecodeError:
        raise FactraceError("the request body is not UTF-8") from None
    except RecursionError:
        raise FactraceError("the request body is nested too deeply") from None
    except ValueError as e:
        raise FactraceError(f"the request body is not JSON: {str(e)[:SHOWN]}") from None
    if not isinstance(body, dict):
        raise FactraceError("the request body must be a JSON object")
    unknown = [key for key in body if key not in fields]
    if unknown:
        raise FactraceError(f"unknown field {shown(unknown[0])} (fields: "
                            f"{', '.join(sorted(fields))})")
    return body
