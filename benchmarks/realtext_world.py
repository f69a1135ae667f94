"""A real-text fact world: English encyclopedia prose, a tiny Llama pretrained on it, fact queries.

Source text: the shortened English Wikipedia dump that ships inside the ``gensim`` wheel
(``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``,
206 pages, of which 106 are articles and the rest redirects). It is found through the installed
package (``pip install gensim``), never downloaded.

Passages (``corpus.jsonl``): each article's wikitext goes through gensim's ``filter_wiki``
(templates, tables, refs, file links and categories removed), then reference sections (See also,
References, External links, ...), headings, list items, table leftovers and short lines are
dropped, and sentences that still carry markup or the holes of removed templates (`` ,``,
``()``, brackets, pipes) are skipped. The remaining sentences are packed greedily, in order, into
windows of at most :data:`MAX_WORDS` words (a short last window joins the one before it) with
ids ``Title#k``. Passages are taken round-robin over the articles (every article's window 0,
then every window 1, ...) until ``--passages`` are chosen, so short articles are kept whole.

Queries (``queries.jsonl``), a deterministic rule:

1. A candidate is a sentence of the corpus whose first word is capitalised and is not a
   pronoun or connective ("He", "This", "However", ...), and that contains a relation phrase:
   first one of :data:`RELATIONS` ("was born in", "capital of", "founded by", "known as", ...),
   else a copula (:data:`COPULAS`: "is a", "was the", ...), optionally followed by "the"/"a"/"an".
2. The target is the word right after that phrase, extended over up to two more capitalised
   words when it is a name (" United Nations"); it must be alphabetic, at least three letters,
   and not a stopword or a generic word (:data:`GENERIC`: "first", "part", "type", ...). The
   prompt is the sentence up to the target (3 to :data:`MAX_PROMPT_WORDS` words), so it names
   the subject; the target keeps its leading space.
3. Gold passages (``qrels.jsonl``) are those whose text contains the last four words of the
   prompt followed by the target, case-insensitive (the passage the sentence came from always
   does). Queries with more than :data:`MAX_GOLD` gold passages, and prompts that occur twice,
   are dropped.
4. Candidates are ranked: sentences that open a passage first (the model is trained on
   ``BOS + passage`` and asked ``BOS + prompt``, so a passage-initial fact is asked exactly as
   it was read), then relation phrases before copulas, then by a seeded hash; at most
   :data:`MAX_PER_PASSAGE` queries per passage and :data:`MAX_PER_ARTICLE` per article; the
   first ``--queries`` are kept.

The model (``model/``) is ``factrace.factworld.pretrain.pretrain`` on the corpus with
:data:`DEFAULT_CONFIG`: a byte-level BPE tokenizer, a LlamaForCausalLM, AdamW, the optimizer
state saved as ``optimizer.pt``, and the fact accuracy (greedy completion of each prompt starts
with its target) in ``train_info.json``.

Measured with the defaults (2 CPU cores shared with other jobs, load average 3-7, 1 torch
thread): 98 articles with prose (4,336 windows in all), 300 passages, 26,137 words, 42,766
tokens (1.64 a word; 6 passages exceed ``max_length`` 192 and are truncated), 121 queries (50
open a passage), 1.00 gold passages per query; a 3.42M-parameter Llama, 475 steps (25 epochs)
in 761 s, final training loss 2.76, fact accuracy 0.066 (0.16 on the 50 passage-opening
queries, 0.00 on the 71 others). Real prose is far harder to memorise than the templated fact
world: 800 passages for 10 epochs (the same compute) still had a training loss near 5, and
3,000 passages for 12 epochs would take about 45 minutes here. Fact accuracy needs many more
epochs than fit in ten minutes on these cores (or a GPU, or ``--passages`` smaller still).

    python benchmarks/realtext_world.py --out /tmp/realtext
    python benchmarks/realtext_world.py --out /tmp/realtext --passages 800 --epochs 10

From another benchmark::

    sys.path.insert(0, str(Path(__file__).parent))
    from realtext_world import build_world
    paths = build_world(Path("/tmp/realtext"))   # corpus, queries, qrels, model_dir, ...
"""

from __future__ import annotations

