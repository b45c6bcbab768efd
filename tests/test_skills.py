"""backend/data/skills.py: every skill's answer is right (parsed back from the
prompt and recomputed), evaluation sets are fixed and seeded with the same
values under every template, and the held-out variant differs from the steer
one in template (1 vs 0, 2, 3) and in value range of the same difficulty
(letters a-f vs g-l, lower 2/3 vs upper 1/3 of the numbers, 1/0 vs x/o,
( ) vs [ ])."""

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from backend.data.skills import (
    HOLDOUT_TEMPLATE,
    LETTERS,
    SKILLS,
    STEER_TEMPLATES,
    eval_items,
    get_skill,
    register_skill,
)

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("steer", "holdout", "train")
ALL_SKILLS = sorted(SKILLS)
LETTER_SKILLS = ("copy", "reverse", "sort")
NUMBER_SKILLS = ("add2", "add3", "mul1")

# The value ranges the design gives each split.
STEER_LETTERS, HOLDOUT_LETTERS = set("abcdef"), set("ghijkl")
NUMBER_RANGES = {  # digits -> (steer range, holdout range): lower 2/3, upper 1/3
    2: (range(10, 70), range(70, 100)),
    3: (range(100, 700), range(700, 1000)),
}
SYMBOLS = {
    "parity": ({"1", "0"}, {"x", "o"}),
    "brackets": ({"(", ")"}, {"[", "]"}),
}

# Each field is matched tightly, so a prompt can split only one way
# ("sum of 1 2 3 4 :" is 12 + 34) and fits exactly one template.
LETTER_RUN = r"[a-z](?: [a-z])*"
SYMBOL_RUN = r"\S(?: \S)*"
FIELD_PATTERNS = {
    "copy": {"x": LETTER_RUN},
    "reverse": {"x": LETTER_RUN},
    "sort": {"x": LETTER_RUN},
    "add2": {"a": r"\d \d", "b": r"\d \d"},
    "add3": {"a": r"\d \d \d", "b": r"\d \d \d"},
    "mul1": {"a": r"\d \d", "b": r"\d"},
    "parity": {"x": SYMBOL_RUN},
    "brackets": {"x": SYMBOL_RUN},
    "kv_recall": {"pairs": r"[a-z] \d(?: [a-z] \d)*", "k": r"[a-z]"},
}


def template_regex(skill: str, template: str) -> str:
    pattern = re.escape(template)
    for name in re.findall(r"\{(\w+)\}", template):
        field = FIELD_PATTERNS[skill][name]
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{field})")
    return pattern


def parse(skill: str, prompt: str) -> tuple[int, dict]:
    """(template index, fields) of a prompt; it must fit exactly one template."""
    hits = []
    for i, template in enumerate(get_skill(skill).templates):
        m = re.fullmatch(template_regex(skill, template), prompt)
        if m:
            hits.append((i, m.groupdict()))
    assert len(hits) == 1, f"{skill}: prompt {prompt!r} fits templates {[i for i, _ in hits]}"
    return hits[0]


def number(spaced: str) -> int:
    digits = spaced.split(" ")
    assert all(len(d) == 1 and d.isdigit() for d in digits), spaced  # one digit per symbol
    assert digits[0] != "0", spaced  # a real n-digit number
    return int("".join(digits))


def depth(seq: list[str]) -> int:
    pairs = [p for p in ("()", "[]") if seq[0] == p[0]]
    assert pairs, seq
    opener, closer = pairs[0]
    d = best = 0
    for b in seq:
        assert b in (opener, closer), f"mixed brackets {seq}"
        d += 1 if b == opener else -1
        assert d >= 0, "closes before it opens"
        best = max(best, d)
    assert d == 0, "unbalanced"
    return best


