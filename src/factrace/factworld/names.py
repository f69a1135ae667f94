"""Invented, pronounceable names for the entities of the fact world.

Every name is built from syllables, so no entity of the world is a real one. A
:class:`NameRegistry` keeps names unique and guarantees that no name is a word-suffix of another
("Tor Vem" and "Vem" never both exist): a query "Vem is located in" can then only occur in the
corpus where the subject really is "Vem", never inside "Tor Vem is located in".
"""

from __future__ import annotations

import random

ONSETS = (
    "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
    "b", "d", "k", "l", "m", "n", "r", "s", "t", "br", "dr", "kr", "st", "th", "sh", "tr",
)  # fmt: skip
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "a", "ae", "ou")
CODAS = ("", "", "", "", "", "", "n", "r", "l", "s", "m", "k")

ORGANIZATION_SUFFIXES = (
    "Institute", "Group", "Society", "Works", "Foundation", "Company", "Academy", "Guild",
    "Trust", "Laboratories",
)  # fmt: skip
FIELD_SUFFIXES = ("ics", "ology", "ism", "ometry", "istry", "onomy")
COUNTRY_SUFFIXES = ("ia", "and", "ora", "istan", "ary")
LANGUAGE_SUFFIXES = ("ish", "ese", "ic", "ian", "i")
BOOK_NOUNS = (
    "Chronicle", "Letters", "Garden", "Voyage", "Archive", "Lantern", "Orchard", "Mirror",
    "Covenant", "Harbor", "Almanac", "Testament", "Meadow", "Tower", "Journey", "Riddle",
)  # fmt: skip


def syllable(rng: random.Random) -> str:
    """One consonant-vowel-(consonant) syllable, lower case."""
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def word(rng: random.Random, min_syllables: int = 2, max_syllables: int = 3) -> str:
    """A capitalised invented word of a few syllables, e.g. ``"Talvoren"``."""
    n = rng.randint(min_syllables, max_syllables)
    return "".join(syllable(rng) for _ in range(n)).capitalize()


def _word_suffixes(name: str) -> list[str]:
    """The proper word-suffixes of a name: ``"The Kalmor Chronicle"`` → ``["Kalmor Chronicle",
    "Chronicle"]``."""
    parts = name.split(" ")
    return [" ".join(parts[i:]) for i in range(1, len(parts))]


class NameRegistry:
    """Hands out unique names, none of which is a word-suffix of another."""

    def __init__(self) -> None:
        self._names: set[str] = set()
        self._suffixes: set[str] = set()

    def accepts(self, name: str) -> bool:
        """Whether ``name`` is new and neither contains nor ends another name."""
        if name in self._names or name in self._suffixes:
            return False
        return not any(s in self._names for s in _word_suffixes(name))

    def add(self, name: str) -> str:
        """Record ``name`` (which must be acceptable) and return it."""
        if not self.accepts(name):
            raise ValueError(f"name {name!r} collides with an existing name")
        self._names.add(name)
        self._suffixes.update(_word_suffixes(name))
        return name

    def draw(self, make, rng: random.Random, attempts: int = 1000) -> str:
        """Call ``make(rng)`` until it yields an acceptable name, record and return it."""
        for _ in range(attempts):
            name = make(rng)
            if self.accepts(name):
                return self.add(name)
        raise RuntimeError("could not find a fresh name; the name space is exhausted")


def person_name(first_names: list[str]):
    """A maker of ``"First Last"`` person names that reuses a pool of first names."""

    def make(rng: random.Random) -> str:
        return f"{rng.choice(first_names)} {word(rng, 2, 2)}"

    return make


def city_name(rng: random.Random) -> str:
    return word(rng, 2, 3)


def country_name(rng: random.Random) -> str:
    return word(rng, 1, 2) + rng.choice(COUNTRY_SUFFIXES)


def language_name(rng: random.Random) -> str:
    return word(rng, 1, 2) + rng.choice(LANGUAGE_SUFFIXES)


def organization_name(rng: random.Random) -> str:
    return f"{word(rng, 2, 2)} {rng.choice(ORGANIZATION_SUFFIXES)}"


def field_name(rng: random.Random) -> str:
    """Fields are common nouns, written in lower case: ``"tavonics"``."""
    return (word(rng, 1, 2) + rng.choice(FIELD_SUFFIXES)).lower()


def book_title(rng: random.Random) -> str:
    return f"The {word(rng, 2, 2)} {rng.choice(BOOK_NOUNS)}"
