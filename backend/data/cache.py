"""Token caches: a text domain tokenized once into a memory-mapped token array
plus a document index, the layout of nanoGPT's `.bin` and Megatron's indexed
datasets, reused by every later run.

One cache is a folder `<cache root>/<domain>-<key>/`:

- `tokens.bin`: every document's token ids followed by EOS, documents in
  source order, raw little-endian uint16 (vocabulary < 65536) or uint32;
- `docs.idx`: int64 offsets into tokens.bin, one per document plus the end
  (document k is tokens[offsets[k]:offsets[k + 1]], its EOS included);
- `meta.json`: dtype, counts, and what the key was made of; `shard_keys`
  names each shard it was built from (shard_key), so a later run's
  preflight skips the files a cache has read whole (read_shards).

The key is a sha256 of the tokenizer (its serialized JSON) and the source's
fingerprint: every file's path, size and modification time (not its
content: hashing a terabyte at every start would cost more than the
training it feeds; a file rewritten in place with the same size and mtime is
the one change this misses). A change of either is a new key, so a new
cache; old ones stay until removed by hand.

A cache is built in a temporary folder beside it and renamed into place, so a
half-written cache is never opened; one that fails its checks on opening
(sizes that do not match its meta) is rebuilt with a CorruptCacheWarning.
Shards (files, or row ranges of a saved dataset) are tokenized in parallel
processes, each writing its own part, then concatenated in order, so neither
the builder nor the trainer ever holds the corpus in memory.
Documents are encoded a word at a time from a cache of each word's ids
(backend.data.tokenizer.WordEncoder: the tokenizer's own ids, ~10x fewer
CPU seconds on prose).

The cache root: `data.cache_dir` when set, else `token-cache/` beside the
run folders (runs/closed_loop.db -> runs/token-cache/), shared by every
run of that database (cache_root).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.data.sources import DataError, Shard

FORMAT = 1
"""Version of the layout above; part of the key."""

# characters handed to the tokenizer per call while building (bounds the
# builder's memory: text and ids of one chunk at a time)
CHUNK_CHARS = 4_000_000
# below this many source bytes a build runs in this process (starting
# worker processes costs seconds)
PARALLEL_MIN_BYTES = 16_000_000


class CorruptCacheWarning(UserWarning):
    """A token cache on disk failed its checks and is being rebuilt."""


def cache_root(cache_dir: str | None, run_dir: str | os.PathLike) -> Path:
    """Where a run's token caches live: data.cache_dir, else token-cache/
    beside the run folder (shared by the runs of one database)."""
    return Path(cache_dir) if cache_dir else Path(run_dir).resolve().parent / "token-cache"


def tokenizer_json(tokenizer) -> str:
    """The tokenizer serialized (a transformers fast tokenizer or a raw
    `tokenizers.Tokenizer`): what keys a cache and what a build process loads."""
    raw = getattr(tokenizer, "backend_tokenizer", tokenizer)
    return raw.to_str()


def shard_key(shard: Shard) -> str:
    """What identifies a shard's data without reading it (its kind, field
    and fingerprint), hashed."""
    return hashlib.sha256(json.dumps([shard.kind, shard.text_field, shard.fingerprint()]).encode()).hexdigest()[:20]


def read_shards(root: str | os.PathLike) -> set[str]:
    """shard_key of every shard that a complete cache under `root` was
    built from: each was read to its end without an error, whatever the
    tokenizer."""
    out: set[str] = set()
    for meta in Path(root).glob("*/meta.json"):
        if ".tmp-" in meta.parent.name or _problem(meta.parent) is not None:
            continue
        keys = json.loads(meta.read_text()).get("shard_keys", [])  # caches built before keys were kept: none
        out.update(k for k in keys if isinstance(k, str))
    return out


@dataclass
class TokenCache:
    """An opened cache: memory-mapped tokens and document offsets."""

    path: Path
    tokens: np.ndarray
    """(n_tokens,) uint16 | uint32 memmap."""
    offsets: np.ndarray
    """(n_docs + 1,) int64 memmap."""

    @property
    def n_docs(self) -> int:
        """Documents in the cache."""
        return len(self.offsets) - 1

    def document(self, k: int) -> np.ndarray:
        """Document k's tokens, EOS included."""
        return self.tokens[self.offsets[k]:self.offsets[k + 1]]


def token_cache(name: str, shards: list[Shard], tokenizer, root: str | os.PathLike, *,
                processes: int | None = None, progress: bool = True) -> TokenCache:
    """The cache of domain `name` over `shards` for `tokenizer` under `root`:
    opened when a complete one exists, else built (in `processes` processes,
    default one per core) and opened. DataError when the shards hold no text."""
    tok_json = tokenizer_json(tokenizer)
    key = hashlib.sha256(json.dumps({
        "format": FORMAT, "tokenizer": hashlib.sha256(tok_json.encode()).hexdigest(),
        "shards": [[s.kind, s.text_field, s.fingerprint()] for s in shards],
    }).encode()).hexdigest()[:20]
    path = Path(root) / f"{name}-{key}"
    if path.exists():
        problem = _problem(path)
        if problem is None:
            return _open(path)
        warnings.warn(f"token cache {path} is corrupt ({problem}): rebuilding", CorruptCacheWarning, stacklevel=2)
        shutil.rmtree(path, ignore_errors=True)
    _build(name, shards, tok_json, tokenizer.eos_token_id if hasattr(tokenizer, "eos_token_id") else None,
           path, processes, progress)
    return _open(path)


