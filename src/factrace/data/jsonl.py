"""JSON Lines reading and writing with line-numbered errors, and the field checks every format shares.

A JSON Lines file holds one JSON object per line, UTF-8 encoded; a ``.gz`` suffix means gzip.
Blank lines are skipped but still counted, so a line number in an error is the one an editor
shows. Every problem with a file is a :class:`~factrace.errors.FactraceError` whose one-line
message names the file, the line and what was expected::

    corpus.jsonl:17: missing field "text" (each line must be a JSON object with "id" and "text")
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from factrace.data.atomic import atomic_path
from factrace.errors import FactraceError, one_line

PathLike = str | os.PathLike[str]

_MAX_SHOWN = 60
_READ_ERRORS = (OSError, EOFError, zlib.error)


def located_error(where: str, message: str, expected: str | None = None) -> FactraceError:
    """A :class:`FactraceError` reading ``"<where>: <message> (<expected>)"``.

    ``where`` is ``"file:line"`` for JSON Lines or ``"file: row N"`` for columnar files.
    """
    suffix = f" ({expected})" if expected else ""
    return FactraceError(f"{where}: {message}{suffix}")


def describe(value: Any) -> str:
    """A short description of a JSON value for an error message: ``a float (3.5)``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({shown(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def shown(text: str) -> str:
    """``text`` as a JSON string, shortened so that it fits an error message."""
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "..."
    return json.dumps(text, ensure_ascii=False)


def open_binary(path: PathLike) -> IO[bytes]:
    """Open ``path`` for binary reading (gunzipping ``*.gz``), turning OS errors into user errors."""
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            return gzip.open(path, "rb")
        return open(path, "rb")
    except FileNotFoundError:
        raise FactraceError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FactraceError(f"{path}: is a directory, expected a JSON Lines file") from None
    except OSError as error:
        raise FactraceError(f"{path}: cannot read ({error.strerror or error})") from None


def iter_lines(path: PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_bytes)`` for each non-blank line, numbers 1-based.

    A UTF-8 byte-order mark at the start of the file is dropped.
    """
    with open_binary(path) as handle:
        lines = iter(handle)
        number = 0
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except _READ_ERRORS as error:
                raise FactraceError(f"{path}:{number + 1}: cannot read ({one_line(error)})") from None
            number += 1
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if raw and not raw.isspace():
                yield number, raw


def count_lines(path: PathLike) -> int:
    """The number of non-blank lines of a JSON Lines file (no JSON parsing)."""
    return sum(1 for _ in iter_lines(path))


def parse_line(where: str, raw: bytes, expected: str = "a JSON object") -> dict[str, Any]:
    """Decode one line as a UTF-8 JSON object; ``where`` (``"file:line"``) prefixes any error."""
    hint = f"each line must be {expected}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = raw[error.start : error.start + 1].hex()
        message = f"not valid UTF-8 (byte 0x{bad} at column {error.start + 1})"
        raise located_error(where, message, "the file must be UTF-8 encoded") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        message = f"not valid JSON ({error.msg} at column {error.colno})"
        raise located_error(where, message, hint) from None
    except RecursionError:
        raise located_error(where, "JSON nested too deeply", hint) from None
    except ValueError as error:  # an integer literal past Python's digit limit
        raise located_error(where, f"not usable JSON ({one_line(error, 80)})", hint) from None
    if not isinstance(value, dict):
        message = f"expected a JSON object, got {describe(value)}"
        if isinstance(value, list):
            message += "; the file must be JSON Lines, one object per line, not a JSON array"
        raise located_error(where, message, hint)
    return value


def iter_jsonl(
    path: PathLike, expected: str = "a JSON object"
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(line_number, object)`` from a JSON Lines file, skipping blank lines.

    ``expected`` completes the hint in error messages: ``each line must be <expected>``.
    """
    for number, raw in iter_lines(path):
        yield number, parse_line(f"{path}:{number}", raw, expected)


def read_jsonl(path: PathLike, expected: str = "a JSON object") -> list[dict[str, Any]]:
    """All objects of a (small) JSON Lines file, in order; errors as :func:`iter_jsonl`."""
    return [row for _, row in iter_jsonl(path, expected)]


def write_jsonl(path: PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write ``rows`` as JSON Lines, atomically; return the number of rows written.

    UTF-8 without ASCII escaping; NaN or infinity is refused (they are not JSON). A ``.gz``
    suffix writes gzip with a fixed timestamp, so equal rows give byte-identical files. If
    iterating ``rows`` raises, nothing is written.
    """
    path = Path(path)
    count = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        handle: IO[bytes] = raw
        if path.name.endswith(".gz"):
            # The header records the final name, not the temporary one, and no timestamp.
            handle = gzip.GzipFile(path.name[:-3], "wb", 6, fileobj=raw, mtime=0)
        with handle:
            for row in rows:
                handle.write(_encode_row(row))
                count += 1
    return count


def _encode_row(row: Mapping[str, Any]) -> bytes:
    """One JSON line; strings holding lone surrogates (read from ``\\udXXX`` escapes) are escaped."""
    line = json.dumps(row, ensure_ascii=False, allow_nan=False)
    try:
        return line.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(row, allow_nan=False).encode("ascii") + b"\n"


# Field checks shared by the corpus, query, qrels and ranking readers.


def field(row: Mapping[str, Any], key: str, where: str, expected: str) -> Any:
    """``row[key]``, or an error ``missing field "key"``."""
    try:
        return row[key]
    except KeyError:
        raise located_error(where, f'missing field "{key}"', expected) from None


def as_id(value: Any, key: str, where: str, expected: str) -> str:
    """An id field normalised to ``str``: strings kept, integers written in decimal."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    message = f'field "{key}" must be a string or an integer, got {describe(value)}'
    raise located_error(where, message, expected)


def as_text(value: Any, key: str, where: str, expected: str, *, allow_empty: bool = True) -> str:
    """A string field; with ``allow_empty=False`` an empty string is an error too."""
    if not isinstance(value, str):
        message = f'field "{key}" must be a string, got {describe(value)}'
        raise located_error(where, message, expected)
    if not value and not allow_empty:
        raise located_error(where, f'field "{key}" is empty', expected)
    return value


def as_list(value: Any, key: str, where: str, expected: str) -> list[Any]:
    """A list field."""
    if not isinstance(value, list):
        message = f'field "{key}" must be a list, got {describe(value)}'
        raise located_error(where, message, expected)
    return value


def as_scores(value: Any, key: str, where: str, expected: str) -> list[float]:
    """A list of finite numbers, as floats."""
    scores = []
    for index, score in enumerate(as_list(value, key, where, expected)):
        if isinstance(score, bool) or not isinstance(score, int | float):
            message = f'"{key}"[{index}] must be a number, got {describe(score)}'
            raise located_error(where, message, expected)
        if not math.isfinite(score):
            raise located_error(where, f'"{key}"[{index}] is {score!r}', "scores must be finite")
        scores.append(float(score))
    return scores


def as_ids(value: Any, key: str, where: str, expected: str) -> list[str]:
    """A list of ids (strings or integers), normalised to strings."""
    return [
        as_id(item, f"{key}[{index}]", where, expected)
        for index, item in enumerate(as_list(value, key, where, expected))
    ]