def solve(skill: str, f: dict) -> str:
    """The answer recomputed independently from the parsed fields."""
    if skill in LETTER_SKILLS:
        x = f["x"].split(" ")
        assert set(x) <= set(LETTERS)
        return " ".join({"copy": x, "reverse": x[::-1], "sort": sorted(x)}[skill])
    if skill in ("add2", "add3"):
        return " ".join(str(number(f["a"]) + number(f["b"])))
    if skill == "mul1":
        return " ".join(str(number(f["a"]) * int(f["b"])))
    if skill == "parity":
        bits = f["x"].split(" ")
        one = "1" if set(bits) <= {"0", "1"} else "x"
        assert set(bits) <= {"0", "1"} or set(bits) <= {"x", "o"}, f"mixed symbols {bits}"
        return "even" if bits.count(one) % 2 == 0 else "odd"
    if skill == "brackets":
        return str(depth(f["x"].split(" ")))
    if skill == "kv_recall":
        toks = f["pairs"].split(" ")
        keys, values = toks[::2], toks[1::2]
        assert len(set(keys)) == len(keys) and f["k"] in keys
        return values[keys.index(f["k"])]
    raise AssertionError(f"no solver for {skill}")


def symbols(skill: str, f: dict) -> set[str]:
    """The symbols whose sets steer and holdout split between them."""
    if skill in LETTER_SKILLS or skill in SYMBOLS:
        return set(f["x"].split(" "))
    if skill == "kv_recall":
        return set(f["pairs"].split(" ")[::2]) | {f["k"]}
    raise AssertionError(skill)


def numbers(skill: str, f: dict) -> list[int]:
    """The numbers whose range steer and holdout split between them."""
    return [number(f["a"])] if skill == "mul1" else [number(f["a"]), number(f["b"])]


def size(skill: str, f: dict) -> int:
    """The item's difficulty knob: the same range in every split."""
    if skill in LETTER_SKILLS or skill == "parity":
        return len(f["x"].split(" "))
    if skill == "brackets":
        return len(f["x"].split(" ")) // 2  # pairs
    if skill == "kv_recall":
        return len(f["pairs"].split(" ")) // 2
    if skill == "mul1":
        return int(f["b"])
    return len(f["a"].replace(" ", "")) + len(f["b"].replace(" ", ""))


SIZES = {"copy": {2, 3, 4}, "reverse": {2, 3, 4}, "sort": {2, 3, 4}, "parity": {3, 4, 5},
         "brackets": {2, 3, 4}, "kv_recall": {2, 3}, "mul1": set(range(2, 10)),
         "add2": {4}, "add3": {6}}


def check_split(skill: str, split: str, f: dict) -> None:
    """The item's values lie in the split's part of the value range."""
    if skill in LETTER_SKILLS or skill == "kv_recall":
        allowed = {"steer": STEER_LETTERS, "holdout": HOLDOUT_LETTERS}.get(split, set(LETTERS))
        assert symbols(skill, f) <= allowed, (skill, split, f)
    elif skill in SYMBOLS:
        steer, hold = SYMBOLS[skill]
        used = symbols(skill, f)
        ok = {"steer": [steer], "holdout": [hold]}.get(split, [steer, hold])
        assert any(used <= s for s in ok), (skill, split, f)  # never a mix
    elif skill in NUMBER_SKILLS:
        steer, hold = NUMBER_RANGES[3 if skill == "add3" else 2]
        for v in numbers(skill, f):
            assert v in {"steer": steer, "holdout": hold}.get(split, range(steer.start, hold.stop)), (skill, split, f)
    assert size(skill, f) in SIZES[skill], (skill, split, f)


def sample(skill: str, split: str, n: int = 300, template=None) -> list[tuple[int, dict, str]]:
    """n examples as (template index, fields, answer)."""
    rng = random.Random(f"test/{skill}/{split}/{template}")
    out = []
    for _ in range(n):
        prompt, answer = get_skill(skill).example(rng, split, template)
        t, fields = parse(skill, prompt)
        out.append((t, fields, answer))
    return out


def test_the_suite_is_registered():
    assert set(SKILLS) == {"copy", "reverse", "sort", "add2", "add3", "mul1", "parity", "brackets", "kv_recall"}
    for s in map(SKILLS.get, SKILLS):
        assert 1 <= s.difficulty <= 5 and s.description
        assert len(s.templates) == 4 and len(set(s.templates)) == 4, s.name


