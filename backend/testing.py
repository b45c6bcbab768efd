"""Fakes of what the loop drives, like lm-eval's DummyLM: the real
ClosedLoop, store, capability estimator, guard and strategies run in-process
in milliseconds, with no torch, transformers or lm-eval.

- FakeTrainer: counts the tokens each domain received; a deterministic loss.
- FakeSampler: draws each sequence's domain by the weights as
  MixtureSampler does (sequence i from its own seeded generator), and hands
  the trainer {domain: sequences} instead of token ids.
- FakeEvaluator: each skill's exact-match score is a deterministic, rising
  function of the tokens its domains received, so a mixture change shows in
  the scores; a skill in `teach_to_test` rises on its steer tasks only (its
  held-out twin stays where it started: what the Goodhart guard catches).
- FakeCheckpointer: the trainer's state and the meta as JSON, written
  atomically.

`fake_components(...)` is the factory ClosedLoop takes as `components`;
`crash_at(phase, step)` an on_phase hook that raises Crash there.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from backend import vocab
from backend.config import RunConfig
from backend.data.domains import SOURCES
from backend.loop import Components

FAKE_TEXT_TOKENS = 1_000_000  # size of a text domain whose config gives none (natural mixture)


@dataclass
class FakeDomain:
    """A domain's identity without its documents."""

    name: str
    source: str
    skills: list[str] = field(default_factory=list)
    size_tokens: int = FAKE_TEXT_TOKENS


