"""Public names of a package imported when first used (PEP 562).

``import factrace`` and the command line stay cheap this way: PyTorch, transformers, FAISS and
the rest load only when a name that needs them is used, or a command that needs them runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(namespace: dict[str, Any], exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for a package's ``namespace`` (its ``globals()``):
    ``exports`` maps each public name to the module defining it (``"module:name"`` where the
    module calls it otherwise); the value is imported on first use and kept."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        module, _, original = exports[name].partition(":")
        value = getattr(importlib.import_module(module), original or name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