def test_steer_and_holdout_templates():
    assert STEER_TEMPLATES == (0, 2, 3) and HOLDOUT_TEMPLATE == 1
    assert HOLDOUT_TEMPLATE not in STEER_TEMPLATES
    for s in map(SKILLS.get, SKILLS):
        assert set(STEER_TEMPLATES) | {HOLDOUT_TEMPLATE} == set(range(len(s.templates)))


@pytest.mark.parametrize("skill", ALL_SKILLS)
@pytest.mark.parametrize("split", SPLITS)
def test_answers_are_correct(skill, split):
    items = sample(skill, split)
    for t, fields, answer in items:
        assert answer == solve(skill, fields), (fields, answer)
        check_split(skill, split, fields)
    # without a template: steer uses template 0, held-out 1, training all four
    expected = {"steer": {STEER_TEMPLATES[0]}, "holdout": {HOLDOUT_TEMPLATE}}.get(split, {0, 1, 2, 3})
    assert {t for t, _, _ in items} == expected


@pytest.mark.parametrize("skill", ALL_SKILLS)
@pytest.mark.parametrize("split", ("steer", "holdout"))
@pytest.mark.parametrize("template", range(4))
def test_an_explicit_template_is_used_with_the_split_values(skill, split, template):
    for t, fields, answer in sample(skill, split, n=50, template=template):
        assert t == template
        assert answer == solve(skill, fields)
        check_split(skill, split, fields)


@pytest.mark.parametrize("skill", ALL_SKILLS)
def test_training_text_is_prompt_then_answer(skill):
    sk = get_skill(skill)
    patterns = [re.compile(template_regex(skill, t) + r" (?P<answer>[^\n]+)") for t in sk.templates]
    used = set()
    rng = random.Random(1)
    for _ in range(200):
        text = sk.training_text(rng)
        hits = [(i, m) for i, p in enumerate(patterns) if (m := p.fullmatch(text))]
        assert len(hits) == 1, f"{skill}: {text!r} fits templates {[i for i, _ in hits]}"
        i, m = hits[0]
        used.add(i)
        fields = {k: v for k, v in m.groupdict().items() if k != "answer"}
        assert solve(skill, fields) == m["answer"], text
        check_split(skill, "train", fields)
    assert used == {0, 1, 2, 3}
    # the documented contract: prompt + " " + answer of a training example
    for seed in range(20):
        prompt, answer = sk.example(random.Random(seed), "train")
        assert sk.training_text(random.Random(seed)) == f"{prompt} {answer}"


@pytest.mark.parametrize("skill", LETTER_SKILLS + ("kv_recall",))
def test_holdout_letters_are_disjoint_from_steer(skill):
    def letters(split):
        return set().union(*(symbols(skill, f) for _, f, _ in sample(skill, split)))

    steer, hold, train = letters("steer"), letters("holdout"), letters("train")
    assert steer == STEER_LETTERS  # all of a-f, nothing else
    assert hold == HOLDOUT_LETTERS  # all of g-l, nothing else
    assert not steer & hold
    assert train == STEER_LETTERS | HOLDOUT_LETTERS == set(LETTERS)


@pytest.mark.parametrize("skill", NUMBER_SKILLS)
def test_holdout_numbers_are_the_upper_third(skill):
    def values(split):
        return [v for _, f, _ in sample(skill, split) for v in numbers(skill, f)]

    digits = 3 if skill == "add3" else 2
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    steer_range, hold_range = NUMBER_RANGES[digits]
    # the ranges are the lower two thirds and the upper third of the n-digit numbers
    assert steer_range.start == lo and hold_range.stop == hi + 1 and steer_range.stop == hold_range.start
    assert len(steer_range) == 2 * len(hold_range)

    steer, hold, train = values("steer"), values("holdout"), values("train")
    assert set(steer) <= set(steer_range) and set(hold) <= set(hold_range)
    assert max(steer) < min(hold)
    # each split spreads over its whole part, not a corner of it
    span = len(steer_range) // 10
    assert min(steer) < steer_range.start + span and max(steer) >= steer_range.stop - span
    assert min(hold) < hold_range.start + span and max(hold) >= hold_range.stop - span
    # training draws from both parts
    assert any(v in steer_range for v in train) and any(v in hold_range for v in train)


