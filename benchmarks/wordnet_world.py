"""A real-text fact world from WordNet 3.0's glosses, for a real pretrained model.

Source: Debian's ``wordnet-base`` package (``apt-get install wordnet-base``; the file read is
``/usr/share/wordnet/data.noun``, WordNet 3.0, Princeton's licence). Every noun synset is one
passage, ``"<name>: <gloss>"`` — dictionary prose written by people, e.g. "Reading: a city on
the River Thames in Berkshire in southern England". ``<name>`` is the synset's longest lemma
(the full name of a person), underscores as spaces.

Facts are read from the glosses of *instance* synsets (named people and places) by fixed rules,
each fact one query:

- ``nationality``: a person's gloss starting with a nationality ("French impressionist painter
  (1840-1926)"); the query is "Claude Monet was a" → " French" ("an" before a vowel;
  "United States ..." is asked as " American"). Only glosses with a year in parentheses (a
  person) count.
- ``capital``: "the capital (and largest city) of X" / "capital of X"; "Kabul is the capital
  of" → " Afghanistan".
- ``city``, ``town``, ``river``, ``port``: "a city in [northwestern] X" and the like; "Herat is
  a city in" → " Afghanistan" (X is the first capitalised name after "in"/"of", directions
  skipped).

A passage is gold for a fact when it names the subject and the fact's object (the words of the
gloss: "United States" for " American"), whole words, case-sensitive: the subject's own gloss,
and any other gloss that names both.

The corpus holds every candidate fact's gold passages (whether or not the model knows the fact),
then other instance glosses, then other noun glosses, in a seeded order, up to ``passages``.
Which facts the model knows is decided by :func:`known` (greedy completion starts with the
target: :func:`factrace.factworld.accuracy.greedy_hits`); a place the model misses under "is a
city in" is tried again as "X is located in", then "X is in". The queries file keeps the
facts known, each under the first prompt that the model completed with the target.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

DATA_NOUN = Path("/usr/share/wordnet/data.noun")

NATIONALITIES = (
    "English", "French", "German", "Italian", "Russian", "Spanish", "Dutch", "Scottish", "Irish",
    "Greek", "Austrian", "Swiss", "Swedish", "Norwegian", "Danish", "Polish", "Hungarian",
    "Czech", "Belgian", "Welsh", "Canadian", "Australian", "Japanese", "Chinese", "Indian",
    "Mexican", "Brazilian", "Portuguese", "Flemish", "British", "Israeli", "Egyptian", "Finnish",
    "Argentine", "Chilean", "Persian", "Prussian", "Roman", "Athenian", "Hebrew", "Turkish",
    "Romanian", "Bulgarian", "Serbian", "Croatian", "Ukrainian", "Icelandic", "Venezuelan",
    "Cuban", "Colombian", "Peruvian", "Nigerian", "Korean", "Vietnamese", "Thai", "Pakistani",
)
DIRECTIONS = ("north", "south", "east", "west", "northern", "southern", "eastern", "western",
              "northeastern", "northwestern", "southeastern", "southwestern", "central",
              "northeast", "northwest", "southeast", "southwest", "east-central",
              "west-central", "north-central", "south-central", "extreme", "far")
PLACES = {"city": r"(?:a |an )?(?:\w+ )?city", "town": r"(?:a |an )?(?:\w+ )?town",
          "river": r"(?:a |an )?(?:\w+ )?river", "port": r"(?:a |an )?(?:\w+ )?port(?: city)?"}
_NAME = r"((?:[A-Z][\w'.-]*)(?: (?:[A-Z][\w'.-]*|of|and|the))*(?<!of)(?<!and)(?<!the))"
_SKIP = r"(?:the )?(?:(?:" + "|".join(DIRECTIONS) + r") )*"


@dataclass
class Fact:
    id: str
    relation: str
    subject: str
    object: str
    """The object as the gloss writes it (what a gold passage must name)."""
    prompt: str
    target: str
    passage: str
    """The id of the subject's own gloss."""
    alternatives: tuple[str, ...] = ()
    """Other prompts for the same fact, tried in order when the model misses ``prompt``."""


