"""The mixture sampler: each training sequence draws its domain by the
current weights, then its tokens: a token-uniform window of a text domain's
token cache (documents EOS-separated, so a window may span several), or,
for a stream domain (synthetic, random), documents from its endless seeded
stream packed to the context length.

Sequence i of a run is a pure function of (seed, i, weights): its domain and
its window start come from a counter-based hash of (seed, i), computed for a
whole batch at once with numpy; a stream domain's documents come from a
`random.Random` seeded from (seed, i). The sampler's whole state is
therefore the next global sequence index, so a resumed run draws exactly
what the uninterrupted run would, a replay with the same schedule draws the
same data, and ranks of a distributed run that draw disjoint index slices
draw together what one process draws (`sequences`).

`batches` feeds a training stretch: in line on the CPU, or prefetched in a
background thread while a GPU trains on the batch before.
"""

from __future__ import annotations

import os
import queue
import random
import threading
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from backend.data.tokenizer import encoder

DEFAULT_CACHE = Path(os.environ.get("CLOSED_LOOP_CACHE", "~/.cache/closed-loop")).expanduser() / "token-cache"
"""Token caches of a sampler built without a cache_dir (a script's own)."""

# hash streams: which decision of sequence i a hash value makes
_DOMAIN, _START, _HELDOUT = 0, 1, 2


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective mix of uint64 values."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash64(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
    """(n,) uint64: a counter-based hash of (seed, stream, each index),
    independent across the three (vectorised; same values on every
    machine and numpy version)."""
    with np.errstate(over="ignore"):
        key = _mix(np.array([(seed * 0x9E3779B97F4A7C15 + stream * 0xD1B54A32D192ED03) & (2**64 - 1)],
                            dtype=np.uint64))
        return _mix(_mix(np.asarray(index, dtype=np.uint64) ^ key) + key)