def _open(path: Path) -> TokenCache:
    meta = json.loads((path / "meta.json").read_text())
    tokens = np.memmap(path / "tokens.bin", dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
    offsets = np.memmap(path / "docs.idx", dtype=np.int64, mode="r", shape=(meta["n_docs"] + 1,))
    return TokenCache(path, tokens, offsets)


def _problem(path: Path) -> str | None:
    """None when the cache at `path` is complete and consistent, else why not."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        itemsize = np.dtype(meta["dtype"]).itemsize
        n_tokens, n_docs = int(meta["n_tokens"]), int(meta["n_docs"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"meta.json unreadable: {e}"
    for file, want in (("tokens.bin", n_tokens * itemsize), ("docs.idx", (n_docs + 1) * 8)):
        f = path / file
        if not f.is_file() or f.stat().st_size != want:
            return f"{file} is {f.stat().st_size if f.is_file() else 'missing'}, expected {want} bytes"
    last = np.memmap(path / "docs.idx", dtype=np.int64, mode="r", shape=(n_docs + 1,))[-1]
    if int(last) != n_tokens:
        return f"docs.idx ends at {int(last)}, tokens.bin holds {n_tokens}"
    return None


def _build(name: str, shards: list[Shard], tok_json: str, eos: int | None, path: Path,
           processes: int | None, progress: bool) -> None:
    """Tokenize every shard into parts under a temporary folder, concatenate
    them in shard order, then rename the folder into place."""
    from tqdm import tqdm

    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(tok_json).get_vocab_size()
    dtype = np.uint16 if vocab < 2**16 else np.uint32
    if eos is None:
        raise DataError(f"domain {name!r}: the tokenizer has no EOS token to separate documents")
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        jobs = [(s, tok_json, eos, np.dtype(dtype).str, str(tmp / f"part-{i:06d}")) for i, s in enumerate(shards)]
        total = sum(s.size_bytes() for s in {s.path: s for s in shards}.values())
        n = min(processes or os.cpu_count() or 1, len(jobs))
        bar = tqdm(total=len(jobs), unit="shard", desc=f"token cache {name}", disable=not progress)
        if n > 1 and total >= PARALLEL_MIN_BYTES:
            import multiprocessing

            # spawn: the caller may hold torch's threads, which a fork does not survive
            with multiprocessing.get_context("spawn").Pool(n) as pool:
                parts = []
                for part in pool.imap(_tokenize_shard, jobs):
                    parts.append(part)
                    bar.update(1)
        else:
            parts = []
            for job in jobs:
                parts.append(_tokenize_shard(job))
                bar.update(1)
        bar.close()
        n_tokens = sum(t for t, _ in parts)
        if n_tokens == 0:
            raise DataError(f"domain {name!r}: no text found")
        with open(tmp / "tokens.bin", "wb") as out:
            for i in range(len(jobs)):
                part = tmp / f"part-{i:06d}.bin"
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
                part.unlink()
        with open(tmp / "docs.idx", "wb") as out:
            start = 0
            np.zeros(1, np.int64).tofile(out)
            for i, (t, _) in enumerate(parts):
                lengths = np.fromfile(tmp / f"part-{i:06d}.len", dtype=np.int64)
                (start + np.cumsum(lengths)).tofile(out)
                start += t
                (tmp / f"part-{i:06d}.len").unlink()
        n_docs = sum(d for _, d in parts)
        (tmp / "meta.json").write_text(json.dumps({
            "format": FORMAT, "domain": name, "dtype": np.dtype(dtype).name, "n_tokens": n_tokens,
            "n_docs": n_docs, "eos": eos, "shards": [s.path for s in shards],
            "shard_keys": [shard_key(s) for s in shards]}, indent=1))
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same cache first: use theirs
            if _problem(path) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tokenize_shard(job) -> tuple[int, int]:
    """Tokenize one shard into `<part>.bin` (tokens, EOS after each document)
    and `<part>.len` (int64 document lengths); returns (tokens, documents).
    Runs in a build process: everything comes in `job`, picklable."""
    from tokenizers import Tokenizer

    from backend.data.tokenizer import encoder

    shard, tok_json, eos, dtype, part = job
    encode = encoder(Tokenizer.from_str(tok_json))
    n_tokens = n_docs = 0
    with open(part + ".bin", "wb") as out, open(part + ".len", "wb") as lens:
        def flush(texts: list[str]) -> None:
            nonlocal n_tokens, n_docs
            if not texts:
                return
            ids = [np.array(d + [eos], dtype=dtype) for d in encode(texts)]
            np.concatenate(ids).tofile(out)
            sizes = np.array([len(d) for d in ids], dtype=np.int64)
            sizes.tofile(lens)
            n_tokens += int(sizes.sum())
            n_docs += len(ids)

        chunk: list[str] = []
        size = 0
        for text in shard.documents():
            chunk.append(text)
            size += len(text)
            if size >= CHUNK_CHARS:
                flush(chunk)
                chunk, size = [], 0
        flush(chunk)
    return n_tokens, n_docs
