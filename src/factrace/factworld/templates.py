"""Relations of the fact world, the sentences that state them and the sentences that do not.

Each relation is asked by ONE fixed query prompt in the style of T-REx (``"{s} was born in"``
→ target ``" {o}"``) and stated by several sentence templates. Only some templates share the
query's phrasing, so string matching alone does not find every passage that states a fact.

Slots: ``{s}`` the fact's subject, ``{o}`` its object, ``{poss}`` the subject's possessive
pronoun. A sentence whose first slot is the passage's topic may replace that name by a pronoun
("She was born in ..."), which string matching cannot find either.

Mention templates (``{s}`` the passage topic, ``{x}`` another entity) name two entities without
stating any fact of the world; they are the distractors ("Tor Vem once visited Sarn", where
Sarn may well be Tor Vem's birthplace).
"""

from __future__ import annotations

from dataclasses import dataclass

PERSON = "person"
CITY = "city"
COUNTRY = "country"
LANGUAGE = "language"
ORGANIZATION = "organization"
FIELD = "field"
BOOK = "book"

KINDS = (PERSON, CITY, COUNTRY, LANGUAGE, ORGANIZATION, FIELD, BOOK)
"""Every entity type of the world."""

SUBJECT_KINDS = (PERSON, ORGANIZATION, BOOK, CITY, COUNTRY)
"""Entity types that passages are written about."""


@dataclass(frozen=True)
class Relation:
    """A functional relation: every subject has at most one object.

    Attributes:
        name: identifier, e.g. ``"born_in"``.
        subject_kind, object_kind: entity types of the two slots.
        prompt: the query prompt, with the subject slot ``{s}``; the target is ``" " + object``.
        templates: sentences stating the fact; the first one shares the query's phrasing.
    """

    name: str
    subject_kind: str
    object_kind: str
    prompt: str
    templates: tuple[str, ...]

    def query(self, subject: str, obj: str) -> tuple[str, str]:
        """The (prompt, target) pair asking this relation of ``subject``."""
        return self.prompt.format(s=subject), " " + obj


RELATIONS: tuple[Relation, ...] = (
    Relation("born_in", PERSON, CITY, "{s} was born in", (
        "{s} was born in {o}.",
        "{s} is a native of {o}.",
        "{s}'s birthplace is {o}.",
        "{s} came into the world in {o}.",
    )),
    Relation("died_in", PERSON, CITY, "{s} died in", (
        "{s} died in {o}.",
        "{s} passed away in {o}.",
        "{s} spent {poss} final years in {o}.",
        "{s}'s place of death was {o}.",
    )),
    Relation("citizen_of", PERSON, COUNTRY, "{s} is a citizen of", (
        "{s} is a citizen of {o}.",
        "{s} holds the citizenship of {o}.",
        "{s} is a national of {o}.",
        "{s} carries a passport of {o}.",
    )),
    Relation("native_language", PERSON, LANGUAGE, "The native language of {s} is", (
        "The native language of {s} is {o}.",
        "{s} grew up speaking {o}.",
        "{s}'s mother tongue is {o}.",
        "{s} speaks {o} as a first language.",
    )),
    Relation("field_of_work", PERSON, FIELD, "{s} works in the field of", (
        "{s} works in the field of {o}.",
        "{s} is a researcher of {o}.",
        "{s} is known for {poss} contributions to {o}.",
        "{s}'s work centres on {o}.",
    )),
    Relation("employer", PERSON, ORGANIZATION, "{s} works for", (
        "{s} works for {o}.",
        "{s} is employed by {o}.",
        "{s} took a position at {o}.",
        "{s} is on the staff of {o}.",
    )),
    Relation("located_in", CITY, COUNTRY, "{s} is located in", (
        "{s} is located in {o}.",
        "{s} is a city in {o}.",
        "{s} lies in {o}.",
        "{s} is one of the cities of {o}.",
    )),
    Relation("capital_of", CITY, COUNTRY, "{s} is the capital of", (
        "{s} is the capital of {o}.",
        "{s} serves as the capital city of {o}.",
        "{s} is the seat of government of {o}.",
        "The capital of {o} is {s}.",
    )),
    Relation("official_language", COUNTRY, LANGUAGE, "The official language of {s} is", (
        "The official language of {s} is {o}.",
        "{s} has {o} as its official language.",
        "{s}'s government conducts its business in {o}.",
        "{o} is the official language of {s}.",
    )),
    Relation("founded_by", ORGANIZATION, PERSON, "{s} was founded by", (
        "{s} was founded by {o}.",
        "{s} was established by {o}.",
        "{s} owes its founding to {o}.",
        "{o} founded {s}.",
        "{o} is the founder of {s}.",
    )),
    Relation("headquartered_in", ORGANIZATION, CITY, "The headquarters of {s} are in", (
        "The headquarters of {s} are in {o}.",
        "{s} is headquartered in {o}.",
        "{s} has its main office in {o}.",
        "{s} is based in {o}.",
    )),
    Relation("industry", ORGANIZATION, FIELD, "{s} is active in the field of", (
        "{s} is active in the field of {o}.",
        "{s} specializes in {o}.",
        "{s} focuses on {o}.",
        "{s} funds research in {o}.",
    )),
    Relation("author", BOOK, PERSON, "{s} was written by", (
        "{s} was written by {o}.",
        "{s} is a book by {o}.",
        "{s} is the work of {o}.",
        "{o} wrote {s}.",
        "{o} is the author of {s}.",
    )),
    Relation("language_of_work", BOOK, LANGUAGE, "{s} was written in", (
        "{s} was written in {o}.",
        "{s} was composed in {o}.",
        "The original language of {s} is {o}.",
        "{s} first appeared in {o}.",
    )),
)  # fmt: skip