import argparse
import bz2
import dataclasses
import hashlib
import importlib.util
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from factrace.factworld.pretrain import INFO_FILE, OPTIMIZER_FILE, PretrainConfig, pretrain

DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
"""The Wikipedia dump inside the gensim package."""

WORLD_VERSION = "1"
"""Bumped whenever a change here changes the files written; part of the reuse check."""

MAX_WORDS = 100
"""Longest passage window in words (about 1.6 BPE tokens a word with the default tokenizer)."""
MIN_WORDS = 60
"""A last window shorter than this joins the previous one (if that stays near MAX_WORDS)."""
DEFAULT_PASSAGES = 300
"""Passages by default: what the default model trains on in about 13 minutes on two busy cores."""
MAX_PROMPT_WORDS = 20
MAX_GOLD = 20
MAX_PER_ARTICLE = 8
MAX_PER_PASSAGE = 2

DEFAULT_CONFIG = PretrainConfig(
    vocab_size=4096,
    hidden_size=256,
    num_layers=3,
    num_heads=4,
    intermediate_size=688,
    max_length=192,
    epochs=25,
    batch_size=16,
    learning_rate=3e-3,
    warmup_steps=30,
    num_threads=1,
)
"""A 3.4M-parameter Llama; see the module docstring for its time and accuracy."""

SKIPPED_SECTIONS = {
    "references", "see also", "external links", "further reading", "notes", "bibliography",
    "sources", "citations", "footnotes", "works cited", "notes and references", "selected works",
    "works", "filmography", "discography", "gallery", "publications", "primary sources",
    "secondary sources", "awards", "literature", "writings",
}  # fmt: skip
RELATIONS = (
    "was born in", "was born at", "died in", "died at", "is located in", "is located on",
    "is situated in", "lies in", "capital of", "capital is", "founded by", "founded in",
    "established by", "written by", "directed by", "invented by", "developed by", "designed by",
    "named after", "named for", "known as", "called", "led by", "member of", "son of",
    "daughter of", "wife of", "husband of", "official language", "largest city", "native to",
    "derived from", "composed of",
)  # fmt: skip
COPULAS = ("is a", "is an", "is the", "was a", "was an", "was the", "are a", "are the",
           "were a", "were the")  # fmt: skip
NOT_SUBJECTS = set(
    "He She It They His Her Its Their This These Those That There We I You Such Both Each One "
    "However Although Though But And Or So Thus Therefore Because Since While When If Another "
    "Accordingly Also Then Hence Instead Meanwhile Moreover Furthermore Nevertheless "
    "Some Many Most All Other".split()
)
STOPWORDS = set(
    "a an the and or but nor of in on at to for from by with as is was are were be been being "
    "it its this that these those he she they his her their which who whom whose what when "
    "where while than then also not no such into onto over under about after before between "
    "during through one two three four five six seven eight nine ten many most more some any all "
    "other each both only very can could may might will would shall should has have had do does "
    "did there here because although since unless until whether if so yet either neither him them us me my our your itself himself herself themselves".split()
)
GENERIC = set(
    "first second third last next major main large small big common key single type kind form "
    "part number name term word member example matter result way use set group series new "
    "great good important particular unique well further similar different few several certain "
    "same whole total long short high low early late old young little full real true general "
    "special specific various following entire primary popular famous only largest best".split()
)

HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1$")
SENTENCE_END = re.compile(r"(?<=[.!?])[\"”']?\s+(?=[A-Z\"“(])")
ABBREVIATION = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Gen|Col|Lt|Mt|No|Vol|vs|etc|ca|c|e\.g|i\.e|approx|Inc|"
    r"Ltd|Co|U\.S|U\.K|Ph\.D|a\.m|p\.m|cf|al|Fig|Rev|Gov|Sen|Rep|Capt|Sgt|Ft)|\b[A-Z])\.$"
)
DAMAGED = re.compile(
    r"\s[,.;:)]|\(\s|\([,;]|\(\)|[\[\]{}|<>=_*#]|http|\s{2,}|,,|\.\.|\bthumb\b|\dpx\b"
)
WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]")
NAME = re.compile(r"[A-Z][A-Za-z'\-]*[A-Za-z](?: [A-Z][A-Za-z'\-]*[A-Za-z]){0,2}")


