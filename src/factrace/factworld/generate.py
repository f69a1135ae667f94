"""Write a fact world to disk: ``corpus.jsonl``, ``queries.jsonl``, ``qrels.jsonl``.

Passages stream to disk as they are generated; the (fact, passage) pairs each passage states go
to a temporary binary file, so memory stays bounded by the number of facts, not of passages.
Queries are then drawn among the facts the corpus states (every query has at least one gold
passage), round-robin over relations so that every relation is asked, and the qrels list, for
each query, exactly the passages whose structural record says they state its fact.

Two more files describe the world: ``facts.jsonl`` (each query's subject, relation, object and
number of gold passages) and ``world.json`` (the configuration and summary statistics).
Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import random
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from factrace.data.atomic import atomic_write
from factrace.data.jsonl import write_jsonl
from factrace.factworld.passages import iter_passages, passage_id
from factrace.factworld.templates import RELATION_BY_NAME, RELATIONS
from factrace.factworld.world import World, WorldConfig, build_world

FORMAT_VERSION = 1
_PAIR_BUFFER = 1 << 16


@dataclass(frozen=True)
class WorldFiles:
    """Paths of a generated world."""

    corpus: Path
    queries: Path
    qrels: Path
    facts: Path
    """Per query: ``query_id``, ``relation``, ``subject``, ``object``, ``n_gold``."""
    info: Path
    """``world.json``: configuration and statistics."""

    @classmethod
    def in_dir(cls, out_dir: str | Path) -> WorldFiles:
        out = Path(out_dir)
        return cls(
            corpus=out / "corpus.jsonl",
            queries=out / "queries.jsonl",
            qrels=out / "qrels.jsonl",
            facts=out / "facts.jsonl",
            info=out / "world.json",
        )


def select_queries(world: World, counts: array, n_queries: int, seed: int) -> list[int]:
    """Facts to ask, among those stated at least once: relations take turns, each drawing its
    facts in a random order, until ``n_queries`` are chosen. Returned in fact order."""
    rng = random.Random(f"factworld-queries:{seed}")
    by_relation: dict[str, list[int]] = {r.name: [] for r in RELATIONS}
    for fact in world.facts:
        if counts[fact.index] > 0:
            by_relation[fact.relation].append(fact.index)
    for facts in by_relation.values():
        rng.shuffle(facts)
    chosen: list[int] = []
    turn = 0
    longest = max((len(facts) for facts in by_relation.values()), default=0)
    while len(chosen) < n_queries and turn < longest:
        for facts in by_relation.values():
            if turn < len(facts) and len(chosen) < n_queries:
                chosen.append(facts[turn])
        turn += 1
    return sorted(chosen)


def _write_json_lines(path: Path, rows) -> None:
    write_jsonl(path, rows)


def _stream_corpus(
    world: World, config: WorldConfig, files: WorldFiles, pairs_path: Path, progress: bool
) -> array:
    """Write the corpus and the (fact, passage) pairs; return passages-per-fact counts."""
    counts = array("I", [0]) * len(world.facts)
    buffer = array("I")
    with atomic_write(files.corpus) as corpus, open(pairs_path, "wb") as pairs:
        passages = iter_passages(world, config)
        bar = tqdm(
            passages,
            total=config.n_passages,
            desc="writing passages",
            unit="passage",
            disable=not progress,
        )
        for passage in bar:
            corpus.write(
                json.dumps({"id": passage.id, "text": passage.text}, ensure_ascii=False) + "\n"
            )
            for fact in passage.facts:
                counts[fact] += 1
                buffer.extend((fact, passage.index))
            if len(buffer) >= _PAIR_BUFFER:
                buffer.tofile(pairs)
                del buffer[:]
        buffer.tofile(pairs)
    return counts


def _gold_passages(pairs_path: Path, wanted: set[int]) -> dict[int, array]:
    """Passage indices stating each wanted fact, read back from the pairs file."""
    gold: dict[int, array] = {f: array("I") for f in wanted}
    with open(pairs_path, "rb") as fh:
        while True:
            chunk = array("I")
            try:
                chunk.fromfile(fh, _PAIR_BUFFER)
            except EOFError:
                pass  # a short last chunk still fills `chunk`
            if not chunk:
                break
            for j in range(0, len(chunk), 2):
                if chunk[j] in gold:
                    gold[chunk[j]].append(chunk[j + 1])
    return gold


def world_statistics(world: World, counts: array, chosen: list[int]) -> dict:
    """Summary numbers of a generated world (also written to ``world.json``)."""
    stated = [c for c in counts if c > 0]
    histogram = Counter(min(c, 10) for c in stated)
    return {
        "n_entities": dict(Counter(e.kind for e in world.entities)),
        "n_relations": len(RELATIONS),
        "n_facts": len(world.facts),
        "n_facts_stated": len(stated),
        "facts_by_n_passages": {
            ("10+" if k == 10 else str(k)): histogram[k] for k in sorted(histogram)
        },
        "n_queries": len(chosen),
        "queries_by_relation": dict(Counter(world.facts[f].relation for f in chosen)),
        "query_gold_passages": {
            "min": min((counts[f] for f in chosen), default=0),
            "median": sorted(counts[f] for f in chosen)[len(chosen) // 2] if chosen else 0,
            "max": max((counts[f] for f in chosen), default=0),
        },
    }


def generate_world(
    out_dir: str | Path, config: WorldConfig = WorldConfig(), progress: bool = False
) -> WorldFiles:
    """Generate the world of ``config`` into ``out_dir`` (created if needed) and return its files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = WorldFiles.in_dir(out)
    world = build_world(config)
    pairs_path = out / ".fact_passage_pairs.tmp"
    try:
        counts = _stream_corpus(world, config, files, pairs_path, progress)
        chosen = select_queries(world, counts, config.n_queries, config.seed)
        gold = _gold_passages(pairs_path, set(chosen))
    finally:
        pairs_path.unlink(missing_ok=True)

    query_ids = {f: f"q{k:05d}" for k, f in enumerate(chosen)}
    names = [e.name for e in world.entities]

    def query_row(f: int) -> dict:
        fact = world.facts[f]
        prompt, target = RELATION_BY_NAME[fact.relation].query(
            names[fact.subject], names[fact.object]
        )
        return {"id": query_ids[f], "prompt": prompt, "target": target}

    _write_json_lines(files.queries, (query_row(f) for f in chosen))
    _write_json_lines(
        files.qrels,
        ({"query_id": query_ids[f], "doc_id": passage_id(i)} for f in chosen for i in gold[f]),
    )
    _write_json_lines(
        files.facts,
        (
            {
                "query_id": query_ids[f],
                "relation": world.facts[f].relation,
                "subject": names[world.facts[f].subject],
                "object": names[world.facts[f].object],
                "n_gold": len(gold[f]),
            }
            for f in chosen
        ),
    )
    info = {
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(config),
        "statistics": world_statistics(world, counts, chosen),
    }
    with atomic_write(files.info) as fh:
        fh.write(json.dumps(info, indent=2) + "\n")
    return files
