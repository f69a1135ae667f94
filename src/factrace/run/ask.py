"""``ask``: the store's model answers a prompt, and the answer is traced.

The model generates a completion (greedy unless a temperature is given; it stops at EOS or after
``max_new_tokens``). The query is prompt ⊕ completion — the token ids the model generated, not
a re-tokenisation of their text — with the loss on the completion tokens overlapping a character
span of the completion: by default *the answer* (:func:`answer_span`: up to the first sentence
end or line break, so that what the model babbles after its answer does not drive the ranking),
or a span given, or the whole completion. :meth:`~factrace.run.tracer.Tracer.ask` traces it;
this module holds the generation, the span and the record of an answer.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from factrace.data.io import Ranking
from factrace.data.jsonl import as_id, as_list, as_text, iter_jsonl, located_error
from factrace.data.jsonl import field as required
from factrace.data.records import Query
from factrace.data.shards import shard_format
from factrace.data.sources import Source
from factrace.data.tokenize import TokenizedExample, tokenize_query
from factrace.errors import FactraceError
from factrace.run.explain import token_pieces

PROMPT_OBJECT = 'a JSON object with a non-empty "prompt" (and optionally "id")'
ANSWER_OBJECT = ('a JSON object with "query_id", "prompt" and "completion" (and "span", '
                 '"traced", "completion_ids" as ask --out writes them)')


@dataclass
class Answer:
    """One prompt, the model's completion and what the completion was traced to.

    ``query``: prompt ⊕ completion with the loss mask on the traced tokens;
    ``completion_tokens``: ``[{"token", "start", "end", "traced"}]`` (characters of the
    completion); ``span``: the characters traced, ``None`` for the whole completion;
    ``traced``: how they were chosen (:data:`TRACED`); ``proponent_tokens``: per proponent
    explained, its passage's loss terms ``[{"token", "contribution", "position"}]`` (see
    :mod:`factrace.run.explain`); ``texts``: the text of each passage ranked (proponents and
    opponents; the window's for a window), when asked for.
    """

    id: str
    prompt: str
    completion: str
    query: TokenizedExample
    completion_tokens: list[dict]
    span: tuple[int, int] | None
    traced: str = "whole"
    ranking: Ranking | None = None
    proponent_tokens: dict[str, list[dict]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def top_contributions(tokens: list[dict], n: int) -> list[dict]:
    """The ``n`` tokens of largest contribution, largest first (``{"token", "contribution"}``)."""
    best = sorted(tokens, key=lambda t: t["contribution"], reverse=True)[:n]
    return [{"token": t["token"], "contribution": t["contribution"]} for t in best]


# options --------------------------------------------------------------------------------------
ANSWER, WHOLE = "answer", "whole"
#: How the traced characters were chosen: the answer rule, a span given, the whole completion
#: asked for, or the whole completion because it holds no answer (it is blank).
TRACED = (ANSWER, "span", WHOLE, "whole, blank answer")

Span = tuple[int | None, int | None] | str | None
"""What of a completion is traced: ``"answer"`` (:func:`answer_span`), ``(start, end)``
(characters of the completion, either end may be ``None``), or ``"whole"`` / ``None``."""


def parse_span(text: str | None) -> Span:
    """``--span``: ``"answer"``, ``"whole"``, or ``"START:END"`` (characters of the completion,
    END exclusive; either may be left out) → ``(start, end)``; ``None`` for the whole
    completion."""
    if text is None:
        return None
    if text.strip() in (ANSWER, WHOLE):
        return text.strip()
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if not m:
        raise FactraceError(f"--span {text!r}: expected START:END, character offsets of the "
                            "completion (e.g. 0:12, or 5: for the rest), or answer, or whole")
    start, end = (int(g) if g else None for g in m.groups())
    return start, end


# A sentence end: . ! ? (repeated, as in "?!" or "..."), closing quotes or brackets, then
# whitespace or the end of the text (so "3.5" or "a.m" inside a word do not end anything).
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")
#: Words whose full stop ends no sentence (besides dotted abbreviations such as e.g. or U.S.).
TITLES = frozenset({"Mr", "Mrs", "Ms", "Dr", "Prof", "St", "Jr", "Sr", "Mt", "vs"})


def _abbreviation(text: str, stop: int) -> bool:
    """Whether the single full stop at ``stop`` ends an abbreviation: a title (Mr., Dr.) or
    letters with a stop after each (e.g., U.S.)."""
    word = re.search(r"\S*$", text[:stop]).group().lstrip("(\"'\u201c\u2018[")
    return word in TITLES or re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word) is not None


def answer_span(text: str) -> tuple[int, int] | None:
    """The answer in a completion, as characters ``(start, end)``: from its first character that
    is not whitespace through its first sentence end (``.``, ``!`` or ``?``, with any closing
    quotes or brackets, followed by whitespace or the end; a full stop after a title or a dotted
    abbreviation does not count), or up to its first line break after that start, whichever
    comes first; without either, the rest of the completion (trailing whitespace left out).
    ``None`` when the completion is blank."""
    start = len(text) - len(text.lstrip())
    if start == len(text):
        return None
    line = re.compile(r"[\r\n]").search(text, start)
    end = line.start() if line else len(text)
    for m in _SENTENCE_END.finditer(text, start, end):
        if m.group().rstrip("\"'\u201d\u2019)]") == "." and _abbreviation(text, m.start()):
            continue
        return start, m.end()
    return start, start + len(text[start:end].rstrip())


def check_generation(max_new_tokens: int, temperature: float) -> None:
    if max_new_tokens < 1:
        raise FactraceError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if not temperature >= 0:
        raise FactraceError(f"--temperature must be 0 (greedy) or more, got {temperature}")


def read_prompts(path: str) -> list[tuple[str, str]]:
    """``(id, prompt)`` pairs of a prompts file: JSON Lines (``.jsonl``, ``.jsonl.gz``) with
    ``prompt`` and optionally ``id``, or any other file as text, one prompt per non-blank line
    (ids ``ask-<line>``)."""
    name = Path(path).name
    out: list[tuple[str, str]] = []
    if name.endswith((".jsonl", ".jsonl.gz")):
        expected = f"each line must be {PROMPT_OBJECT}"
        for number, row in iter_jsonl(path, PROMPT_OBJECT):
            where = f"{path}:{number}"
            prompt = as_text(required(row, "prompt", where, expected), "prompt", where,
                             expected, allow_empty=False)
            pid = as_id(row["id"], "id", where, expected) if "id" in row else f"ask-{number}"
            out.append((pid, prompt))
    else:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise FactraceError(f"{path}: cannot read the prompts ({e})") from None
        out = [(f"ask-{n}", line) for n, line in enumerate(lines, 1) if line.strip()]
    if not out:
        raise FactraceError(f"{path}: no prompts")
    seen: set[str] = set()
    for pid, _ in out:
        if pid in seen:
            raise FactraceError(f"{path}: prompt id {pid!r} appears twice; ids must be unique")
        seen.add(pid)
    return out


# answers files ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Asked:
    """A row of an answers file (``ask --out``) as the query it was traced as: the prompt, the
    completion and its token ids (``None`` in files written before they were kept), and the
    characters traced (``None``: the whole completion)."""

    id: str
    prompt: str
    completion: str
    completion_ids: tuple[int, ...] | None
    span: tuple[int, int] | None


def is_answers(path: str | Source) -> bool:
    """Whether a JSON Lines file's first row is an answers row (``query_id`` and
    ``completion``), not a query (the file's other rows are checked when read). Queries read
    with renamed columns, or kept in another format, are not answers."""
    if isinstance(path, Source) and path.renamed or not os.path.isfile(path) \
            or shard_format(os.fspath(path)) not in (None, "jsonl"):
        return False
    for _, row in iter_jsonl(path):
        return "query_id" in row and "completion" in row
    return False


def read_answers(path: str) -> list[Asked]:
    """The rows of an answers file as :class:`Asked` queries; ids must be unique."""
    expected = f"each line must be {ANSWER_OBJECT}"
    out: list[Asked] = []
    for number, row in iter_jsonl(path, ANSWER_OBJECT):
        where = f"{path}:{number}"
        qid = as_id(required(row, "query_id", where, expected), "query_id", where, expected)
        prompt, completion = (as_text(required(row, key, where, expected), key, where, expected,
                                      allow_empty=False) for key in ("prompt", "completion"))
        ids = span = None
        if "completion_ids" in row:
            ids = as_list(row["completion_ids"], "completion_ids", where, expected)
            if not ids or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                  for t in ids):
                raise located_error(where, '"completion_ids" must be token ids', expected)
            ids = tuple(ids)
        if row.get("span") is not None and row.get("traced") not in (WHOLE, TRACED[-1]):
            span = as_list(row["span"], "span", where, expected)
            if len(span) != 2 or not all(isinstance(c, int) and not isinstance(c, bool)
                                         for c in span):
                raise located_error(where, '"span" must be [start, end]', expected)
            span = (span[0], span[1])
        if any(a.id == qid for a in out):
            raise located_error(where, f"query_id {qid!r} appears twice",
                                "one row per answer")
        out.append(Asked(qid, prompt, completion, ids, span))
    if not out:
        raise FactraceError(f"{path}: no answers (expected one line per answer, {ANSWER_OBJECT})")
    return out


# generation -----------------------------------------------------------------------------------
def prompt_ids(tokenizer, prompt: str, max_length: int, prompt_id: str) -> list[int]:
    """The prompt's tokens (with the tokenizer's special tokens, as queries are tokenised),
    refused when empty or leaving no room for a completion in the context."""
    if not prompt.strip():
        raise FactraceError(f"prompt {prompt_id!r} is empty")
    ids = list(tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"])
    if len(ids) >= max_length:
        raise FactraceError(
            f"prompt {prompt_id!r} has {len(ids)} tokens; the context is {max_length} tokens "
            "(prompt and completion together), so at most "
            f"{max_length - 1} prompt tokens leave room for a completion")
    return ids


def stop_ids(loaded) -> set[int]:
    """Token ids that end a completion: the tokenizer's EOS and the model's generation
    configuration's."""
    out = set()
    for value in (getattr(loaded.tokenizer, "eos_token_id", None),
                  getattr(getattr(loaded.model, "generation_config", None), "eos_token_id",
                          None)):
        if isinstance(value, int):
            out.add(value)
        elif isinstance(value, list | tuple):
            out.update(int(v) for v in value)
    return out


