"""``ask`` and ``explain`` in the terminal: snippets of the passages, and what styles show marked
in the text when there is no terminal."""

import io
import re

import pytest
from rich.console import Console

from factrace.data.io import Ranking
from factrace.data.tokenize import TokenizedExample
from factrace.report.answers import (
    MARK_SHARE,
    SNIPPET_CHARS,
    print_answer,
    print_explanation,
    snippet,
)
from factrace.run.ask import Answer

LONG = ("Fakia is a small country in the north, between the hills of Orla and the cold sea. The "
        "capital of Fakia is Nololim, which signed the treaty of Orvane in 1820 and kept its "
        "walls until the war.")
# the passage's loss terms: every token but the first, as an explanation lists them
WORDS = re.findall(r"\s*\S+", LONG)
CONTRIBUTIONS = {" Nololim,": 0.2, " capital": 0.05, " Fakia": 0.08, " signed": -0.03}
TOKENS = [{"token": w, "contribution": CONTRIBUTIONS.get(w, 0.001), "position": n}
          for n, w in enumerate(WORDS[1:], 1)]


def _answer(span=(1, 9), traced="answer", texts=None):
    completion = [(" Nololim", True), (".", True), (" It", False), (" signed", False)]
    tokens, start = [], 0
    for token, on in completion:
        tokens.append({"token": token, "start": start, "end": start + len(token),
                       "traced": on or span is None})
        start += len(token)
    return Answer("ask-1", "The capital of Fakia is", " Nololim. It signed",
                  TokenizedExample("ask-1", (1,), (0,)), tokens, span, traced,
                  ranking=Ranking("ask-1", ["d12", "d7#1", "d5"], [0.43, 0.21, 0.1], ["d99"],
                                  [-0.3]),
                  proponent_tokens={"d12": TOKENS},
                  texts=texts if texts is not None else {
                      "d12": LONG, "d7#1": "Nololim is a city.\nIt lies on a river.",
                      "d99": "Orvane is far away."},
                  metadata={"whitening": {"r_eval": "task default"}})


def _printed(show, item, terminal, width=160):
    out = io.StringIO()
    show(item, Console(file=out, width=width, force_terminal=terminal))
    return out.getvalue()


def test_an_answer_piped_marks_the_traced_span_and_the_best_tokens_in_the_text():
    printed = _printed(print_answer, _answer(), terminal=False)
    assert "\x1b[" not in printed
    assert "ask-1  The capital of Fakia is [[Nololim.]] It signed" in printed
    assert "traced: the answer, characters 1:9 'Nololim.'" in printed
    lines = printed.splitlines()
    (best,) = [line for line in lines if " d12 " in line]
    # a snippet past the passage's first 80 characters, around its strongest token, marked
    assert "…" in best and "[+Nololim,]" in best and "[+Fakia]" in best
    assert LONG[:20] not in best
    assert "' Nololim,' +0.200" in printed  # the numbers under it
    (window,) = [line for line in lines if " d7#1 " in line]
    assert "Nololim is a city. It lies on a river." in window  # one line, from the start
    (missing,) = [line for line in lines if " d5 " in line]
    assert "(text not available)" in missing
    (opponent,) = [line for line in lines if " d99 " in line]
    assert "Orvane is far away." in opponent and "[+" not in opponent


def test_a_narrow_output_cuts_the_text_not_the_rank_score_or_id():
    ids = [f"passage-{n:04d}" for n in range(10)]
    a = _answer()
    strong = {" Nololim,": 0.5, " capital": 0.4, " treaty": 0.3}  # a long list under the snippet
    tokens = [{**t, "contribution": strong.get(t["token"], 0.001)} for t in TOKENS]
    a.ranking = Ranking("ask-1", ids, [0.1234 - n / 100 for n in range(10)], [], [])
    a.proponent_tokens = {ids[0]: tokens}
    a.texts = dict.fromkeys(ids, LONG)
    printed = _printed(print_answer, a, terminal=False, width=80)
    for n, doc in enumerate(ids, 1):
        (line,) = [line for line in printed.splitlines() if f" {doc} " in line]
        cells = f"{n} │ {0.1234 - (n - 1) / 100:+.4f} │ {doc} │ "
        assert line.lstrip().startswith(cells), line
        assert len(line.rstrip()) <= 80


def test_an_answer_in_a_terminal_is_styled_not_bracketed():
    printed = _printed(print_answer, _answer(), terminal=True)
    assert "[[" not in printed and "[+" not in printed
    assert "\x1b[1;4mNololim.\x1b[0m" in printed  # the traced span underlined (and bold)
    assert re.search(r"\x1b\[[0-9;]*42mNololim,", printed)  # the best token on green


@pytest.mark.parametrize("span, traced, line", [
    (None, "whole", "traced: the whole completion\n"),
    (None, "whole, blank answer", "traced: the whole completion (the completion is blank"),
    ((4, 9), "span", "traced: characters 4:9 'olim.' of the completion (--span)"),
])
def test_the_output_says_what_was_traced(span, traced, line):
    printed = _printed(print_answer, _answer(span, traced), terminal=False)
    assert line in printed
    if span is None:
        assert "[[Nololim. It signed]]" in printed


@pytest.mark.parametrize("width", [30, 50, SNIPPET_CHARS])
def test_a_snippet_is_one_line_of_whole_words_centred_on_the_strongest_token(width):
    passage = LONG.replace(" capital", "\ncapital")
    tokens = [{**t, "token": t["token"].replace(" capital", "\ncapital")} for t in TOKENS]
    text, marks = snippet(passage, tokens, width)
    assert len(text) <= width and "\n" not in text
    assert text.startswith("…") and text.endswith("…")
    assert f" {text.strip('…')} " in f" {LONG} "  # whole words
    shown = [text[a:b] for a, b, kind in marks]
    assert "Nololim," in shown and all(kind == "+" for *_, kind in marks)
    assert set(shown) <= {"Nololim,", "Fakia", "capital"}
    short, marks = snippet("Nololim is a city.", None, width)
    assert short == "Nololim is a city." and marks == []


def test_a_snippet_of_a_passage_not_explained_is_its_beginning():
    text, marks = snippet(LONG, None, 40)
    assert text.startswith(LONG[:20]) and text.endswith("…") and len(text) <= 40
    assert marks == []


def _explanation():
    passage = [{"token": " Tesk", "contribution": 0.4, "position": 1},
               {"token": " was", "contribution": 0.05, "position": 2},
               {"token": " far", "contribution": -0.2, "position": 3},
               {"token": " away", "contribution": -0.15, "position": 4},
               {"token": ".", "contribution": 0.09, "position": 5}]
    return {"query_id": "q2", "doc_id": "d5", "score": 0.2, "passage_tokens": passage,
            "query_tokens": [{"token": " Tesk", "contribution": 0.2, "position": 5}]}


def test_an_explanation_piped_marks_the_strong_tokens_by_sign():
    printed = _printed(print_explanation, _explanation(), terminal=False)
    # 0.4 and -0.2, -0.15 reach a quarter of the largest; 0.05 and 0.09 do not
    assert " [+Tesk] was [-far away]." in printed
    assert MARK_SHARE == 0.25 and "[+...] raises the score, [-...] lowers it" in printed
    terminal = _printed(print_explanation, _explanation(), terminal=True)
    assert "[+" not in terminal and "green raises the score" in terminal
