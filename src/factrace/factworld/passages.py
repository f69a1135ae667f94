"""Passages of the fact world, streamed one at a time.

A passage reads like a short encyclopedia abstract about one topic (a subject drawn by
popularity): two to six sentences mixing the topic's facts, told by varied templates, sometimes
with a pronoun for the topic, plus distractors: sentences that name the topic and another
entity without stating a fact, and facts of other subjects of the same type ("Her colleague
Tor Vem was born in Sarn."). Every sentence that states a fact records it, so the gold passages
of a fact are known structurally, never by searching text.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from factrace.factworld.templates import CONNECTORS, MENTIONS, RELATION_BY_NAME
from factrace.factworld.world import Entity, Fact, World, WorldConfig

POSSESSIVE = {"he": "his", "she": "her", "it": "its"}


@dataclass(frozen=True)
class Sentence:
    """One sentence of a passage and the fact it states (``None`` for a mention)."""

    text: str
    fact: int | None


@dataclass(frozen=True)
class WorldPassage:
    """A generated passage with its structural record.

    Attributes:
        index: position in the corpus (0-based).
        id: corpus id, ``"p0000042"``.
        topic: entity index of the subject the passage is about.
        sentences: the sentences, in order; ``text`` is them joined by spaces.
        facts: indices of the facts the passage states, in order of first statement.
    """

    index: int
    id: str
    topic: int
    sentences: tuple[Sentence, ...]

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.sentences)

    @property
    def facts(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(s.fact for s in self.sentences if s.fact is not None))


def passage_id(index: int) -> str:
    """Corpus id of the ``index``-th passage."""
    return f"p{index:07d}"


def render(template: str, subject: Entity, obj: Entity, pronoun_for: int | None = None) -> str:
    """Fill a fact template; if the sentence opens with ``pronoun_for``, use its pronoun."""
    for slot, entity in (("{s}", subject), ("{o}", obj)):
        if entity.index == pronoun_for and template.startswith(slot):
            if template.startswith(slot + "'s "):
                template = POSSESSIVE[entity.pronoun].capitalize() + template[len(slot) + 2 :]
            else:
                template = entity.pronoun.capitalize() + template[len(slot) :]
    return template.format(s=subject.name, o=obj.name, poss=POSSESSIVE[subject.pronoun])


def _fact_sentence(
    world: World, fact: Fact, topic: Entity, pronoun: bool, rng: random.Random
) -> Sentence:
    template = rng.choice(RELATION_BY_NAME[fact.relation].templates)
    subject, obj = world.entities[fact.subject], world.entities[fact.object]
    return Sentence(render(template, subject, obj, topic.index if pronoun else None), fact.index)


def _mention(world: World, topic: Entity, used: set[str], rng: random.Random) -> Sentence:
    choices = [m for m in MENTIONS[topic.kind] if m[0] not in used] or list(MENTIONS[topic.kind])
    template, kind = rng.choice(choices)
    used.add(template)
    related = [
        world.facts[f].object
        for f in world.facts_by_subject.get(topic.index, ())
        if world.entities[world.facts[f].object].kind == kind
    ]
    pool = related if related and rng.random() < 0.5 else world.by_kind[kind]
    other = rng.choice(pool)
    while other == topic.index:
        other = rng.choice(world.by_kind[kind])
    return Sentence(template.format(s=topic.name, x=world.entities[other].name), None)


def _other_subject_fact(world: World, topic: Entity, rng: random.Random) -> Sentence | None:
    """A fact of another subject of the topic's type, attached by a connector."""
    members = world.subjects_by_kind[topic.kind]
    if len(members) < 2:
        return None
    other = rng.choices(members, cum_weights=world.kind_cum_weights[topic.kind])[0]
    if other == topic.index:  # not the topic itself: then any other, uniformly
        j = rng.randrange(len(members) - 1)
        other = members[j] if members[j] != topic.index else members[-1]
    fact = world.facts[rng.choice(world.facts_by_subject[other])]
    templates = [
        t for t in RELATION_BY_NAME[fact.relation].templates if t.startswith(("{s} ", "{s}'s "))
    ]
    subject, obj = world.entities[fact.subject], world.entities[fact.object]
    connector = rng.choice(CONNECTORS[topic.kind])
    opening = connector.format(Poss=POSSESSIVE[topic.pronoun].capitalize())
    return Sentence(opening + render(rng.choice(templates), subject, obj), fact.index)


def make_passage(
    index: int, topic_index: int, world: World, config: WorldConfig, rng: random.Random
) -> WorldPassage:
    """Write the ``index``-th passage, about entity ``topic_index``."""
    topic = world.entities[topic_index]
    pool = list(world.topic_facts.get(topic_index, ()))
    rng.shuffle(pool)
    sentences: list[Sentence] = []
    used_mentions: set[str] = set()
    about_topic = False  # whether the previous sentence was about the topic (a pronoun may follow)
    for k in range(rng.randint(config.min_sentences, config.max_sentences)):
        if pool and (k == 0 or rng.random() >= config.distractor_rate):
            pronoun = about_topic and rng.random() < config.pronoun_rate
            sentences.append(_fact_sentence(world, world.facts[pool.pop()], topic, pronoun, rng))
            about_topic = True
            continue
        sentence = None
        if k > 0 and rng.random() < 0.5:
            sentence = _other_subject_fact(world, topic, rng)
            if sentence is not None and any(s.fact == sentence.fact for s in sentences):
                sentence = None
        about_topic = sentence is None
        sentences.append(sentence or _mention(world, topic, used_mentions, rng))
    return WorldPassage(index, passage_id(index), topic_index, tuple(sentences))


def iter_passages(world: World, config: WorldConfig) -> Iterator[WorldPassage]:
    """Stream the corpus: ``config.n_passages`` passages, each generated on demand."""
    rng = random.Random(f"factworld-passages:{config.seed}")
    for index in range(config.n_passages):
        topic = rng.choices(world.subjects, cum_weights=world.cum_weights)[0]
        yield make_passage(index, topic, world, config, rng)