def locate_dump() -> Path:
    """The Wikipedia dump inside the installed gensim package (found without importing it)."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("realtext_world: gensim is not installed; run `pip install gensim`")
    for root in spec.submodule_search_locations:
        path = Path(root) / DUMP
        if path.is_file():
            return path
    sys.exit(f"realtext_world: this gensim has no {Path(DUMP).name}; run `pip install gensim`")


def read_articles(dump: Path) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of every article page (redirects skipped)."""
    from gensim.corpora.wikicorpus import extract_pages

    with bz2.open(dump) as fh:
        for title, text, _ in extract_pages(fh):
            if text and not text.lstrip().lower().startswith("#redirect"):
                yield title, text


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of a paragraph: split after . ! ? before a capital, except after abbreviations
    and initials."""
    sentences: list[str] = []
    for piece in SENTENCE_END.split(paragraph):
        piece = piece.strip()
        if sentences and ABBREVIATION.search(sentences[-1]):
            sentences[-1] += " " + piece
        elif piece:
            sentences.append(piece)
    return sentences


def clean_paragraph(line: str) -> str:
    """Bold/italic quotes and empty parentheses removed, whitespace collapsed."""
    line = line.replace("'''", "").replace("''", "")
    line = re.sub(r"\(\s*[,;]?\s*\)", "", line)
    return re.sub(r"[ \t\xa0]+", " ", line).strip()


def prose_sentences(wikitext: str) -> list[str]:
    """The clean prose sentences of an article, in order."""
    from gensim.corpora.wikicorpus import filter_wiki

    sentences: list[str] = []
    skipping = False
    for raw in filter_wiki(wikitext).split("\n"):
        line = raw.strip()
        heading = HEADING.match(line)
        if heading:
            skipping = heading.group(2).strip().lower() in SKIPPED_SECTIONS
            continue
        if skipping or not line or line[0] in "*#:;|!{}=":
            continue
        line = clean_paragraph(line)
        if len(line.split()) < 8 or line[-1] not in ".!?\"'”":
            continue
        for sentence in split_sentences(line):
            if len(sentence.split()) >= 4 and sentence[-1] in ".!?\"'”":
                if not DAMAGED.search(sentence):
                    sentences.append(sentence)
    return sentences


def pack_windows(sentences: list[str]) -> list[str]:
    """Consecutive sentences packed into passages of at most MAX_WORDS words."""
    windows: list[list[str]] = []
    current: list[str] = []
    words = 0
    for sentence in sentences:
        n = len(sentence.split())
        if n > MAX_WORDS:
            continue
        if current and words + n > MAX_WORDS:
            windows.append(current)
            current, words = [], 0
        current.append(sentence)
        words += n
    if current:
        previous = sum(len(s.split()) for s in windows[-1]) if windows else 0
        if words < MIN_WORDS and windows and previous + words <= MAX_WORDS + 30:
            windows[-1].extend(current)
        elif words >= MIN_WORDS // 2:
            windows.append(current)
    return [" ".join(window) for window in windows]


@dataclass(frozen=True)
class Passage:
    id: str
    article: str
    text: str


def select_passages(articles: dict[str, list[str]], limit: int) -> list[Passage]:
    """Round-robin over the articles' windows until ``limit`` passages, in article order."""
    chosen: list[Passage] = []
    depth = 0
    while len(chosen) < limit:
        round_ = [
            Passage(f"{title}#{depth}", title, windows[depth])
            for title, windows in articles.items()
            if depth < len(windows)
        ]
        if not round_:
            break
        chosen.extend(round_[: limit - len(chosen)])
        depth += 1
    order = {title: i for i, title in enumerate(articles)}
    return sorted(chosen, key=lambda p: (order[p.article], int(p.id.rsplit("#", 1)[1])))


@dataclass(frozen=True)
class Fact:
    passage: str
    article: str
    opens_passage: bool
    tier: int
    prompt: str
    target: str


def relation_span(sentence: str, phrases: tuple[str, ...]) -> tuple[int, int] | None:
    """Start and end of the earliest relation phrase (with a following article), or None."""
    spans = [
        match.span()
        for phrase in phrases
        if (match := re.search(rf"\b{phrase}\b(?: (?:the|a|an))? ", sentence))
    ]
    return min(spans) if spans else None