def synsets(path: Path = DATA_NOUN) -> list[dict]:
    """Every noun synset: offset, lemmas, whether it is an instance, gloss."""
    if not path.is_file():
        raise SystemExit(f"{path} not found: apt-get install wordnet-base")
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("  "):
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            n = int(fields[3], 16)
            lemmas = [re.sub(r"\(\w+\)$", "", fields[4 + 2 * i]).replace("_", " ")
                      for i in range(n)]
            out.append({"offset": fields[0], "lemmas": lemmas,
                        "instance": " @i " in head, "gloss": gloss.strip()})
    return out


def display_name(lemmas: list[str]) -> str:
    """The longest proper lemma (a person's full name), the first of equal length; a lemma
    that is a description ("capital of Afghanistan", "Afghan capital") is passed over."""
    particles = {"von", "van", "de", "der", "den", "da", "du", "la", "le", "di", "del", "y"}
    proper = [s for s in lemmas
              if all(w[:1].isupper() or w in particles for w in s.split())]
    return max(proper or lemmas, key=lambda s: (len(s.split()), len(s)))


def fact_of(name: str, gloss: str) -> tuple[str, str, str, str] | None:
    """(relation, object, prompt, target) read from an instance gloss, or None."""
    first = gloss.split(";")[0].strip()
    m = re.match(r"(United States|" + "|".join(NATIONALITIES) + r") [a-z]", first)
    if m and re.search(r"\(\d{3,4}", first):
        obj = m[1]
        target = "American" if obj == "United States" else obj
        article = "an" if target[0] in "AEIOU" else "a"
        return "nationality", obj, f"{name} was {article}", f" {target}"
    m = re.match(r"(?:the )?capital (?:and (?:largest|chief) (?:city|port) )?of " + _SKIP + _NAME,
                 first)
    if m:
        return "capital", m[1], f"{name} is the capital of", f" {m[1]}"
    for relation, pattern in PLACES.items():
        m = re.match(pattern + r" (?:in|of|on) " + _SKIP + _NAME, first)
        if m and not m[1].startswith("River "):
            noun = "port" if relation == "port" else relation
            return relation, m[1], f"{name} is a {noun} in", f" {m[1]}"
    return None


def names(text: str, phrase: str) -> bool:
    """Whether ``text`` names ``phrase`` as whole words."""
    return re.search(r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])", text) is not None


def build(out: Path, passages: int = 2000, seed: int = 0, max_facts: int = 2000) -> dict:
    """Write ``corpus.jsonl`` and ``candidates.jsonl`` (every candidate fact, with its gold
    passage ids) into ``out``."""
    rng = random.Random(f"wordnet-world:{seed}")
    all_synsets = synsets()
    texts = {f"wn{s['offset']}": f"{display_name(s['lemmas'])}: {s['gloss']}"
             for s in all_synsets}
    facts, seen = [], set()
    for s in all_synsets:
        if not s["instance"]:
            continue
        name = display_name(s["lemmas"])
        found = fact_of(name, s["gloss"])
        if found is None or name in seen or len(name) < 3:
            continue
        seen.add(name)
        relation, obj, prompt, target = found
        others = () if relation in ("nationality", "capital") else (
            f"{name} is located in", f"{name} is in")
        facts.append(Fact(f"f{len(facts):05d}", relation, name, obj, prompt, target,
                          f"wn{s['offset']}", others))
    rng.shuffle(facts)
    facts = facts[:max_facts]
    # gold passages: among the candidates' own glosses and any gloss naming the subject
    by_word = defaultdict(list)
    for pid, text in texts.items():
        for word in set(re.findall(r"[A-Z][\w'-]+", text)):
            by_word[word].append(pid)
    gold = {}
    for f in facts:
        first = re.findall(r"[A-Z][\w'-]+", f.subject)
        pool = by_word.get(max(first, key=len), []) if first else list(texts)
        gold[f.id] = sorted({pid for pid in pool
                             if names(texts[pid], f.subject) and names(texts[pid], f.object)}
                            | {f.passage})
    chosen = sorted({pid for ids in gold.values() for pid in ids})
    instances = [f"wn{s['offset']}" for s in all_synsets if s["instance"]]
    others = [f"wn{s['offset']}" for s in all_synsets if not s["instance"]]
    rng.shuffle(instances)
    rng.shuffle(others)
    taken = set(chosen)
    for pid in instances + others:
        if len(chosen) >= passages:
            break
        if pid not in taken:
            chosen.append(pid)
            taken.add(pid)
    if len(chosen) > passages:
        raise SystemExit(f"{len(chosen)} gold passages exceed --passages {passages}: lower "
                         "max_facts or raise passages")
    rng.shuffle(chosen)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "corpus.jsonl", "w") as fh:
        for pid in chosen:
            fh.write(json.dumps({"id": pid, "text": texts[pid]}) + "\n")
    with open(out / "candidates.jsonl", "w") as fh:
        for f in facts:
            fh.write(json.dumps({**f.__dict__, "gold": gold[f.id]}) + "\n")
    counts = defaultdict(int)
    for f in facts:
        counts[f.relation] += 1
    return {"source": str(DATA_NOUN), "synsets": len(all_synsets), "passages": len(chosen),
            "candidate_facts": len(facts), "candidates_by_relation": dict(counts)}