def test_mul1_digit_has_the_same_range_in_every_split():
    for split in SPLITS:
        assert {int(f["b"]) for _, f, _ in sample("mul1", split)} == set(range(2, 10)), split


@pytest.mark.parametrize("skill", sorted(SYMBOLS))
def test_holdout_symbols_are_disjoint_from_steer(skill):
    steer_symbols, hold_symbols = SYMBOLS[skill]
    assert not steer_symbols & hold_symbols

    def used(split):
        return [symbols(skill, f) for _, f, _ in sample(skill, split)]

    assert set().union(*used("steer")) == steer_symbols
    assert set().union(*used("holdout")) == hold_symbols
    train = used("train")
    # training sees both symbol sets, each item only one of them
    assert all(s <= steer_symbols or s <= hold_symbols for s in train)
    assert any(s <= steer_symbols for s in train) and any(s <= hold_symbols for s in train)


@pytest.mark.parametrize("skill", ALL_SKILLS)
def test_holdout_has_the_same_difficulty_as_steer(skill):
    for split in SPLITS:
        assert {size(skill, f) for _, f, _ in sample(skill, split)} == SIZES[skill], split
    if skill == "brackets":  # the same nesting depths too
        depths = {split: {solve(skill, f) for _, f, _ in sample(skill, split)} for split in SPLITS}
        assert depths["steer"] == depths["holdout"] == depths["train"] == {"1", "2", "3", "4"}
    if skill == "parity":
        answers = {split: {a for _, _, a in sample(skill, split)} for split in SPLITS}
        assert all(a == {"even", "odd"} for a in answers.values())


@pytest.mark.parametrize("skill", ALL_SKILLS)
def test_eval_items_are_fixed_and_seeded(skill):
    a = eval_items(skill, "steer", 20, seed=0)
    assert a == eval_items(skill, "steer", 20, seed=0)
    assert len(a) == 20 and all(set(i) == {"prompt", "answer"} for i in a)
    assert a != eval_items(skill, "steer", 20, seed=1)
    # item i depends on (skill, split, seed, i) only, not on n
    assert eval_items(skill, "steer", 30, seed=0)[:20] == a
    assert eval_items(skill, "steer", 1, seed=0) == a[:1]
    hold = eval_items(skill, "holdout", 20, seed=0)
    assert hold == eval_items(skill, "holdout", 20, seed=0)
    assert eval_items(skill, "holdout", 30, seed=0)[:20] == hold
    # without a template: steer items use template 0, held-out items template 1
    assert {parse(skill, i["prompt"])[0] for i in a} == {STEER_TEMPLATES[0]}
    assert {parse(skill, i["prompt"])[0] for i in hold} == {HOLDOUT_TEMPLATE}
    for split, items in (("steer", a), ("holdout", hold)):
        for item in items:
            fields = parse(skill, item["prompt"])[1]
            assert item["answer"] == solve(skill, fields)
            check_split(skill, split, fields)


@pytest.mark.parametrize("skill", ALL_SKILLS)
@pytest.mark.parametrize("split", ("steer", "holdout"))
def test_each_template_draws_its_own_items(skill, split):
    # independent looks: the steer templates' item-sampling errors must not repeat
    default = eval_items(skill, split, 25, seed=3)
    per_template = {}
    for template in range(4):
        items = eval_items(skill, split, 25, seed=3, template=template)
        parsed = [parse(skill, i["prompt"]) for i in items]
        assert {t for t, _ in parsed} == {template}
        for item, (_, fields) in zip(items, parsed):
            assert item["answer"] == solve(skill, fields)
            check_split(skill, split, fields)
        per_template[template] = [f for _, f in parsed]
    default_template = STEER_TEMPLATES[0] if split == "steer" else HOLDOUT_TEMPLATE
    assert [parse(skill, i["prompt"])[1] for i in default] == per_template[default_template]
    for a in STEER_TEMPLATES:
        for b in STEER_TEMPLATES:
            if a < b:
                same = sum(x == y for x, y in zip(per_template[a], per_template[b]))
                assert same < 25, (a, b)  # small value spaces may repeat a few items, never all