def names_a_subject(words: list[str]) -> bool:
    """Whether the words before the relation hold a content word (the fact's subject)."""
    return any(
        w.lower() not in STOPWORDS | GENERIC and WORD.fullmatch(w.strip(",;:\"'()")) for w in words
    )


def fact_of(sentence: str) -> tuple[int, str, str] | None:
    """(tier, prompt, target) of a sentence under the query rule, or None."""
    first = sentence.split()[0]
    if first in NOT_SUBJECTS or not first[0].isupper():
        return None
    for tier, phrases in enumerate((RELATIONS, COPULAS)):
        span = relation_span(sentence, phrases)
        if span is None or not names_a_subject(sentence[: span[0]].split()):
            continue
        rest = sentence[span[1] :]
        word = WORD.match(rest)
        if not word or len(word.group(0)) < 3 or word.group(0).lower() in STOPWORDS | GENERIC:
            continue
        target = word.group(0)
        if target[0].isupper():
            target = NAME.match(rest).group(0)
        prompt = sentence[: span[1]].rstrip()
        if prompt.count(")") > prompt.count("("):
            continue
        if 3 <= len(prompt.split()) <= MAX_PROMPT_WORDS:
            return tier, prompt, " " + target
    return None


def candidate_facts(passages: list[Passage]) -> Iterator[Fact]:
    for passage in passages:
        for k, sentence in enumerate(split_sentences(passage.text)):
            found = fact_of(sentence)
            if found:
                tier, prompt, target = found
                yield Fact(passage.id, passage.article, k == 0, tier, prompt, target)


def normalise(text: str) -> str:
    return " " + re.sub(r"\s+", " ", text.lower()).strip() + " "


def gold_passages(fact: Fact, texts: dict[str, str]) -> list[str]:
    """Passages containing the last four prompt words and the target, case-insensitive."""
    key = normalise(" ".join(fact.prompt.split()[-4:]) + fact.target).strip()
    pattern = re.compile(rf"(?<![a-z0-9]){re.escape(key)}(?![a-z0-9])")
    return [pid for pid, text in texts.items() if pattern.search(text)]


