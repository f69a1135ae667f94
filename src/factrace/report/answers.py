"""``ask`` and ``explain`` in the terminal, with ``rich``.

An answer: the prompt, the model's completion (the traced tokens underlined), which characters
were traced and why, where R_eval came from, then the proponents — score, passage id, and the passage tokens that raise the score most
— and the opponents. An explanation: the score, then the passage and the query with each token
shaded by its contribution (green raises the score, red lowers it; the contributions of each sum
to the score).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Tokens shown inline per explained proponent.
INLINE_TOKENS = 3


def _shade(value: float, scale: float) -> str:
    """A background from none (0) to full green (positive) or red (negative)."""
    x = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    level = int(round(40 + 180 * x))
    if x < 0.02:
        return ""
    return f"on rgb({0 if value > 0 else level},{level if value > 0 else 0},0)"


def shaded(tokens: Sequence[dict]) -> Text:
    """Tokens as one text, each shaded by its contribution relative to the largest one."""
    scale = max((abs(t["contribution"]) for t in tokens), default=0.0)
    text = Text()
    for t in tokens:
        text.append(t["token"], style=_shade(t["contribution"], scale))
    return text


def _inline(tokens: Sequence[dict] | None) -> str:
    if not tokens:
        return ""
    best = sorted(tokens, key=lambda t: t["contribution"], reverse=True)[:INLINE_TOKENS]
    return "  ".join(f"{t['token']!r} {t['contribution']:+.3f}" for t in best)


def traced_line(answer) -> str:
    """Which characters of the completion were traced, and why."""
    if answer.span is None:
        why = " (the completion is blank: it holds no answer)" if answer.traced != "whole" else ""
        return f"traced: the whole completion{why}"
    a, b = answer.span
    chars = f"characters {a}:{b} {answer.completion[a:b]!r}"
    if answer.traced == "answer":
        return (f"traced: the answer, {chars} (up to the first sentence end or line break; "
                "--span whole traces all of it)")
    return f"traced: {chars} of the completion (--span)"


def print_answer(answer, console: Console | None = None) -> None:
    """One :class:`~factrace.run.ask.Answer`."""
    console = console or Console()
    head = Text()
    head.append(f"{answer.id}  ", style="bold")
    head.append(answer.prompt, style="dim")
    for t in answer.completion_tokens:
        head.append(t["token"], style="bold underline" if t["traced"] else "bold")
    console.print(head)
    console.print(Text(traced_line(answer), style="dim"))
    whitening = answer.metadata.get("whitening", {})
    console.print(Text(f"R_eval: {whitening.get('r_eval', '?')}", style="dim"))
    r = answer.ranking
    table = Table(title="proponents", title_justify="left", show_edge=False)
    for name, justify in (("#", "right"), ("score", "right"), ("passage", "left"),
                          ("tokens that raise the score most", "left")):
        table.add_column(name, justify=justify)
    for n, (doc, score) in enumerate(zip(r.doc_ids, r.scores, strict=True), 1):
        table.add_row(str(n), f"{score:+.4f}", doc, _inline(answer.proponent_tokens.get(doc)))
    console.print(table)
    if r.opponent_ids:
        table = Table(title="opponents", title_justify="left", show_edge=False)
        for name, justify in (("#", "right"), ("score", "right"), ("passage", "left")):
            table.add_column(name, justify=justify)
        for n, (doc, score) in enumerate(zip(r.opponent_ids, r.opponent_scores, strict=True), 1):
            table.add_row(str(n), f"{score:+.4f}", doc)
        console.print(table)
    console.print()


def print_explanation(result: dict, console: Console | None = None) -> None:
    """The dict :meth:`~factrace.run.tracer.Tracer.explain` returns."""
    console = console or Console()
    console.print(Text(f"query {result['query_id']} · passage {result['doc_id']} · score "
                       f"{result['score']:+.4f}", style="bold"))
    for title, key in (("passage", "passage_tokens"), ("query", "query_tokens")):
        tokens = result[key]
        console.print(Text(f"{title} tokens (each contribution is its loss term's share; they "
                           f"sum to {sum(t['contribution'] for t in tokens):+.4f})", style="dim"))
        console.print(shaded(tokens))
        best = sorted(tokens, key=lambda t: t["contribution"])
        if best:
            most = best[-1]
            least = best[0]
            console.print(Text(f"  most {most['token']!r} {most['contribution']:+.4f}, least "
                               f"{least['token']!r} {least['contribution']:+.4f}", style="dim"))
    console.print(Text("green raises the score, red lowers it", style="dim"))