def known(out: Path, loaded, max_queries: int | None = None) -> dict:
    """Keep the candidates the model knows: write ``queries.jsonl`` (id, prompt, target,
    subject, relation, object), ``qrels.jsonl`` and ``facts.jsonl``; at most ``max_queries``,
    taken round-robin over relations in the candidates' (seeded) order."""
    from factrace.data.records import Query
    from factrace.factworld.accuracy import greedy_hits

    cands = [json.loads(line) for line in open(out / "candidates.jsonl")]
    hits = greedy_hits(loaded.model, loaded.tokenizer,
                       [Query(c["id"], c["prompt"], c["target"]) for c in cands], batch_size=32)
    for alt in range(max(len(c["alternatives"]) for c in cands)):
        retry = [i for i, c in enumerate(cands) if not hits[i] and len(c["alternatives"]) > alt]
        again = greedy_hits(loaded.model, loaded.tokenizer,
                            [Query(cands[i]["id"], cands[i]["alternatives"][alt],
                                   cands[i]["target"]) for i in retry], batch_size=32)
        for i, hit in zip(retry, again, strict=True):
            if hit:
                hits[i] = True
                cands[i]["prompt"] = cands[i]["alternatives"][alt]
    by_relation = defaultdict(list)
    for c, hit in zip(cands, hits, strict=True):
        if hit:
            by_relation[c["relation"]].append(c)
    kept = []
    while any(by_relation.values()) and (max_queries is None or len(kept) < max_queries):
        for rel in sorted(by_relation):
            if by_relation[rel] and (max_queries is None or len(kept) < max_queries):
                kept.append(by_relation[rel].pop(0))
    kept.sort(key=lambda c: c["id"])
    with open(out / "queries.jsonl", "w") as q, open(out / "qrels.jsonl", "w") as r:
        for c in kept:
            q.write(json.dumps({"id": c["id"], "prompt": c["prompt"], "target": c["target"],
                                "subject": c["subject"], "relation": c["relation"],
                                "object": c["object"]}) + "\n")
            for pid in c["gold"]:
                r.write(json.dumps({"query_id": c["id"], "doc_id": pid}) + "\n")
    tried, kept_by = defaultdict(int), defaultdict(int)
    for c, hit in zip(cands, hits, strict=True):
        tried[c["relation"]] += 1
        kept_by[c["relation"]] += hit
    return {"tried": len(cands), "known": int(sum(hits)), "kept": len(kept),
            "by_relation": {rel: [kept_by[rel], tried[rel]] for rel in sorted(tried)}}