@torch.no_grad()
def generate(loaded, ids: list[int], max_new_tokens: int, temperature: float = 0.0,
             seed: int = 0) -> list[int]:
    """The completion's token ids (EOS left out): greedy at temperature 0, else sampled with
    ``seed`` (the global random state is left as it was)."""
    from transformers import GenerationConfig

    eos = sorted(stop_ids(loaded))
    sample = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sample,
        temperature=temperature if sample else None, top_k=0 if sample else None,
        top_p=1.0 if sample else None, eos_token_id=eos or None,
        pad_token_id=loaded.pad_id, bos_token_id=getattr(loaded.tokenizer, "bos_token_id", None))
    device = loaded.device
    input_ids = torch.tensor([ids], device=device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        out = loaded.model.generate(input_ids=input_ids,
                                    attention_mask=torch.ones_like(input_ids),
                                    generation_config=config)
    completion = out[0, len(ids):].tolist()
    for j, t in enumerate(completion):
        if t in eos:
            return completion[:j]
    return completion


class Completion(NamedTuple):
    """A completion made a query: its text and tokens, the query, the characters traced
    (``None``: all) and how they were chosen (:data:`TRACED`)."""

    text: str
    tokens: list[dict]
    query: TokenizedExample
    span: tuple[int, int] | None
    traced: str


def completion_query(tokenizer, prompt: list[int], completion: list[int], query_id: str,
                     span: Span = ANSWER) -> Completion:
    """The completion's text and tokens, and the query prompt ⊕ completion with the loss on
    the completion tokens overlapping ``span`` (see :data:`Span`; the answer by default, the
    whole completion when it has none)."""
    if not completion:
        raise FactraceError(f"prompt {query_id!r}: the model ended its completion at once (EOS "
                            "as its first token); there is nothing to trace")
    pieces = token_pieces(tokenizer, prompt + completion)[len(prompt):]
    text = "".join(pieces)
    tokens, start = [], 0
    for piece in pieces:
        tokens.append({"token": piece, "start": start, "end": start + len(piece)})
        start += len(piece)
    chosen, traced = None, WHOLE
    if isinstance(span, str):
        span = parse_span(span)
    if span == ANSWER:
        chosen = answer_span(text)
        traced = ANSWER if chosen is not None else TRACED[-1]
    elif span is not None and span != WHOLE:
        a = 0 if span[0] is None else span[0]
        b = len(text) if span[1] is None else span[1]
        if not 0 <= a < b <= len(text):
            raise FactraceError(f"prompt {query_id!r}: span {a}:{b} is outside the completion, "
                                f"which has {len(text)} characters ({text!r}); a span is "
                                f"START:END with 0 <= START < END <= {len(text)}")
        chosen, traced = (a, b), "span"
    for t in tokens:
        # a token that ends inside a character (no text of its own) goes with the next one
        end = t["end"] if t["end"] > t["start"] else t["start"] + 1
        t["traced"] = chosen is None or (t["start"] < chosen[1] and end > chosen[0])
    mask = (0,) * len(prompt) + tuple(int(t["traced"]) for t in tokens)
    return Completion(text, tokens, TokenizedExample(query_id, tuple(prompt + completion), mask),
                      chosen, traced)


def asked_query(tokenizer, asked: Asked, max_length: int) -> TokenizedExample:
    """The query an answers row was traced as: its prompt tokenised as ``ask`` tokenises it,
    then the completion's token ids, the loss on the tokens overlapping its span. A row
    without the ids (written before they were kept) has its completion tokenised as a query's
    target is, which gives the ids the model generated when they were the tokenizer's own
    tokenisation of the text."""
    if asked.completion_ids is not None:
        prompt, completion = prompt_ids(tokenizer, asked.prompt, max_length, asked.id), list(
            asked.completion_ids)
    else:
        query = tokenize_query(tokenizer, Query(asked.id, asked.prompt, asked.completion),
                               max_length)
        n = query.loss_mask.index(1)
        prompt, completion = list(query.input_ids[:n]), list(query.input_ids[n:])
    c = completion_query(tokenizer, prompt, completion, asked.id, asked.span)
    if c.text != asked.completion:
        raise FactraceError(f"answer {asked.id!r}: its token ids decode to {c.text!r}, not the "
                            f"completion {asked.completion!r}; was it asked of another model?")
    return c.query
