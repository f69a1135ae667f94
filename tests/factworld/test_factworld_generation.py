"""The fact world generator: determinism, gold annotations, shape of the world, streaming."""

from __future__ import annotations

import inspect
import json
import tracemalloc
from collections import Counter, defaultdict

import pytest

from factrace.errors import FactraceError
from factrace.factworld.generate import generate_world
from factrace.factworld.names import NameRegistry
from factrace.factworld.passages import iter_passages, render
from factrace.factworld.templates import KINDS, RELATION_BY_NAME, RELATIONS
from factrace.factworld.world import Entity, WorldConfig, build_world

SMALL = WorldConfig(n_passages=800, n_queries=120, seed=3)


def read(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("factworld")
    return generate_world(out, SMALL)


def test_same_seed_same_files_other_seed_other_files(tmp_path, small_world):
    again = generate_world(tmp_path / "again", SMALL)
    for name in ("corpus", "queries", "qrels", "facts"):
        assert getattr(again, name).read_bytes() == getattr(small_world, name).read_bytes(), name
    other = generate_world(tmp_path / "other", WorldConfig(n_passages=800, n_queries=120, seed=4))
    assert other.corpus.read_bytes() != small_world.corpus.read_bytes()
    assert other.queries.read_bytes() != small_world.queries.read_bytes()


def test_files_have_the_contract_fields(small_world):
    corpus = read(small_world.corpus)
    queries = read(small_world.queries)
    qrels = read(small_world.qrels)
    assert len(corpus) == SMALL.n_passages
    assert all(set(r) == {"id", "text"} and isinstance(r["id"], str) for r in corpus)
    assert len({r["id"] for r in corpus}) == len(corpus)
    assert 0 < len(queries) <= SMALL.n_queries
    assert all(set(r) == {"id", "prompt", "target"} for r in queries)
    assert all(r["target"].startswith(" ") and not r["prompt"].endswith(" ") for r in queries)
    assert all(set(r) == {"query_id", "doc_id"} for r in qrels)
    corpus_ids = {r["id"] for r in corpus}
    assert {r["doc_id"] for r in qrels} <= corpus_ids
    assert not list(small_world.corpus.parent.glob("*.tmp"))


def test_gold_is_exactly_the_passages_stating_the_fact(small_world):
    world = build_world(SMALL)
    fact_of = {(world.entities[f.subject].name, f.relation): f for f in world.facts}
    stating = defaultdict(set)  # fact index -> passage ids, from the structural record
    for passage in iter_passages(world, SMALL):
        for fact in passage.facts:
            stating[fact].add(passage.id)
    qrels = defaultdict(set)
    for row in read(small_world.qrels):
        qrels[row["query_id"]].add(row["doc_id"])
    queries = {q["id"]: q for q in read(small_world.queries)}
    for row in read(small_world.facts):
        fact = fact_of[(row["subject"], row["relation"])]
        assert world.entities[fact.object].name == row["object"]
        relation = RELATION_BY_NAME[fact.relation]
        query = queries[row["query_id"]]
        assert (query["prompt"], query["target"]) == relation.query(row["subject"], row["object"])
        assert qrels[row["query_id"]] == stating[fact.index]
        assert len(stating[fact.index]) == row["n_gold"] >= 1


def test_every_recorded_statement_names_its_fact():
    """A sentence recorded as stating a fact names its object and its subject (or, when the
    subject is the passage topic, the topic's pronoun)."""
    world = build_world(SMALL)
    pronouns = {"He", "She", "It", "His", "Her", "Its"}
    n_pronoun = 0
    for passage in iter_passages(world, SMALL):
        for sentence in passage.sentences:
            if sentence.fact is None:
                continue
            fact = world.facts[sentence.fact]
            subject, obj = world.entities[fact.subject], world.entities[fact.object]
            assert obj.name in sentence.text or (
                obj.index == passage.topic and sentence.text.split(" ")[0] in pronouns
            )
            if subject.name not in sentence.text:
                assert subject.index == passage.topic
                assert sentence.text.split(" ")[0] in pronouns
                n_pronoun += 1
    assert n_pronoun > 0


def test_no_fact_string_outside_the_passages_stating_it():
    """For EVERY fact of the world (not only the queried ones), its query string
    (prompt + target) occurs only in passages recorded as stating it."""
    world = build_world(SMALL)
    passages = list(iter_passages(world, SMALL))
    for fact in world.facts:
        relation = RELATION_BY_NAME[fact.relation]
        prompt, target = relation.query(
            world.entities[fact.subject].name, world.entities[fact.object].name
        )
        needle = prompt + target
        for passage in passages:
            if needle in passage.text:
                assert fact.index in passage.facts, (needle, passage.text)


def test_no_query_verbatim_in_a_non_gold_passage(small_world):
    corpus = read(small_world.corpus)
    gold = defaultdict(set)
    for row in read(small_world.qrels):
        gold[row["query_id"]].add(row["doc_id"])
    found_by_string = missed_by_string = 0
    for query in read(small_world.queries):
        needle = query["prompt"] + query["target"]
        hits = {p["id"] for p in corpus if needle in p["text"]}
        assert hits <= gold[query["id"]], query
        found_by_string += len(hits)
        missed_by_string += len(gold[query["id"]] - hits)
    # The query phrasing is only one of the ways a fact is told.
    assert found_by_string > 0 and missed_by_string > found_by_string


def test_world_shape_types_relations_and_skew(small_world):
    world = build_world(SMALL)
    assert len({e.kind for e in world.entities}) >= 6 and set(KINDS) <= {
        e.kind for e in world.entities
    }
    assert len(RELATIONS) >= 10 and len({f.relation for f in world.facts}) == len(RELATIONS)
    queried = Counter(row["relation"] for row in read(small_world.facts))
    assert len(queried) >= 10
    counts = Counter()
    for passage in iter_passages(world, SMALL):
        counts.update(passage.facts)
    stated = list(counts.values())
    assert sum(1 <= c <= 3 for c in stated) > 0.5 * len(stated)
    assert sum(c >= 10 for c in stated) >= 10
    sizes = [len(p.sentences) for p in iter_passages(world, SMALL)]
    assert min(sizes) == SMALL.min_sentences and max(sizes) == SMALL.max_sentences
    assert sum(s.fact is None for p in iter_passages(world, SMALL) for s in p.sentences) > 0


def test_names_are_unique_and_no_name_ends_another():
    world = build_world(WorldConfig(n_passages=4000, seed=1))
    names = [e.name for e in world.entities]
    assert len(set(names)) == len(names)
    name_set = set(names)
    for name in names:
        words = name.split(" ")
        assert not any(" ".join(words[i:]) in name_set for i in range(1, len(words))), name


def test_name_registry_refuses_suffix_collisions():
    registry = NameRegistry()
    registry.add("Tor Vem")
    assert not registry.accepts("Vem")
    assert not registry.accepts("Tor Vem")
    assert not registry.accepts("Ana Tor Vem")
    assert registry.accepts("Vemra") and registry.accepts("Tor")


def test_render_uses_pronouns_only_for_the_leading_topic():
    she = Entity(0, "person", "Ana Bel", "she")
    city = Entity(1, "city", "Sarn")
    assert render("{s} was born in {o}.", she, city, pronoun_for=0) == "She was born in Sarn."
    assert render("{s}'s birthplace is {o}.", she, city, pronoun_for=0) == "Her birthplace is Sarn."
    assert render("The native language of {s} is {o}.", she, city, 0) == (
        "The native language of Ana Bel is Sarn."
    )
    assert render("{s} spent {poss} final years in {o}.", she, city) == (
        "Ana Bel spent her final years in Sarn."
    )


def test_passages_stream_with_bounded_memory(tmp_path):
    assert inspect.isgenerator(iter_passages(build_world(SMALL), SMALL))

    def peak(n_passages: int) -> int:
        config = WorldConfig(
            n_passages=n_passages, n_queries=50, n_persons=500, n_organizations=40, n_books=60
        )
        tracemalloc.start()
        try:
            files = generate_world(tmp_path / str(n_passages), config)
            return tracemalloc.get_traced_memory()[1], files.corpus.stat().st_size
        finally:
            tracemalloc.stop()

    small_peak, _ = peak(5_000)
    big_peak, big_size = peak(50_000)
    assert big_peak < 1.5 * small_peak + (1 << 20)
    assert big_peak < big_size / 2


def test_config_errors_are_user_errors():
    with pytest.raises(FactraceError):
        WorldConfig(n_passages=0)
    with pytest.raises(FactraceError):
        WorldConfig(min_sentences=4, max_sentences=2)
    with pytest.raises(FactraceError):
        WorldConfig(n_persons=1)