def uniform(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
    """(n,) float64 in [0, 1) from hash64 (its top 53 bits)."""
    return (hash64(seed, index, stream) >> np.uint64(11)).astype(np.float64) * 2.0**-53


class MixtureSampler:
    """Draws (B, T+1) token batches from the domains by mixture weights."""

    def __init__(self, domains, tokenizer, context_length: int, seed: int, *,
                 cache_dir: str | os.PathLike | None = None, progress: bool = False):
        """Text domains (those with `attach`) open or build their token
        caches under cache_dir (default DEFAULT_CACHE) for `tokenizer`."""
        self.domains = list(domains)
        self.names = [d.name for d in self.domains]
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.length = context_length + 1  # inputs and shifted targets
        self.seed = seed
        self.eos = tokenizer.eos_token_id
        # tokenizers' own thread pool would fight torch's threads for the cores, and
        # after it has run, every fork (prefetch_process) prints a warning
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        # the raw `tokenizers` object: ~10x less overhead per call than the wrapper
        self._tokenizer = tokenizer.backend_tokenizer
        self._encode = encoder(self._tokenizer)
        for d in self.domains:
            if hasattr(d, "attach"):
                d.attach(tokenizer, cache_dir or DEFAULT_CACHE, progress=progress)
        self.sequences_drawn = 0
        """The next global sequence index."""
        self.domain_tokens = dict.fromkeys(self.names, 0)
        """Domain -> training tokens (targets: context_length per sequence)
        of the sequences [0, counted) (`usage`)."""
        self.counted = 0
        """The global index up to which domain_tokens counts."""

    # -- state --------------------------------------------------------------
    def state_dict(self) -> dict:
        """The next sequence index, the per-domain token count and where it
        stands (and the seed, to refuse a wrong run's state)."""
        return {"sequences_drawn": self.sequences_drawn, "seed": self.seed,
                "domain_tokens": dict(self.domain_tokens), "counted": self.counted}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict of a sampler with the same seed (one
        saved before per-domain counts were kept counts from where it stands)."""
        if state.get("seed") != self.seed:
            raise ValueError(f"sampler state has seed {state.get('seed')}, run has {self.seed}")
        self.sequences_drawn = int(state["sequences_drawn"])
        self.domain_tokens = {n: int(state.get("domain_tokens", {}).get(n, 0)) for n in self.names}
        self.counted = int(state.get("counted", self.sequences_drawn))

    def usage(self, weights: dict[str, float]) -> dict[str, dict]:
        """Domain -> {"tokens": training tokens (context_length a sequence)
        of the sequences drawn so far, "epochs": passes over its training
        tokens, "train_tokens": their number} (epochs and train_tokens None
        for an endless stream). The sequences drawn since the last call
        count as drawn with `weights`; only their domains are computed
        (cheap, and the same on every rank whichever slice it drew)."""
        for a in range(self.counted, self.sequences_drawn, 1 << 20):  # 1M sequences (8 MB) at a time
            idx = np.arange(a, min(a + (1 << 20), self.sequences_drawn), dtype=np.uint64)
            picks = np.bincount(self._domains(idx, weights), minlength=len(self.names))
            for name, n in zip(self.names, picks):
                self.domain_tokens[name] += int(n) * self.context_length
        self.counted = self.sequences_drawn
        out = {}
        for d in self.domains:
            size = len(d.train_tokens) if getattr(d, "train_tokens", None) is not None else None
            tokens = self.domain_tokens[d.name]
            out[d.name] = {"tokens": tokens, "epochs": tokens / size if size else None, "train_tokens": size}
        return out

    # -- drawing --------------------------------------------------------------
    def _domains(self, idx: np.ndarray, weights: dict[str, float]) -> np.ndarray:
        """(n,) domain positions of the sequences at global indices idx."""
        p = np.array([weights.get(n, 0.0) for n in self.names], dtype=np.float64)
        cum = np.cumsum(p / p.sum())
        return np.minimum(np.searchsorted(cum, uniform(self.seed, idx, _DOMAIN), side="right"), len(self.names) - 1)

    def sequences(self, indices: np.ndarray, weights: dict[str, float]) -> tuple[np.ndarray, dict[str, int]]:
        """The sequences at global indices `indices` under `weights`:
        (len(indices), context_length + 1) int64 token ids, and training
        tokens (context_length per sequence) per domain. Each row is a pure
        function of (seed, index, weights); sampler state is untouched."""
        idx = np.asarray(indices, dtype=np.uint64).reshape(-1)
        out = np.empty((len(idx), self.length), dtype=np.int64)
        dom = self._domains(idx, weights)
        tokens = dict.fromkeys(self.names, 0)
        for j, d in enumerate(self.domains):
            rows = np.flatnonzero(dom == j)
            if rows.size == 0:
                continue
            tokens[d.name] = int(rows.size) * self.context_length
            if getattr(d, "train_tokens", None) is not None:
                out[rows] = self._windows(d.train_tokens, hash64(self.seed, idx[rows], _START))
            else:
                # ~2 characters a token in the synthetic texts: most rows fill in one round
                out[rows] = self._stream(d, [random.Random(f"seq/{self.seed}/{i}") for i in idx[rows].tolist()],
                                         "train", chars_ahead=2 * self.length)
        return out, tokens

    def batch(self, weights: dict[str, float], batch_size: int) -> tuple[np.ndarray, dict[str, int]]:
        """The next batch_size sequences: (batch_size, context_length + 1)
        int64 token ids and sequences per domain; advances the state."""
        idx = np.arange(self.sequences_drawn, self.sequences_drawn + batch_size, dtype=np.uint64)
        out, tokens = self.sequences(idx, weights)
        self.sequences_drawn += batch_size
        return out, {d: t // self.context_length for d, t in tokens.items()}

    def batches(self, weights: dict[str, float], batch_size: int, n: int, *, background: bool) -> Iterator:
        """The next n batches as (B, T+1) torch int64 tensors; the state
        advances by B as each is taken. With background=True (a GPU
        computes: the CPU is free) each is drawn in a thread while the trainer
        works on the one before. On the CPU each is drawn in line, between two
        steps: one vectorised call. A forked prefetch process measured 0.83x
        the fixed-batch loop on 2 cores (it takes a core from the step's
        threads) and a thread no better than in line (the interpreter lock).
        A batch of 16 draws in 0.13 ms from text domains' caches and ~0.9 ms
        from the demo's synthetic streams (their skill makers and `random`,
        ~1.3% of a step); `bench/throughput.py` reads 0.96-0.99x on the demo
        and 0.99-1.00x on text domains only (`--config
        bench/text-domains.toml`)."""
        import torch

        if background:
            return prefetch(lambda: torch.from_numpy(self.batch(weights, batch_size)[0]), n)
        start = self.sequences_drawn

        def make(k: int) -> np.ndarray:
            a = start + k * batch_size
            return self.sequences(np.arange(a, a + batch_size, dtype=np.uint64), weights)[0]

        def take():
            for k in range(n):
                rows = make(k)
                self.sequences_drawn += batch_size
                yield torch.from_numpy(rows)

        return take()

    def _windows(self, tokens: np.ndarray, h: np.ndarray) -> np.ndarray:
        """(n, T+1) int64 windows of `tokens` starting at h mod its length,
        token-uniform; a window past the end wraps to the start (a corpus
        shorter than one window repeats)."""
        n = len(tokens)
        start = (h % np.uint64(n)).astype(np.int64)
        if n >= self.length:
            # starts in the last T tokens wrap: gather those rows through a modulo
            pos = start[:, None] + np.arange(self.length)
            return tokens[np.where(pos >= n, pos - n, pos)].astype(np.int64)
        return tokens[(start[:, None] + np.arange(self.length)) % n].astype(np.int64)

    def _stream(self, domain, rngs: list[random.Random], split: str, chars_ahead: int = 0) -> np.ndarray:
        """(len(rngs), T+1) int64: each row packed from documents of a
        stream domain drawn from its own generator, EOS-separated; every
        round of documents is tokenized in one call. Each round draws, per
        row, documents until chars_ahead characters (at least one): drawing
        ahead changes no row (a row is the prefix of its documents in
        order), it only saves rounds; a generator shared across rows
        (heldout) must draw none ahead."""
        rows: list[list[int]] = [[] for _ in rngs]
        todo = list(range(len(rngs)))
        while todo:
            texts, owners = [], []
            for r in todo:
                chars = 0
                while not texts or owners[-1] != r or chars < chars_ahead:
                    # ~8 characters per token is generous; a short window is topped up
                    texts.append(domain.document(rngs[r], split, max_chars=self.length * 8))
                    owners.append(r)
                    chars += len(texts[-1])
            for r, ids in zip(owners, self._encode(texts)):
                if len(rows[r]) < self.length:
                    rows[r] += ids[: self.length * 2]
                    rows[r].append(self.eos)
            todo = [r for r in todo if len(rows[r]) < self.length]
        return np.array([r[: self.length] for r in rows], dtype=np.int64)

    def document_tokens(self, n_docs: int = 100) -> dict[str, float]:
        """Mean tokens per whole document (EOS included) per domain: exact
        for a text domain (its cache), from n_docs seeded draws for a stream:
        what a trainer that samples documents, not tokens, needs to turn
        token shares into document probabilities (backend.exports)."""
        out = {}
        for d in self.domains:
            cache = getattr(d, "cache", None)
            if cache is not None:
                out[d.name] = len(cache.tokens) / cache.n_docs
                continue
            rng = random.Random(f"doclen/{self.seed}/{d.name}")
            texts = [d.document(rng, "train", max_chars=200_000) for _ in range(n_docs)]
            sizes = [len(e.ids) + 1 for e in self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
            out[d.name] = sum(sizes) / len(sizes)
        return out

    def heldout(self, n_per_domain: int) -> dict[str, np.ndarray]:
        """Fixed held-out sequences per domain for the per-domain loss (text
        domains: windows of their held-out documents; streams: a separate seed)."""
        out = {}
        for j, d in enumerate(self.domains):
            if getattr(d, "holdout_tokens", None) is not None:
                h = hash64(self.seed, np.arange(n_per_domain, dtype=np.uint64), _HELDOUT + j)
                out[d.name] = self._windows(d.holdout_tokens, h)
            else:
                rng = random.Random(f"heldout/{self.seed}/{d.name}")
                out[d.name] = np.concatenate([self._stream(d, [rng], "holdout") for _ in range(n_per_domain)])
        return out


def cap_weights(weights: dict[str, float], trained: dict[str, int], train_tokens: dict[str, int],
                max_epochs: dict[str, float], stretch_tokens: int) -> tuple[dict[str, float] | None, dict[str, float]]:
    """Weights for a stretch of `stretch_tokens` training tokens under which
    no domain with a max_epochs passes it: a domain whose share would take
    it past max_epochs x its train_tokens gets the share that reaches it
    exactly, the rest goes to the uncapped domains by their weights.

    :return: (weights, over): over is domain -> the epochs `weights` would
        have reached, for each capped domain (empty: nothing capped; the
        weights come back as given). weights is None when every domain with
        weight is capped (nothing can take the rest)."""
    capped: dict[str, float] = {}
    over: dict[str, float] = {}
    while True:
        free = {d: w for d, w in weights.items() if d not in capped}
        share = 1.0 - sum(capped.values())
        total = sum(free.values())
        new = {d: (capped[d] if d in capped else (w / total * share if total > 0 else 0.0)) for d, w in weights.items()}
        more = {}
        for d, limit in max_epochs.items():
            if d in capped or not new.get(d):
                continue
            room = limit * train_tokens[d] - trained.get(d, 0)
            if new[d] * stretch_tokens > room:
                more[d] = max(0.0, room / stretch_tokens)
                over[d] = (trained.get(d, 0) + new[d] * stretch_tokens) / train_tokens[d]
        if not more:
            if over and not any(new[d] > 0 for d in weights if d not in capped):
                return None, over
            return (new if over else dict(weights)), over
        capped.update(more)


def prefetch(make: Callable[[], object], n: int) -> Iterator:
    """Yield make() n times, producing the next item in a background thread
    while the caller trains on the current one (torch releases the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce():
        try:
            for _ in range(n):
                item = make()
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # surfaces in the consumer
            q.put(e)

    threading.Thread(target=produce, daemon=True).start()
    try:
        for _ in range(n):
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
