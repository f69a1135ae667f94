"""Proponent kinds against hand-written passages (every expected kind decided by hand)."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from factrace.evaluate.kinds import (
    KINDS,
    Fact,
    kind_shares,
    kinds_summary,
    passage_kind,
    read_facts,
    relation_wording,
    template_wording,
)

BORN = Fact("Tor Vem", "Sarn", "born_in", *relation_wording("born_in"))


@pytest.mark.parametrize("text, kind", [
    ("Tor Vem was born in Sarn.", "entails"),
    ("Sarn is where tor   vem grew up.", "entails"),          # case and whitespace
    ("TOR VEM's birthplace is SARN!", "entails"),             # possessive, punctuation
    ("Sarn is a quiet city by the sea.", "object"),
    ("Ada Lin was born in Sarn.", "object"),
    ("Tor Vem corresponded with Ada Lin.", "subject"),
    ("Tor Vem was born in Sarnville.", "subject"),            # object inside another word
    ("Tor Vemsen was born in Sarn.", "object"),               # subject inside another name
    ("Tor Vem was born in Kasarn.", "subject"),               # ... and at a word's end
    ("Ada Lin is a native of Kell.", "relation"),             # the templates' wording
    ("Ada Lin came into the world in Kell.", "relation"),
    ("Ada Lin visited Kell.", "other"),
    ("Tor was born in a town, said Vem.", "relation"),       # a split name is no mention
    ("", "other"),
])
def test_passage_kinds(text, kind):
    assert passage_kind(text, BORN) == kind


def test_gold_passage_entails_whatever_its_text():
    assert passage_kind("She was born in the north.", BORN, gold=True) == "entails"
    assert passage_kind("She was born in the north.", BORN) == "relation"


def test_object_inside_the_subject_is_no_mention_of_it():
    fact = Fact("New Sarn", "Sarn")
    assert passage_kind("New Sarn is a port.", fact) == "subject"
    assert passage_kind("New Sarn lies near Sarn.", fact) == "entails"
    assert passage_kind("Old Sarn is a port.", fact) == "object"
    reverse = Fact("Sarn", "New Sarn")            # the subject inside the object
    assert passage_kind("New Sarn is a port.", reverse) == "object"


def test_multi_word_object_and_punctuation():
    fact = Fact("Keld", "Institute of Deep Study")
    assert passage_kind("Keld works for the institute of\ndeep study.", fact) == "entails"
    assert passage_kind("The Institute of Deep Study (Nor) hired Ada.", fact) == "object"
    assert passage_kind("Keld works for the Institute of Deep.", fact) == "subject"
    assert passage_kind("Keld, Inc. opened.", Fact("Keld, Inc.", "Nor")) == "subject"


def test_relation_wording_from_templates_and_from_a_field():
    assert template_wording("{s}'s birthplace is {o}.") == ["birthplace is"]
    assert template_wording("The capital of {o} is {s}.") == ["The capital of"]
    assert template_wording("{o} wrote {s}.") == ["wrote"]
    assert relation_wording("born_in")[1] == "fact world templates"
    assert relation_wording("unknown") == ((), "none")
    assert relation_wording("born_in", "hails from") == (("hails from",), "relation_text")
    custom = Fact("Ada", "Kell", "r", ("hails from",), "relation_text")
    assert passage_kind("Bo hails from Nor.", custom) == "relation"
    assert passage_kind("Bo was born in Nor.", custom) == "other"
    assert passage_kind("Bo was born in Nor.", Fact("Ada", "Kell")) == "other"


def test_shares_and_summary_by_hand():
    texts = {"g": "Ada Lin was born at home.", "o": "Sarn is big.", "s": "Tor Vem sang.",
             "r": "Bo is a native of Nor.", "x": "Rain."}
    qrels = {"q1": {"g"}, "q2": {"x"}}
    facts = {"q1": BORN, "q2": BORN}
    rankings = {"q1": ["g", "o", "s", "r"], "q2": ["o", "o", "x", "x#1"], "q3": ["x"]}
    summary = kinds_summary(rankings, facts, qrels, texts, cutoffs=(1, 4))
    assert summary["n_queries"] == 2                          # q3 has no fact
    top1 = {k: v["mean"] for k, v in summary["top1"].items()}
    assert top1 == {"entails": 0.5, "object": 0.5, "subject": 0, "relation": 0, "other": 0}
    top4 = {k: v["mean"] for k, v in summary["top4"].items()}
    # q1: one of each of four kinds; q2: two objects, two gold (a window of a gold passage)
    assert top4 == {"entails": (0.25 + 0.5) / 2, "object": (0.25 + 0.5) / 2,
                    "subject": 0.125, "relation": 0.125, "other": 0.0}
    assert summary["top4"]["entails"]["se"] == pytest.approx(0.125)
    assert kinds_summary(rankings, {}, qrels, texts)["n_queries"] == 0


@given(st.lists(st.sampled_from(KINDS), min_size=1, max_size=20))
def test_shares_sum_to_one(kinds):
    assert sum(kind_shares(kinds).values()) == pytest.approx(1.0)


@given(st.lists(st.sampled_from(["Tor Vem", "Sarn", "was born in", "Ada", "x", ".", " "]),
                max_size=12), st.booleans())
def test_every_passage_gets_exactly_one_kind(words, gold):
    assert passage_kind(" ".join(words), BORN, gold) in KINDS


def test_read_facts_from_fields_and_from_facts_jsonl(tmp_path):
    queries = tmp_path / "queries.jsonl"
    rows = [{"id": "a", "prompt": "Tor Vem was born in", "target": " Sarn",
             "subject": "Tor Vem", "relation": "born_in"},
            {"id": "b", "prompt": "Bo hails from", "target": " Nor"},
            {"id": "c", "prompt": "x", "target": " y"}]
    queries.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "facts.jsonl").write_text(json.dumps(
        {"query_id": "b", "subject": "Bo", "object": "Nor", "relation_text": ["hails from"]})
        + "\n")
    facts = read_facts(str(queries))
    assert set(facts) == {"a", "b"}
    assert facts["a"].object == "Sarn"                        # the target stands in
    assert facts["a"].wording_source == "fact world templates"
    assert facts["b"] == Fact("Bo", "Nor", None, ("hails from",), "relation_text")
