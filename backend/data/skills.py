"""The synthetic skill suite: small algorithmic skills of graded difficulty.

Each skill has
- an infinite seeded training stream (every template, the full value range),
- a fixed evaluation set (`steer` split) measured under the steer templates
  (0, 2 and 3) on one part of the value range (letters a-f, smaller numbers),
- a held-out variant (`holdout` split: template 1, the other part of the
  value range: letters g-l, larger numbers) of the same difficulty, watched
  by the Goodhart guard and never seen by the controller.

Symbols are separated by spaces so that the byte-level BPE keeps one symbol
per token (" a", " 7"); digits are always split one per token.

A skill registers itself in SKILLS with `@register_skill`, the same way a
user's would.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

from backend.registry import Registry

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
    """Prompt templates; {fields} come from make(). Template 1 is the
    held-out variant's, the others the steer evaluation's; training uses all."""
    make: Maker

    def example(self, rng: random.Random, split: str, template: int | None = None) -> tuple[str, str]:
        """One (prompt, answer) pair; the training text is prompt + " " + answer.
        Without a template: steer items use template 0, held-out items
        template 1, training items any template."""
        fields, answer = self.make(rng, split)
        if template is None:
            template = {"steer": STEER_TEMPLATES[0], "holdout": HOLDOUT_TEMPLATE}.get(split)
        if template is None:
            template = rng.randrange(len(self.templates))
        return self.templates[template].format(**fields), answer

    def training_text(self, rng: random.Random) -> str:
        prompt, answer = self.example(rng, "train")
        return f"{prompt} {answer}"


SKILLS: Registry[Skill] = Registry("skill")
"""Skill name -> Skill."""


def register_skill(name: str, difficulty: int, description: str, templates: tuple[str, ...]):
    """Decorator: register a skill maker under `name`; a duplicate
    (DuplicateName) or fewer than 4 templates (ValueError) is refused."""

    def deco(make: Maker) -> Maker:
        if len(templates) < 4:
            raise ValueError(f"skill {name!r}: needs at least 4 templates (3 steer, 1 holdout)")
        SKILLS.add(name, Skill(name, difficulty, description, templates, make))
        return make

    return deco


def get_skill(name: str) -> Skill:
    """The registered skill; UnknownName (a KeyError) lists the known ones."""
    return SKILLS.get(name)


STEER_TEMPLATES = (0, 2, 3)
HOLDOUT_TEMPLATE = 1


def _alphabet(split: str) -> str:
    """Steer items use letters a-f, held-out items g-l, training all 12."""
    return {"steer": LETTERS[:6], "holdout": LETTERS[6:]}.get(split, LETTERS)


def _letters(rng: random.Random, split: str, lo: int = 2, hi: int = 4) -> list[str]:
    alphabet = _alphabet(split)
    return [rng.choice(alphabet) for _ in range(rng.randint(lo, hi))]


def _spaced(symbols) -> str:
    return " ".join(str(s) for s in symbols)


@register_skill("copy", 1, "repeat a letter string", ("copy {x} =", "repeat {x} ->", "echo {x} :", "say {x} again :"))
def _copy(rng, split):
    x = _letters(rng, split)
    return {"x": _spaced(x)}, _spaced(x)


@register_skill("reverse", 2, "reverse a letter string", ("reverse {x} =", "backwards {x} ->", "flip {x} :", "mirror {x} :"))
def _reverse(rng, split):
    x = _letters(rng, split)
    return {"x": _spaced(x)}, _spaced(x[::-1])


@register_skill("sort", 3, "sort letters alphabetically", ("sort {x} =", "order {x} ->", "arrange {x} :", "alphabetize {x} :"))
def _sort(rng, split):
    x = _letters(rng, split)
    return {"x": _spaced(x)}, _spaced(sorted(x))


def _number(rng: random.Random, split: str, digits: int) -> int:
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    mid = lo + (hi - lo) * 2 // 3
    return rng.randint(*{"steer": (lo, mid), "holdout": (mid + 1, hi)}.get(split, (lo, hi)))


@register_skill("add2", 3, "add two 2-digit numbers", ("{a} + {b} =", "add {a} and {b} ->", "sum of {a} {b} :", "plus {a} {b} :"))
def _add2(rng, split):
    a, b = _number(rng, split, 2), _number(rng, split, 2)
    return {"a": _spaced(str(a)), "b": _spaced(str(b))}, _spaced(str(a + b))


@register_skill("add3", 4, "add two 3-digit numbers", ("{a} + {b} =", "add {a} and {b} ->", "sum of {a} {b} :", "plus {a} {b} :"))
def _add3(rng, split):
    a, b = _number(rng, split, 3), _number(rng, split, 3)
    return {"a": _spaced(str(a)), "b": _spaced(str(b))}, _spaced(str(a + b))


@register_skill("mul1", 4, "multiply a 2-digit number by a digit", ("{a} * {b} =", "times {a} by {b} ->", "product {a} {b} :", "multiply {a} {b} :"))
def _mul1(rng, split):
    a = _number(rng, split, 2)
    b = rng.randint(2, 9)
    return {"a": _spaced(str(a)), "b": str(b)}, _spaced(str(a * b))


@register_skill("parity", 2, "even or odd number of ones", ("parity {x} =", "ones {x} even or odd ->", "count {x} :", "bits {x} :"))
def _parity(rng, split):
    # held-out strings use x/o for 1/0: the same task on other symbols
    one, zero = ("x", "o") if split == "holdout" else ("1", "0")
    if split == "train" and rng.random() < 0.5:
        one, zero = "x", "o"
    bits = [rng.randint(0, 1) for _ in range(rng.randint(3, 5))]
    x = [one if b else zero for b in bits]
    return {"x": _spaced(x)}, "even" if sum(bits) % 2 == 0 else "odd"


@register_skill("brackets", 3, "maximum nesting depth of brackets", ("depth {x} =", "nesting of {x} ->", "deepest {x} :", "levels {x} :"))
def _brackets(rng, split):
    n = rng.randint(2, 4)  # pairs of brackets
    # held-out strings use [ ]: the same task on other symbols
    opener, closer = ("[", "]") if split == "holdout" else ("(", ")")
    if split == "train" and rng.random() < 0.5:
        opener, closer = "[", "]"
    seq, opened, depth, best = [], 0, 0, 0
    remaining = n
    while remaining or opened:
        if remaining and (not opened or rng.random() < 0.5):
            seq.append(opener)
            remaining -= 1
            opened += 1
            depth += 1
            best = max(best, depth)
        else:
            seq.append(closer)
            opened -= 1
            depth -= 1
    return {"x": _spaced(seq)}, str(best)


@register_skill("kv_recall", 2, "recall the value of a key", ("{pairs} ? {k} =", "find {k} in {pairs} ->", "lookup {pairs} key {k} :", "get {k} from {pairs} :"))
def _kv_recall(rng, split):
    n = rng.randint(2, 3)
    keys = rng.sample(_alphabet(split), n)
    values = [rng.randint(0, 9) for _ in keys]
    i = rng.randrange(n)
    pairs = " ".join(f"{k} {v}" for k, v in zip(keys, values))
    return {"pairs": pairs, "k": keys[i]}, str(values[i])


def eval_items(skill: str, split: str, n: int, seed: int, template: int | None = None) -> list[dict]:
    """A fixed, seeded evaluation set: n dicts with prompt and answer. Each
    template draws its own items, keyed by (skill, split, seed, template, i),
    so the templates of a checkpoint are independent looks at the skill: their
    item-sampling errors do not repeat across templates."""
    sk = get_skill(skill)
    if template is None:
        template = STEER_TEMPLATES[0] if split == "steer" else HOLDOUT_TEMPLATE
    out = []
    for i in range(n):
        fields, answer = sk.make(random.Random(f"eval/{skill}/{split}/{seed}/{template}/{i}"), split)
        out.append({"prompt": sk.templates[template].format(**fields), "answer": answer})
    return out
