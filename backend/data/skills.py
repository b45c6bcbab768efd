"""The synthetic skill suite: small algorithmic skills of graded difficulty.

Each skill has
- an infinite seeded training stream (every template, the full value range),
- a fixed evaluation set (`steer` split: template 0, the lower value range),
- a held-out variant (`holdout` split: template 1, the upper value range),
  watched by the Goodhart guard and never seen by the controller.

Symbols are separated by spaces so that the byte-level BPE keeps one symbol
per token (" a", " 7"); digits are always split one per token.

A skill registers itself with `@register_skill`, the same way a user's would.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

LETTERS = string.ascii_lowercase[:12]  # a small alphabet keeps the demo learnable

# make(rng, split) -> (input text, answer text); split is train, steer or holdout
Maker = Callable[[random.Random, str], tuple[dict, str]]


@dataclass(frozen=True)
class Skill:
    name: str
    difficulty: int
    """1 (easiest) .. 5; only for display and ordering."""
    description: str
    templates: tuple[str, ...]
    """Prompt templates; {fields} come from make(). Template 0 is the steer
    evaluation's, template 1 the held-out variant's; training uses all."""
    make: Maker

    def example(self, rng: random.Random, split: str, template: int | None = None) -> tuple[str, str]:
        """One (prompt, answer) pair; the training text is prompt + " " + answer."""
        fields, answer = self.make(rng, split)
        if template is None:
            template = {"steer": 0, "holdout": 1}.get(split)
        if template is None:
            template = rng.randrange(len(self.templates))
        return self.templates[template].format(**fields), answer

    def training_text(self, rng: random.Random) -> str:
        prompt, answer = self.example(rng, "train")
        return f"{prompt} {answer}"


SKILLS: dict[str, Skill] = {}


def register_skill(name: str, difficulty: int, description: str, templates: tuple[str, ...]):
    """Register a skill maker under `name`."""

    def deco(make: Maker) -> Maker:
        if name in SKILLS:
            raise ValueError(f"skill {name!r} is already registered")
        if len(templates) < 2:
            raise ValueError(f"skill {name!r}: needs at least 2 templates (steer, holdout)")
        SKILLS[name] = Skill(name, difficulty, description, templates, make)
        return make

    return deco


def get_skill(name: str) -> Skill:
    if name not in SKILLS:
        raise KeyError(f"unknown skill {name!r} (known: {', '.join(SKILLS)})")
    return SKILLS[name]


def _length(rng: random.Random, split: str, steer: tuple[int, int], holdout: tuple[int, int]) -> int:
    lo, hi = {"steer": steer, "holdout": holdout}.get(split, (steer[0], holdout[1]))
    return rng.randint(lo, hi)


def _letters(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(LETTERS) for _ in range(n)]


def _spaced(symbols) -> str:
    return " ".join(str(s) for s in symbols)


@register_skill("copy", 1, "repeat a letter string", ("copy {x} =", "repeat {x} ->", "echo {x} :"))
def _copy(rng, split):
    x = _letters(rng, _length(rng, split, (2, 4), (5, 6)))
    return {"x": _spaced(x)}, _spaced(x)


@register_skill("reverse", 2, "reverse a letter string", ("reverse {x} =", "backwards {x} ->", "flip {x} :"))
def _reverse(rng, split):
    x = _letters(rng, _length(rng, split, (2, 4), (5, 6)))
    return {"x": _spaced(x)}, _spaced(x[::-1])


@register_skill("sort", 3, "sort letters alphabetically", ("sort {x} =", "order {x} ->", "arrange {x} :"))
def _sort(rng, split):
    x = _letters(rng, _length(rng, split, (2, 4), (5, 6)))
    return {"x": _spaced(x)}, _spaced(sorted(x))


def _number(rng: random.Random, split: str, digits: int) -> int:
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    mid = lo + (hi - lo) * 2 // 3
    return rng.randint(*{"steer": (lo, mid), "holdout": (mid + 1, hi)}.get(split, (lo, hi)))


@register_skill("add2", 3, "add two 2-digit numbers", ("{a} + {b} =", "add {a} and {b} ->", "sum of {a} {b} :"))
def _add2(rng, split):
    a, b = _number(rng, split, 2), _number(rng, split, 2)
    return {"a": _spaced(str(a)), "b": _spaced(str(b))}, _spaced(str(a + b))


@register_skill("add3", 4, "add two 3-digit numbers", ("{a} + {b} =", "add {a} and {b} ->", "sum of {a} {b} :"))
def _add3(rng, split):
    a, b = _number(rng, split, 3), _number(rng, split, 3)
    return {"a": _spaced(str(a)), "b": _spaced(str(b))}, _spaced(str(a + b))


@register_skill("mul1", 4, "multiply a 2-digit number by a digit", ("{a} * {b} =", "times {a} by {b} ->", "product {a} {b} :"))
def _mul1(rng, split):
    a = _number(rng, split, 2)
    b = rng.randint(*{"steer": (2, 5), "holdout": (6, 9)}.get(split, (2, 9)))
    return {"a": _spaced(str(a)), "b": str(b)}, _spaced(str(a * b))


@register_skill("parity", 2, "even or odd number of ones", ("parity {x} =", "ones {x} even or odd ->", "count {x} :"))
def _parity(rng, split):
    x = [rng.randint(0, 1) for _ in range(_length(rng, split, (3, 5), (6, 7)))]
    return {"x": _spaced(x)}, "even" if sum(x) % 2 == 0 else "odd"


@register_skill("brackets", 3, "maximum nesting depth of brackets", ("depth {x} =", "nesting of {x} ->", "deepest {x} :"))
def _brackets(rng, split):
    n = _length(rng, split, (2, 4), (5, 6))  # pairs of brackets
    seq, opened, depth, best = [], 0, 0, 0
    remaining = n
    while remaining or opened:
        if remaining and (not opened or rng.random() < 0.5):
            seq.append("(")
            remaining -= 1
            opened += 1
            depth += 1
            best = max(best, depth)
        else:
            seq.append(")")
            opened -= 1
            depth -= 1
    return {"x": _spaced(seq)}, str(best)


@register_skill("kv_recall", 2, "recall the value of a key", ("{pairs} ? {k} =", "find {k} in {pairs} ->", "lookup {pairs} key {k} :"))
def _kv_recall(rng, split):
    n = _length(rng, split, (2, 3), (4, 5))
    keys = rng.sample(LETTERS, n)
    values = [rng.randint(0, 9) for _ in keys]
    i = rng.randrange(n)
    pairs = " ".join(f"{k} {v}" for k, v in zip(keys, values))
    return {"pairs": pairs, "k": keys[i]}, str(values[i])


def eval_items(skill: str, split: str, n: int, seed: int) -> list[dict]:
    """A fixed, seeded evaluation set: n dicts with prompt and answer."""
    rng = random.Random(f"eval/{skill}/{split}/{seed}")
    sk = get_skill(skill)
    return [dict(zip(("prompt", "answer"), sk.example(rng, split))) for _ in range(n)]
