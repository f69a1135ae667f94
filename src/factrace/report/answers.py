"""``ask`` and ``explain`` in the terminal, with ``rich``.

An answer: the prompt and the model's completion (the traced tokens underlined), which characters
were traced and why, where R_eval came from, then the proponents — score, passage id, a
one-line snippet of the passage (centred on its token of largest contribution, the tokens that
raise the score most highlighted, when it was explained) and those tokens with their
contributions — and the opponents with their snippets. An explanation: the score, then the
passage and the query with each token shaded by its contribution (green raises the score, red
lowers it; the contributions of each sum to the score).

Without a terminal (output piped to a file, or a terminal without styles), what styles show is
marked in the text: ``[[...]]`` around the traced tokens of a completion, ``[+...]`` around
tokens that raise the score and ``[-...]`` around tokens that lower it (in an explanation, those
whose contribution is at least :data:`MARK_SHARE` of the largest in size; in a snippet, the
highlighted ones). Whitespace a marked run starts with stays outside its brackets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Tokens shown inline per explained proponent.
INLINE_TOKENS = 3
# Longest snippet of a passage, in characters (ellipses included).
SNIPPET_CHARS = 80
# A snippet cut inside a word starts or ends at a space within this many characters instead.
WORD_SNAP = 15
# Share of the largest contribution (in size) from which a token is marked in plain text.
MARK_SHARE = 0.25
# How each kind of mark looks in plain text, and with styles.
PLAIN_MARKS = {"traced": ("[[", "]]"), "+": ("[+", "]"), "-": ("[-", "]")}
MARK_STYLES = {"traced": "bold underline", "+": "bold on rgb(0,140,0)",
               "-": "bold on rgb(160,0,0)"}


def plain(console: Console) -> bool:
    """Whether ``console`` shows no styles (not a terminal, or one without colours): then marks
    go into the text."""
    return console.color_system is None


def marked(text: str, marks: Sequence[tuple[int, int, str]], as_plain: bool,
           style: str = "") -> Text:
    """``text`` with the character ranges ``(start, end, kind)`` marked (kinds of
    :data:`PLAIN_MARKS`; ranges in order, not overlapping), the whitespace a range starts with
    left out: styled, or bracketed in plain text."""
    out, at = Text(), 0
    for start, end, kind in marks:
        while start < end and text[start].isspace():
            start += 1
        if start >= end:
            continue
        out.append(text[at:start], style=style)
        if as_plain:
            opening, closing = PLAIN_MARKS[kind]
            out.append(opening + text[start:end] + closing, style=style)
        else:
            out.append(text[start:end], style=f"{style} {MARK_STYLES[kind]}".strip())
        at = end
    out.append(text[at:], style=style)
    return out


def _runs(kinds: Sequence[str | None], offsets: Sequence[tuple[int, int]]
          ) -> list[tuple[int, int, str]]:
    """Consecutive tokens of one kind (``None``: unmarked) as one range each."""
    runs: list[tuple[int, int, str]] = []
    for kind, (start, end) in zip(kinds, offsets, strict=True):
        if kind is None:
            continue
        if runs and runs[-1][2] == kind and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end, kind)
        else:
            runs.append((start, end, kind))
    return runs


def _offsets(pieces: Sequence[str], start: int = 0) -> list[tuple[int, int]]:
    out = []
    for piece in pieces:
        out.append((start, start + len(piece)))
        start += len(piece)
    return out


# snippets ----------------------------------------------------------------------------------------
def snippet(text: str, tokens: Sequence[dict] | None = None, width: int = SNIPPET_CHARS,
            top: int = INLINE_TOKENS) -> tuple[str, list[tuple[int, int, str]]]:
    """A one-line excerpt of a passage's ``text`` of at most ``width`` characters (line breaks
    as spaces, ``…`` where it is cut) and the ranges in it to mark.

    ``tokens``: the passage's loss terms in order (``{"token", "contribution"}``, as an
    explanation gives them; their text ends the passage's). Then the excerpt is centred on the
    token of largest contribution, and the ``top`` tokens that raise the score most (those of
    them with a positive contribution) are marked ``"+"``. Otherwise it is the passage's
    beginning.
    """
    flat = re.sub(r"\s", " ", text)  # one line, each character where it was
    best: list[tuple[int, int]] = []
    if tokens:
        pieces = [t["token"] for t in tokens]
        suffix = "".join(pieces)
        if suffix and text.endswith(suffix):
            offsets = _offsets(pieces, len(text) - len(suffix))
            order = sorted(range(len(tokens)), key=lambda i: tokens[i]["contribution"],
                           reverse=True)[:top]
            best = [(offsets[i][0] + len(pieces[i]) - len(pieces[i].lstrip()), offsets[i][1])
                    for i in order if tokens[i]["contribution"] > 0]
    width = max(width, 2 * WORD_SNAP)
    lo = 0
    if best and len(flat) > width:
        centre = (best[0][0] + best[0][1]) // 2
        lo = max(0, min(centre - width // 2, len(flat) - width))
    hi = min(len(flat), lo + width)
    if lo > 0:  # "…" and then a whole word
        lo += 1
        space = flat.find(" ", lo, lo + WORD_SNAP)
        lo = space + 1 if space >= 0 else lo
    if hi < len(flat):
        hi -= 1
        space = flat.rfind(" ", max(lo, hi - WORD_SNAP), hi)
        hi = space if space > lo else hi
    left, right = ("…" if lo > 0 else ""), ("…" if hi < len(flat) else "")
    shift = len(left) - lo
    shown = sorted((a + shift, b + shift) for a, b in best if a >= lo and b <= hi)
    return left + flat[lo:hi] + right, _runs(["+"] * len(shown), shown)


def _inline(tokens: Sequence[dict] | None) -> str:
    if not tokens:
        return ""
    best = sorted(tokens, key=lambda t: t["contribution"], reverse=True)[:INLINE_TOKENS]
    return "  ".join(f"{t['token']!r} {t['contribution']:+.3f}" for t in best)


# answers -----------------------------------------------------------------------------------------
def traced_line(answer) -> str:
    """Which characters of the completion were traced, and why."""
    if answer.span is None:
        why = " (the completion is blank: it holds no answer)" if answer.traced != "whole" else ""
        return f"traced: the whole completion{why}"
    a, b = answer.span
    chars = f"characters {a}:{b} {answer.completion[a:b]!r}"
    if answer.traced == "answer":
        return f"traced: the answer, {chars} (--span whole: all of it)"
    return f"traced: {chars} of the completion (--span)"


def _passages(title: str, ids, scores, answer, console: Console, explained: bool) -> Table:
    """A table of ranked passages: rank, score, id and a snippet (with the explained
    proponents' best tokens and their contributions under it)."""
    table = Table(title=title, title_justify="left", show_edge=False)
    # rank, score and id keep their width (the text is cut instead), at least their headings'
    widths = (len(str(len(ids))), len("+0.0000"), max([len("passage"), *map(len, ids)]))
    for name, justify, width in zip(("#", "score", "passage"), ("right", "right", "left"),
                                    widths, strict=True):
        table.add_column(name, justify=justify, no_wrap=True, min_width=width)
    table.add_column("text" + (" · tokens that raise the score most" if explained else ""),
                     no_wrap=True, overflow="ellipsis")
    as_plain = plain(console)
    used = sum(widths) + 4 * 2 + 3  # a space either side of each column, a rule between two
    marks = sum(map(len, PLAIN_MARKS["+"])) * INLINE_TOKENS if as_plain else 0  # brackets
    width = min(SNIPPET_CHARS, max(console.width - used - marks, 30))
    for n, (doc, score) in enumerate(zip(ids, scores, strict=True), 1):
        tokens = answer.proponent_tokens.get(doc) if explained else None
        if doc in answer.texts:
            text = marked(*snippet(answer.texts[doc], tokens, width), as_plain)
        else:
            text = Text("(text not available)", style="dim")
        if tokens:
            inline = _inline(tokens)
            text.append("\n")
            text.append(inline if len(inline) <= width else inline[:width - 1] + "…",
                        style="dim")
        table.add_row(str(n), f"{score:+.4f}", doc, text)
    return table


def print_answer(answer, console: Console | None = None) -> None:
    """One :class:`~factrace.run.ask.Answer`."""
    console = console or Console()
    tokens = answer.completion_tokens
    offsets = [(t["start"], t["end"]) for t in tokens]
    head = Text()
    head.append(f"{answer.id}  ", style="bold")
    head.append(answer.prompt, style="dim")
    head.append_text(marked(answer.completion,
                            _runs(["traced" if t["traced"] else None for t in tokens], offsets),
                            plain(console), style="bold"))
    console.print(head)
    console.print(Text(traced_line(answer), style="dim"))
    whitening = answer.metadata.get("whitening", {})
    console.print(Text(f"R_eval: {whitening.get('r_eval', '?')}", style="dim"))
    r = answer.ranking
    console.print(_passages("proponents", r.doc_ids, r.scores, answer, console, True))
    if r.opponent_ids:
        console.print(_passages("opponents", r.opponent_ids, r.opponent_scores, answer, console,
                                False))
    console.print()


# explanations ------------------------------------------------------------------------------------
def _shade(value: float, scale: float) -> str:
    """A background from none (0) to full green (positive) or red (negative)."""
    x = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    level = int(round(40 + 180 * x))
    if x < 0.02:
        return ""
    return f"on rgb({0 if value > 0 else level},{level if value > 0 else 0},0)"


def shaded(tokens: Sequence[dict], as_plain: bool = False) -> Text:
    """Tokens as one text, each shaded by its contribution relative to the largest one; in
    plain text, those of at least :data:`MARK_SHARE` of it marked ``[+...]`` or ``[-...]``."""
    scale = max((abs(t["contribution"]) for t in tokens), default=0.0)
    if as_plain:
        pieces = [t["token"] for t in tokens]
        kinds = [("+" if t["contribution"] > 0 else "-")
                 if scale > 0 and abs(t["contribution"]) >= MARK_SHARE * scale else None
                 for t in tokens]
        return marked("".join(pieces), _runs(kinds, _offsets(pieces)), True)
    text = Text()
    for t in tokens:
        text.append(t["token"], style=_shade(t["contribution"], scale))
    return text


def print_explanation(result: dict, console: Console | None = None) -> None:
    """The dict :meth:`~factrace.run.tracer.Tracer.explain` returns."""
    console = console or Console()
    as_plain = plain(console)
    console.print(Text(f"query {result['query_id']} · passage {result['doc_id']} · score "
                       f"{result['score']:+.4f}", style="bold"))
    for title, key in (("passage", "passage_tokens"), ("query", "query_tokens")):
        tokens = result[key]
        console.print(Text(f"{title} tokens (each contribution is its loss term's share; they "
                           f"sum to {sum(t['contribution'] for t in tokens):+.4f})", style="dim"))
        console.print(shaded(tokens, as_plain))
        best = sorted(tokens, key=lambda t: t["contribution"])
        if best:
            most = best[-1]
            least = best[0]
            console.print(Text(f"  most {most['token']!r} {most['contribution']:+.4f}, least "
                               f"{least['token']!r} {least['contribution']:+.4f}", style="dim"))
    if as_plain:
        console.print(f"[+...] raises the score, [-...] lowers it ({MARK_SHARE:.0%} of the "
                      "largest or more)", markup=False, highlight=False)
    else:
        console.print(Text("green raises the score, red lowers it", style="dim"))
