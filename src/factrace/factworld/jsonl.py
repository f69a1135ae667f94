"""Read JSON-lines files with errors that name the file, the line and what was expected."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from factrace.errors import FactraceError


def read_jsonl(path: str | Path, required: Sequence[str] = ()) -> Iterator[dict]:
    """Yield the objects of a JSONL file (blank lines skipped), checking ``required`` keys."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FactraceError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise FactraceError(f"{path}:{number}: expected a JSON object")
            missing = [key for key in required if key not in row]
            if missing:
                raise FactraceError(
                    f"{path}:{number}: missing field(s) {', '.join(missing)}; "
                    f"expected {', '.join(required)}"
                )
            yield row
