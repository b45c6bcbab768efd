"""The mixture sampler: each training sequence draws its domain by the
current weights and is packed from that domain's documents to the context
length.

Sequence i of a run is a pure function of (seed, i, weights): its random
generator is seeded from both. The sampler's whole state is therefore the
number of sequences drawn, so a resumed run draws exactly what the
uninterrupted run would, and a replay with the same schedule draws the same
data.
"""

from __future__ import annotations

import random

import numpy as np


class MixtureSampler:
    def __init__(self, domains, tokenizer, context_length: int, seed: int):
        self.domains = list(domains)
        self.names = [d.name for d in self.domains]
        self.tokenizer = tokenizer
        self.length = context_length + 1  # inputs and shifted targets
        self.seed = seed
        self.eos = tokenizer.eos_token_id
        # the raw `tokenizers` object: ~10x less overhead per call than the wrapper
        self._encode = tokenizer.backend_tokenizer.encode
        self.sequences_drawn = 0

    # -- state --------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"sequences_drawn": self.sequences_drawn, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed") != self.seed:
            raise ValueError(f"sampler state has seed {state.get('seed')}, run has {self.seed}")
        self.sequences_drawn = int(state["sequences_drawn"])

    # -- drawing --------------------------------------------------------------
    def batch(self, weights: dict[str, float], batch_size: int) -> tuple[np.ndarray, dict[str, int]]:
        """(batch_size, context_length + 1) int64 token ids and sequences per domain."""
        p = np.array([weights.get(n, 0.0) for n in self.names], dtype=np.float64)
        cum = np.cumsum(p / p.sum())
        out = np.empty((batch_size, self.length), dtype=np.int64)
        counts = dict.fromkeys(self.names, 0)
        for b in range(batch_size):
            rng = random.Random(f"seq/{self.seed}/{self.sequences_drawn}")
            j = min(int(np.searchsorted(cum, rng.random(), side="right")), len(self.names) - 1)
            out[b] = self.pack(self.domains[j], rng, "train")
            counts[self.names[j]] += 1
            self.sequences_drawn += 1
        return out, counts

    def pack(self, domain, rng: random.Random, split: str) -> np.ndarray:
        """Documents of one domain, EOS-separated, cut to the context length."""
        ids: list[int] = []
        while len(ids) < self.length:
            # ~8 characters per token is generous; a short window is topped up
            text = domain.document(rng, split, max_chars=self.length * 8)
            ids += self._encode(text, add_special_tokens=False).ids[: self.length * 2]
            ids.append(self.eos)
        return np.asarray(ids[: self.length], dtype=np.int64)

    def heldout(self, n_per_domain: int) -> dict[str, np.ndarray]:
        """Fixed held-out sequences per domain for the per-domain loss
        (text domains: their held-out documents; synthetic: a separate seed)."""
        out = {}
        for d in self.domains:
            rng = random.Random(f"heldout/{self.seed}/{d.name}")
            out[d.name] = np.stack([self.pack(d, rng, "holdout") for _ in range(n_per_domain)])
        return out