def seeded_hash(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def select_queries(passages: list[Passage], limit: int, seed: int) -> list[tuple[Fact, list[str]]]:
    """The ranked, filtered facts with their gold passages (see the module docstring)."""
    facts = list(candidate_facts(passages))
    prompt_counts = Counter(normalise(f.prompt) for f in facts)
    facts.sort(key=lambda f: (not f.opens_passage, f.tier, seeded_hash(seed, f.prompt)))
    texts = {p.id: normalise(p.text) for p in passages}
    per_article: Counter[str] = Counter()
    per_passage: Counter[str] = Counter()
    chosen: list[tuple[Fact, list[str]]] = []
    for fact in facts:
        if len(chosen) == limit:
            break
        if (
            per_passage[fact.passage] >= MAX_PER_PASSAGE
            or per_article[fact.article] >= MAX_PER_ARTICLE
        ):
            continue
        if prompt_counts[normalise(fact.prompt)] > 1:
            continue
        gold = gold_passages(fact, texts)
        if not 1 <= len(gold) <= MAX_GOLD:
            continue
        chosen.append((fact, gold))
        per_passage[fact.passage] += 1
        per_article[fact.article] += 1
    return chosen


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_data(out: Path, passages: int, queries: int, seed: int) -> dict:
    """Write corpus, queries and qrels into ``out``; return their counts."""
    articles: dict[str, list[str]] = {}
    for title, wikitext in read_articles(locate_dump()):
        windows = pack_windows(prose_sentences(wikitext))
        if windows:
            articles[title] = windows
    chosen = select_passages(articles, passages)
    facts = select_queries(chosen, queries, seed)
    write_jsonl(out / "corpus.jsonl", [{"id": p.id, "text": p.text} for p in chosen])
    write_jsonl(
        out / "queries.jsonl",
        [{"id": f"q{i}", "prompt": f.prompt, "target": f.target} for i, (f, _) in enumerate(facts)],
    )
    write_jsonl(
        out / "qrels.jsonl",
        [{"query_id": f"q{i}", "doc_id": d} for i, (_, gold) in enumerate(facts) for d in gold],
    )
    return {
        "articles": len({p.article for p in chosen}),
        "articles_in_dump": len(articles),
        "windows_in_dump": sum(len(w) for w in articles.values()),
        "passages": len(chosen),
        "words": sum(len(p.text.split()) for p in chosen),
        "queries": len(facts),
        "queries_opening_a_passage": sum(f.opens_passage for f, _ in facts),
        "mean_gold_per_query": sum(len(g) for _, g in facts) / max(1, len(facts)),
    }


def world_paths(out: Path) -> dict:
    model_dir = out / "model"
    return {
        "corpus": out / "corpus.jsonl",
        "queries": out / "queries.jsonl",
        "qrels": out / "qrels.jsonl",
        "model_dir": model_dir,
        "optimizer_state": model_dir / OPTIMIZER_FILE,
    }


def build_world(
    out: Path,
    passages: int = DEFAULT_PASSAGES,
    seed: int = 0,
    pretrain_config: PretrainConfig | None = None,
    queries: int = 400,
    progress: bool = True,
) -> dict:
    """Build (or reuse) the real-text world in ``out``; return its paths (``corpus``,
    ``queries``, ``qrels``, ``model_dir``, ``optimizer_state``) and ``summary``."""
    out = Path(out)
    config = dataclasses.replace(pretrain_config or DEFAULT_CONFIG, seed=seed)
    settings = {
        "version": WORLD_VERSION,
        "passages": passages,
        "queries": queries,
        "seed": seed,
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k != "num_threads"},
    }
    paths = world_paths(out)
    manifest = out / "world.json"
    if manifest.is_file() and (paths["model_dir"] / INFO_FILE).is_file():
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        if saved.get("settings") == settings:
            return {**paths, "summary": saved["summary"]}
    out.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)
    summary = write_data(out, passages, queries, seed)
    pretrain(paths["corpus"], paths["queries"], paths["model_dir"], config, progress=progress)
    info = json.loads((paths["model_dir"] / INFO_FILE).read_text(encoding="utf-8"))
    summary.update(
        tokens=info["tokens_seen"] // config.epochs,
        parameters=info["n_parameters"],
        pretrain_seconds=info["wall_time_s"],
        final_train_loss=info["final_train_loss"],
        fact_accuracy=info["fact_accuracy"],
    )
    manifest.write_text(json.dumps({"settings": settings, "summary": summary}, indent=2) + "\n")
    return {**paths, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--passages", type=int, default=DEFAULT_PASSAGES)
    parser.add_argument("--queries", type=int, default=400, help="at most this many queries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=DEFAULT_CONFIG.epochs)
    parser.add_argument("--hidden-size", type=int, default=DEFAULT_CONFIG.hidden_size)
    parser.add_argument("--layers", type=int, default=DEFAULT_CONFIG.num_layers)
    parser.add_argument("--intermediate-size", type=int, default=DEFAULT_CONFIG.intermediate_size)
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_CONFIG.vocab_size)
    parser.add_argument("--lr", type=float, default=DEFAULT_CONFIG.learning_rate)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_CONFIG.batch_size)
    parser.add_argument(
        "--threads", type=int, default=DEFAULT_CONFIG.num_threads,
        help="torch threads for pretraining (1 is faster when other jobs share the cores)",
    )  # fmt: skip
    args = parser.parse_args()
    config = dataclasses.replace(
        DEFAULT_CONFIG,
        epochs=args.epochs,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        intermediate_size=args.intermediate_size,
        vocab_size=args.vocab_size,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        num_threads=args.threads,
    )
    world = build_world(args.out, args.passages, args.seed, config, args.queries)
    s = world["summary"]
    print(
        f"articles {s['articles']} (of {s['articles_in_dump']} with prose), "
        f"passages {s['passages']} (of {s['windows_in_dump']} windows), "
        f"words {s['words']:,}, tokens {s['tokens']:,}\n"
        f"queries {s['queries']} ({s['queries_opening_a_passage']} open a passage), "
        f"mean gold passages per query {s['mean_gold_per_query']:.2f}\n"
        f"model {s['parameters'] / 1e6:.2f}M parameters, pretraining {s['pretrain_seconds']:.0f} s, "
        f"final train loss {s['final_train_loss']:.3f}, fact accuracy {s['fact_accuracy']:.3f}\n"
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