class FakeTrainer:
    """A Trainer whose model is the tokens each domain has received."""

    def __init__(self, domains: list[str], context_length: int):
        self.step = 0
        self.context_length = context_length
        self.tokens = dict.fromkeys(domains, 0)
        self.last_lr: float | None = None
        self.last_grad_norm: float | None = None

    def train_step(self, batch: dict[str, int]) -> float:
        """batch: domain -> sequences. Returns a loss that falls with steps."""
        for d, n in batch.items():
            self.tokens[d] += n * self.context_length
        self.step += 1
        self.last_lr, self.last_grad_norm = 1e-3, 1.0 / (1.0 + 0.05 * self.step)  # as Trainer keeps them
        return 5.0 / (1.0 + 0.1 * self.step)

    def state_dict(self) -> dict:
        """Step and tokens per domain."""
        return {"step": self.step, "tokens": dict(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict."""
        self.step = state["step"]
        self.tokens = dict(state["tokens"])


class _Batches:
    """A generator with close(), as Sampler.batches returns."""

    def __init__(self, it: Iterator):
        self.it = it

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.it)

    def close(self) -> None:
        self.it.close()


class FakeSampler:
    """Sequence i's domain is drawn from random.Random(f"seq/{seed}/{i}"),
    as in MixtureSampler; a batch is {domain: sequences}."""

    def __init__(self, domains: list[str], seed: int, context_length: int = 1,
                 train_tokens: dict[str, int] | None = None):
        self.names = list(domains)
        self.seed = seed
        self.sequences_drawn = 0
        self.context_length = context_length
        self.train_tokens = train_tokens or {}  # text domains' sizes (the others stream endlessly)
        self.sequences = dict.fromkeys(self.names, 0)  # drawn per domain

    def batch(self, weights: dict[str, float], batch_size: int) -> dict[str, int]:
        """Sequences per domain of one batch."""
        total = sum(weights.get(n, 0.0) for n in self.names)
        counts = dict.fromkeys(self.names, 0)
        for _ in range(batch_size):
            u = random.Random(f"seq/{self.seed}/{self.sequences_drawn}").random() * total
            acc = 0.0
            for n in self.names:
                acc += weights.get(n, 0.0)
                if u < acc:
                    break
            counts[n] += 1
            self.sequences[n] += 1
            self.sequences_drawn += 1
        return counts

    def batches(self, weights: dict[str, float], batch_size: int, n: int, *, background: bool = False):
        """Sampler.batches (always in line)."""
        return _Batches(self.batch(weights, batch_size) for _ in range(n))

    def state_dict(self) -> dict:
        """Sequences drawn so far, in all and per domain."""
        return {"sequences_drawn": self.sequences_drawn, "seed": self.seed, "sequences": dict(self.sequences)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict."""
        self.sequences_drawn = state["sequences_drawn"]
        self.sequences = dict(state.get("sequences", self.sequences))

    def usage(self, weights: dict[str, float]) -> dict[str, dict]:
        """Sampler.usage from the sequences drawn per domain."""
        out = {}
        for n in self.names:
            tokens, size = self.sequences[n] * self.context_length, self.train_tokens.get(n)
            out[n] = {"tokens": tokens, "epochs": tokens / size if size else None, "train_tokens": size}
        return out

    def document_tokens(self) -> dict[str, float]:
        """Sampler.document_tokens: every fake document is 100 tokens."""
        return dict.fromkeys(self.names, 100.0)


class FakeEvaluator:
    """Scores as a deterministic function of the tokens each skill's domains
    received: p = 0.05 + 0.9 * (1 - exp(-tokens / scale))."""

    def __init__(self, cfg: RunConfig, domains: list[FakeDomain], trainer: FakeTrainer, *,
                 items: int | None = None, scale: float = 2000.0, teach_to_test: tuple[str, ...] = ()):
        self.trainer = trainer
        self.items = items or cfg.evaluation.items_per_skill
        self.scale = scale  # tokens for the score to rise 63% of its way
        self.teach_to_test = set(teach_to_test)
        self.feeds = {s: [d.name for d in domains if s in d.skills] for s in cfg.steer_skills}
        kinds = vocab.SKILL_KINDS if cfg.evaluation.holdout else ("steer",)
        templates = {"steer": (0, 2, 3), "holdout": (1,)}
        self.task_configs = [
            {"task": f"fake_{vocab.skill_name(s, k)}_t{t}",
             "metadata": {"skill": vocab.skill_name(s, k), "template": t, "output": "gen"}}
            for s in cfg.steer_skills for k in kinds for t in templates[k]]

    def score(self, skill: str) -> float:
        """The true exact-match rate of a stored skill name now."""
        base = vocab.base_skill(skill)
        if vocab.is_holdout(skill) and base in self.teach_to_test:
            return 0.05
        fed = sum(self.trainer.tokens[d] for d in self.feeds[base])
        return 0.05 + 0.9 * (1.0 - math.exp(-fed / self.scale))

    def evaluate(self, round_index: int, on_progress=None) -> tuple[list[dict], list[dict]]:
        """Evaluator.evaluate: one exact-match measurement per task, items
        answered correctly = round(score * items); one sample per task."""
        measurements, samples = [], []
        for k, t in enumerate(self.task_configs):
            if on_progress is not None:
                on_progress(k, len(self.task_configs), t["metadata"]["skill"])
            skill = t["metadata"]["skill"]
            p = round(self.score(skill) * self.items) / self.items
            measurements.append({"task": t["task"], "skill": skill, "metric": "exact_match", "value": p,
                                 "stderr": math.sqrt(p * (1 - p) / self.items), "n": self.items,
                                 "prompt_variant": f"template{t['metadata']['template']}",
                                 "decoding": "greedy", "scorer": "exact_match"})
            samples.append({"task": t["task"], "doc_id": round_index, "prompt": "q", "target": "a",
                            "response": "a" if p >= 0.5 else "b", "correct": int(p >= 0.5)})
        return measurements, samples

    def domain_losses(self) -> dict[str, dict]:
        """A held-out loss per domain that falls with its tokens (nats/token)."""
        return {d: {"value": 4.0 / (1.0 + n / self.scale), "stderr": 0.01, "n": 4}
                for d, n in self.trainer.tokens.items()}


class FakeCheckpointer:
    """The trainer's state and the meta in `root/step-XXXXXXX/state.json`,
    written under a temporary name and renamed into place."""

    def __init__(self, root: Path, trainer: FakeTrainer):
        self.root = Path(root)
        self.trainer = trainer

    def save(self, step: int, meta: dict) -> str:
        """Checkpointer.save."""
        final = self.root / f"step-{step:07d}"
        final.mkdir(parents=True, exist_ok=True)
        tmp = final / "state.json.tmp"
        tmp.write_text(json.dumps({"trainer": self.trainer.state_dict(), "meta": meta}))
        os.replace(tmp, final / "state.json")
        return str(final)

    def load(self, path: str) -> dict:
        """Checkpointer.load."""
        state = json.loads((Path(path) / "state.json").read_text())
        self.trainer.load_state_dict(state["trainer"])
        return state["meta"]

    def problem(self, path: str) -> str | None:
        """Checkpointer.problem: state.json must be there and parse."""
        try:
            json.loads((Path(path) / "state.json").read_text())
        except (OSError, ValueError) as e:
            return f"{path}: state.json unreadable ({type(e).__name__})"
        return None

    def prune(self, keep_steps: set[int]) -> list[str]:
        """Checkpointer.prune: the fakes keep every checkpoint."""
        return []


def fake_components(**evaluator_options) -> Callable[[RunConfig, Path], Components]:
    """A Components factory for ClosedLoop(components=...): the run's
    domains (as configured) with the fakes above; `evaluator_options` go to
    FakeEvaluator (items, scale, teach_to_test)."""

    def build(cfg: RunConfig, run_dir: Path) -> Components:
        domains = [FakeDomain(d.name, d.source, list(d.skills), d.size_tokens or FAKE_TEXT_TOKENS)
                   for d in cfg.data.domains]
        names = [d.name for d in domains]
        trainer = FakeTrainer(names, cfg.data.context_length)
        sized = {d.name: d.size_tokens or FAKE_TEXT_TOKENS for d in cfg.data.domains if SOURCES.get(d.source).sized}
        return Components(domains=domains, trainer=trainer,
                          sampler=FakeSampler(names, cfg.seed, cfg.data.context_length, sized),
                          evaluator=FakeEvaluator(cfg, domains, trainer, **evaluator_options),
                          checkpointer=FakeCheckpointer(run_dir / "checkpoints", trainer))

    return build


class Crash(RuntimeError):
    """A crash injected by `crash_at`."""


def crash_at(phase: str, step: int) -> Callable[[str, int], None]:
    """An on_phase hook that raises Crash after `phase` of the checkpoint at `step`."""

    def hook(p: str, s: int) -> None:
        if (p, s) == (phase, step):
            raise Crash(f"injected crash after {phase} at step {step}")

    return hook