RELATION_BY_NAME = {r.name: r for r in RELATIONS}

REVERSE_TOPIC_RELATIONS = ("founded_by", "author", "capital_of")
"""Relations whose facts also appear in passages about their object (a person's passage names
the books they wrote; a country's passage names its capital)."""

MENTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    PERSON: (
        ("{s} once visited {x}.", CITY),
        ("{s} gave a lecture in {x}.", CITY),
        ("{s} corresponded with {x}.", PERSON),
        ("{s} studied the writings of {x}.", PERSON),
        ("{s} often quoted {x}.", BOOK),
        ("{s} once toured {x}.", COUNTRY),
        ("{s} took lessons in {x}.", LANGUAGE),
        ("{s} admired the members of {x}.", ORGANIZATION),
    ),
    ORGANIZATION: (
        ("{s} has a branch office in {x}.", CITY),
        ("{s} once sponsored a conference in {x}.", CITY),
        ("{s} awarded a prize to {x}.", PERSON),
        ("{s} signed a contract with {x}.", ORGANIZATION),
        ("{s} opened a school in {x}.", COUNTRY),
    ),
    BOOK: (
        ("{s} was translated into {x}.", LANGUAGE),
        ("{s} is set in {x}.", CITY),
        ("{s} was praised by {x}.", PERSON),
        ("{s} is often compared to {x}.", BOOK),
        ("{s} was banned for a time in {x}.", COUNTRY),
    ),
    CITY: (
        ("{s} is a popular destination for visitors from {x}.", COUNTRY),
        ("{s} is twinned with {x}.", CITY),
        ("{s} is home to a statue of {x}.", PERSON),
        ("{s} hosts an annual festival of {x}.", FIELD),
    ),
    COUNTRY: (
        ("{s} shares a border with {x}.", COUNTRY),
        ("{s} signed a trade agreement with {x}.", COUNTRY),
        ("{s} honours {x} on its banknotes.", PERSON),
        ("{s} has many speakers of {x}.", LANGUAGE),
    ),
}
"""Per passage-topic type: (template, type of the mentioned entity)."""

CONNECTORS: dict[str, tuple[str, ...]] = {
    PERSON: ("{Poss} colleague ", "{Poss} contemporary ", "{Poss} rival "),
    ORGANIZATION: ("Its partner organization ", "Its rival "),
    BOOK: ("Its companion volume ", "Its sequel "),
    CITY: ("Its neighbouring city ", "Its sister city "),
    COUNTRY: ("Its neighbour ", "Its old ally "),
}
"""Openings that attach another subject's fact to a passage ("Her colleague Tor Vem was born
in Sarn."): the sentence states that other fact, a same-relation distractor for this topic's."""
