"""The records of DESIGN.md §3: training passages and (prompt, target) queries.

Ids are kept as strings everywhere inside factrace (an integer id ``7`` in a corpus becomes
``"7"``), so corpora, qrels and rankings compare ids the same way whatever their files used.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Passage:
    """One training example: the whole text is trained on."""

    id: str
    text: str


@dataclass(frozen=True)
class Query:
    """A fact asked as a prompt; the loss is taken on ``target`` only (it keeps its leading space)."""

    id: str
    prompt: str
    target: str