@pytest.mark.parametrize("skill", ALL_SKILLS)
def test_eval_item_i_is_seeded_by_skill_split_seed_template_and_i(skill):
    # each item has its own generator, keyed by (skill, split, seed, template, i),
    # so an item never depends on the items before it, nor on n
    sk = get_skill(skill)
    for split in ("steer", "holdout"):
        for template in range(4):
            items = eval_items(skill, split, 10, seed=5, template=template)
            for i, item in enumerate(items):
                fields, answer = sk.make(random.Random(f"eval/{skill}/{split}/5/{template}/{i}"), split)
                assert item == {"prompt": sk.templates[template].format(**fields), "answer": answer}


def test_eval_items_of_the_two_splits_differ():
    for skill in ALL_SKILLS:
        steer = eval_items(skill, "steer", 20, seed=0, template=0)
        hold = eval_items(skill, "holdout", 20, seed=0, template=0)
        assert steer != hold, skill


def test_eval_items_do_not_depend_on_global_random_state():
    random.seed(1)
    a = eval_items("add3", "steer", 5, seed=4)
    random.seed(2)
    assert eval_items("add3", "steer", 5, seed=4) == a


def test_eval_items_are_the_same_in_another_process():
    code = ("import json; from backend.data.skills import eval_items; "
            "print(json.dumps([eval_items(s, p, 5, seed=7, template=2) for s in ('kv_recall', 'add3') "
            "for p in ('steer', 'holdout')]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    here = [eval_items(s, p, 5, seed=7, template=2) for s in ("kv_recall", "add3") for p in ("steer", "holdout")]
    assert json.loads(out) == here


def test_unknown_skill_lists_the_known_ones():
    with pytest.raises(KeyError) as e:
        get_skill("divide")
    assert "'divide'" in str(e.value) and "kv_recall" in str(e.value)
    with pytest.raises(KeyError):
        eval_items("divide", "steer", 3, seed=0)


def _make(rng, split):
    v = {"steer": "s", "holdout": "h"}.get(split, rng.choice("sh"))
    return {"x": v}, v


def test_register_skill_refuses_duplicates_and_fewer_than_four_templates():
    before = dict(SKILLS.items())
    with pytest.raises(ValueError, match="already registered"):
        register_skill("copy", 1, "again", ("a {x}", "b {x}", "c {x}", "d {x}"))(_make)
    assert SKILLS.get("copy") is before["copy"]
    for n in (1, 2, 3):
        with pytest.raises(ValueError, match="at least 4 templates"):
            register_skill(f"test-{n}-templates", 1, "x", tuple(f"t{i} {{x}}" for i in range(n)))(_make)
    assert dict(SKILLS.items()) == before


def test_register_skill_accepts_four_templates():
    name = "test-four-templates"
    try:
        assert register_skill(name, 1, "x", ("s0 {x} =", "h1 {x} =", "s2 {x} =", "s3 {x} ="))(_make) is _make
        sk = get_skill(name)
        assert eval_items(name, "steer", 2, seed=0) == [{"prompt": "s0 s =", "answer": "s"}] * 2
        assert eval_items(name, "holdout", 2, seed=0) == [{"prompt": "h1 h =", "answer": "h"}] * 2
        assert eval_items(name, "steer", 1, seed=0, template=3) == [{"prompt": "s3 s =", "answer": "s"}]
        assert sk.example(random.Random(0), "holdout") == ("h1 h =", "h")
        with pytest.raises(ValueError, match="already registered"):
            register_skill(name, 1, "x", ("a {x}", "b {x}", "c {x}", "d {x}"))(_make)
    finally:
        if name in SKILLS:
            SKILLS.remove(name)
