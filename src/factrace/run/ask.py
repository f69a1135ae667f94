"""``ask``: the store's model answers a prompt, and the answer is traced.

The model generates a completion (greedy unless a temperature is given; it stops at EOS or after
``max_new_tokens``). The query is prompt ⊕ completion — the token ids the model generated, not
a re-tokenisation of their text — with the loss on the completion's tokens, or on those
overlapping a character span of the completion. :meth:`~factrace.run.tracer.Tracer.ask` traces
it; this module holds the generation, the span and the record of an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from factrace.data.io import Ranking
from factrace.data.jsonl import as_id, as_text, iter_jsonl
from factrace.data.jsonl import field as required
from factrace.data.tokenize import TokenizedExample
from factrace.errors import FactraceError
from factrace.run.explain import token_pieces

PROMPT_OBJECT = 'a JSON object with a non-empty "prompt" (and optionally "id")'


@dataclass
class Answer:
    """One prompt, the model's completion and what the completion was traced to.

    ``query``: prompt ⊕ completion with the loss mask on the traced tokens;
    ``completion_tokens``: ``[{"token", "start", "end", "traced"}]`` (characters of the
    completion); ``proponent_tokens``: per proponent explained, its passage's loss terms
    ``[{"token", "contribution", "position"}]`` (see :mod:`factrace.run.explain`).
    """

    id: str
    prompt: str
    completion: str
    query: TokenizedExample
    completion_tokens: list[dict]
    span: tuple[int, int] | None
    ranking: Ranking | None = None
    proponent_tokens: dict[str, list[dict]] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


def top_contributions(tokens: list[dict], n: int) -> list[dict]:
    """The ``n`` tokens of largest contribution, largest first (``{"token", "contribution"}``)."""
    best = sorted(tokens, key=lambda t: t["contribution"], reverse=True)[:n]
    return [{"token": t["token"], "contribution": t["contribution"]} for t in best]


# options --------------------------------------------------------------------------------------
def parse_span(text: str | None) -> tuple[int | None, int | None] | None:
    """``"START:END"`` (characters of the completion, END exclusive; either may be left out)
    → ``(start, end)``, ``None`` for the whole completion."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
    if not m:
        raise FactraceError(f"--span {text!r}: expected START:END, character offsets of the "
                            "completion (e.g. 0:12, or 5: for the rest)")
    start, end = (int(g) if g else None for g in m.groups())
    return start, end


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


def completion_query(tokenizer, prompt: list[int], completion: list[int], query_id: str,
                     span: tuple[int | None, int | None] | None
                     ) -> tuple[str, list[dict], TokenizedExample, tuple[int, int] | None]:
    """The completion's text and tokens, and the query prompt ⊕ completion with the loss on
    the completion tokens overlapping ``span`` (all of them without one)."""
    if not completion:
        raise FactraceError(f"prompt {query_id!r}: the model ended its completion at once (EOS "
                            "as its first token); there is nothing to trace")
    pieces = token_pieces(tokenizer, prompt + completion)[len(prompt):]
    text = "".join(pieces)
    tokens, start = [], 0
    for piece in pieces:
        tokens.append({"token": piece, "start": start, "end": start + len(piece)})
        start += len(piece)
    chosen = None
    if span is not None:
        a = 0 if span[0] is None else span[0]
        b = len(text) if span[1] is None else span[1]
        if not 0 <= a < b <= len(text):
            raise FactraceError(f"prompt {query_id!r}: span {a}:{b} is outside the completion, "
                                f"which has {len(text)} characters ({text!r}); a span is "
                                f"START:END with 0 <= START < END <= {len(text)}")
        chosen = (a, b)
    for t in tokens:
        # a token that ends inside a character (no text of its own) goes with the next one
        end = t["end"] if t["end"] > t["start"] else t["start"] + 1
        t["traced"] = chosen is None or (t["start"] < chosen[1] and end > chosen[0])
    mask = (0,) * len(prompt) + tuple(int(t["traced"]) for t in tokens)
    return text, tokens, TokenizedExample(query_id, tuple(prompt + completion), mask), chosen
