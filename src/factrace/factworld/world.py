"""The fact world: invented entities, the facts relating them, and how popular each subject is.

:func:`build_world` is deterministic in :class:`WorldConfig` and holds entities and facts in
memory (they are few: about one fact per passage); passages are streamed from it by
:mod:`factrace.factworld.passages`.

The world has structure a reader of encyclopedias would expect, which also makes it learnable
by a tiny model: people mostly hold the citizenship of the country they were born in and speak
its official language; founders and authors are drawn from the most popular people; big cities
are where many people were born. Popularity of subjects is Zipf-like, so a few subjects fill
many passages and most facts appear in only one to three.
"""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass, field

from factrace.errors import FactraceError
from factrace.factworld import names
from factrace.factworld.templates import (
    BOOK,
    CITY,
    COUNTRY,
    FIELD,
    LANGUAGE,
    ORGANIZATION,
    PERSON,
    REVERSE_TOPIC_RELATIONS,
    SUBJECT_KINDS,
)


@dataclass(frozen=True)
class WorldConfig:
    """How big and how shaped the synthetic world is. Same config → same files, byte for byte.

    Entity counts left at ``None`` scale with ``n_passages``.
    """

    n_passages: int = 3000
    """Number of training passages written to ``corpus.jsonl``."""
    seed: int = 0
    """Seed of every random choice (names, facts, passages, query selection)."""
    n_queries: int = 300
    """Number of facts asked as queries (fewer if the corpus states fewer facts)."""
    n_persons: int | None = None
    """People; default ``n_passages // 8``."""
    n_organizations: int | None = None
    """Organizations; default ``n_passages // 60`` (at least 8)."""
    n_books: int | None = None
    """Books; default ``n_passages // 40`` (at least 8)."""
    n_cities: int = 30
    """Cities; the first ``n_countries`` of them are capitals."""
    n_countries: int = 8
    """Countries, each with one capital and one official language."""
    n_languages: int = 6
    """Languages."""
    n_fields: int = 10
    """Fields of work (objects of ``field_of_work`` and ``industry``)."""
    min_sentences: int = 2
    """Fewest sentences in a passage."""
    max_sentences: int = 6
    """Most sentences in a passage."""
    popularity_exponent: float = 1.0
    """Zipf exponent of subject popularity: weight of the r-th most popular subject ∝ r^-a."""
    distractor_rate: float = 0.25
    """Chance that a sentence after the first is a distractor rather than a fact of the topic."""
    pronoun_rate: float = 0.25
    """Chance that a sentence after the first names the topic by a pronoun."""
    notable_share: float = 0.1
    """Share of people (the most popular) who found organizations and write books."""

    def __post_init__(self) -> None:
        if self.n_passages < 1:
            raise FactraceError(f"n_passages must be at least 1, got {self.n_passages}")
        if self.n_queries < 1:
            raise FactraceError(f"n_queries must be at least 1, got {self.n_queries}")
        if not 1 <= self.min_sentences <= self.max_sentences:
            raise FactraceError(
                f"need 1 <= min_sentences <= max_sentences, got "
                f"{self.min_sentences}, {self.max_sentences}"
            )
        if self.n_countries < 2 or self.n_cities < self.n_countries:
            raise FactraceError("need at least 2 countries and at least one city per country")
        for kind, n in self.counts().items():
            if n < 2:
                raise FactraceError(f"the world needs at least 2 entities of type {kind}, got {n}")
        for name in ("distractor_rate", "pronoun_rate", "notable_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise FactraceError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def counts(self) -> dict[str, int]:
        """Number of entities of each type, defaults resolved."""
        n = self.n_passages
        return {
            PERSON: self.n_persons if self.n_persons is not None else max(8, n // 8),
            ORGANIZATION: self.n_organizations
            if self.n_organizations is not None
            else max(8, n // 60),
            BOOK: self.n_books if self.n_books is not None else max(8, n // 40),
            CITY: self.n_cities,
            COUNTRY: self.n_countries,
            LANGUAGE: self.n_languages,
            FIELD: self.n_fields,
        }


@dataclass(frozen=True, slots=True)
class Entity:
    """One invented entity. ``pronoun`` is ``"he"``, ``"she"`` or ``"it"``."""

    index: int
    kind: str
    name: str
    pronoun: str = "it"


@dataclass(frozen=True, slots=True)
class Fact:
    """A (subject, relation, object) triple; ``index`` is its position in ``World.facts``."""

    index: int
    subject: int
    relation: str
    object: int


@dataclass
class World:
    """Entities, facts and subject popularity; everything passages are written from."""

    entities: list[Entity]
    facts: list[Fact]
    subjects: list[int]
    """Entities passages are written about, most popular first."""
    cum_weights: tuple[float, ...]
    """Cumulative popularity of ``subjects`` (for ``random.choices``)."""
    facts_by_subject: dict[int, list[int]] = field(default_factory=dict)
    """Facts whose subject is the entity."""
    topic_facts: dict[int, list[int]] = field(default_factory=dict)
    """Facts a passage about the entity may state: its own, and those where it is the object
    of a relation in ``REVERSE_TOPIC_RELATIONS``."""
    by_kind: dict[str, list[int]] = field(default_factory=dict)
    """Entities of each type, in index order."""
    subjects_by_kind: dict[str, list[int]] = field(default_factory=dict)
    """Subjects of each type, most popular first."""
    kind_cum_weights: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """Cumulative popularity of ``subjects_by_kind`` (the same weights as ``cum_weights``)."""


@functools.lru_cache(maxsize=64)
def zipf_cum_weights(n: int, exponent: float) -> tuple[float, ...]:
    """Cumulative weights ∝ r^-exponent for ranks r = 1..n."""
    return tuple(itertools.accumulate((r + 1) ** -exponent for r in range(n)))


def _draw_names(rng: random.Random, counts: dict[str, int]) -> dict[str, list[str]]:
    registry = names.NameRegistry()
    n_first = max(12, int(counts[PERSON] ** 0.5 * 2))
    first_names = sorted({names.word(rng, 1, 2) for _ in range(n_first)})
    makers = {
        COUNTRY: names.country_name,
        LANGUAGE: names.language_name,
        CITY: names.city_name,
        FIELD: names.field_name,
        ORGANIZATION: names.organization_name,
        BOOK: names.book_title,
        PERSON: names.person_name(first_names),
    }
    return {
        kind: [registry.draw(make, rng) for _ in range(counts[kind])]
        for kind, make in makers.items()
    }


def build_world(config: WorldConfig) -> World:
    """Invent the entities and facts of the world described by ``config``."""
    rng = random.Random(f"factworld-entities:{config.seed}")
    counts = config.counts()
    drawn = _draw_names(rng, counts)
    entities: list[Entity] = []
    by_kind: dict[str, list[int]] = {}
    for kind in (COUNTRY, LANGUAGE, CITY, FIELD, ORGANIZATION, BOOK, PERSON):
        for name in drawn[kind]:
            pronoun = rng.choice(("he", "she")) if kind == PERSON else "it"
            entities.append(Entity(len(entities), kind, name, pronoun))
            by_kind.setdefault(kind, []).append(entities[-1].index)

    # Popularity: one Zipf ranking over all subjects, in a random order of kinds.
    subjects = [i for kind in SUBJECT_KINDS for i in by_kind[kind]]
    rng.shuffle(subjects)
    rank = {e: r for r, e in enumerate(subjects)}

    def zipf_pick(pool: list[int], exponent: float = 1.0) -> int:
        return rng.choices(pool, cum_weights=zipf_cum_weights(len(pool), exponent))[0]

    facts: list[Fact] = []

    def add(subject: int, relation: str, obj: int) -> None:
        facts.append(Fact(len(facts), subject, relation, obj))

    countries, cities = by_kind[COUNTRY], by_kind[CITY]
    languages, fields = by_kind[LANGUAGE], by_kind[FIELD]
    language_of: dict[int, int] = {}
    for j, country in enumerate(countries):
        language_of[country] = languages[j] if j < len(languages) else zipf_pick(languages)
        add(country, "official_language", language_of[country])
    country_of: dict[int, int] = {}
    for j, city in enumerate(cities):
        country_of[city] = countries[j] if j < len(countries) else zipf_pick(countries, 0.5)
        if j < len(countries):
            add(city, "capital_of", countries[j])
        add(city, "located_in", country_of[city])

    people = sorted(by_kind[PERSON], key=rank.__getitem__)
    notable = people[: max(2, int(len(people) * config.notable_share))]
    organizations = by_kind[ORGANIZATION]
    for org in organizations:
        add(org, "founded_by", rng.choice(notable))
        add(org, "headquartered_in", zipf_pick(cities))
        add(org, "industry", zipf_pick(fields))
    native_language: dict[int, int] = {}
    for person in by_kind[PERSON]:
        birthplace = zipf_pick(cities)
        add(person, "born_in", birthplace)
        citizenship = country_of[birthplace] if rng.random() < 0.8 else rng.choice(countries)
        add(person, "citizen_of", citizenship)
        native_language[person] = (
            language_of[citizenship] if rng.random() < 0.8 else rng.choice(languages)
        )
        add(person, "native_language", native_language[person])
        add(person, "field_of_work", zipf_pick(fields))
        add(person, "employer", zipf_pick(organizations, 0.7))
        if rng.random() < 0.5:
            add(person, "died_in", birthplace if rng.random() < 0.4 else zipf_pick(cities))
    for book in by_kind[BOOK]:
        author = rng.choice(notable)
        add(book, "author", author)
        language = native_language[author] if rng.random() < 0.8 else rng.choice(languages)
        add(book, "language_of_work", language)

    facts_by_subject: dict[int, list[int]] = {}
    topic_facts: dict[int, list[int]] = {}
    for f in facts:
        facts_by_subject.setdefault(f.subject, []).append(f.index)
        topic_facts.setdefault(f.subject, []).append(f.index)
        if f.relation in REVERSE_TOPIC_RELATIONS:
            topic_facts.setdefault(f.object, []).append(f.index)
    subjects_by_kind = {k: [e for e in subjects if entities[e].kind == k] for k in SUBJECT_KINDS}
    a = config.popularity_exponent
    return World(
        entities=entities,
        facts=facts,
        subjects=subjects,
        cum_weights=zipf_cum_weights(len(subjects), a),
        facts_by_subject=facts_by_subject,
        topic_facts=topic_facts,
        by_kind=by_kind,
        subjects_by_kind=subjects_by_kind,
        kind_cum_weights={
            k: tuple(itertools.accumulate((rank[e] + 1) ** -a for e in members))
            for k, members in subjects_by_kind.items()
        },
    )
