"""One vocabulary: the conventions every module shares, defined once.

Run states, held-out skill naming, tokens per step, checkpoint-boundary
arithmetic and the 95% normal quantile. Pure functions of plain values, so
the loop, the CLI, the pages and the benchmarks all import the same rule.
"""

from __future__ import annotations

Z95 = 1.96
"""Two-sided 95% normal quantile: an interval is value +- Z95 * stderr."""

# -- run states ------------------------------------------------------------
RUN_STATES = ("created", "running", "paused", "stopped", "failed", "finished")
LIVE_STATES = ("created", "running", "paused")
"""A run that is not over: a worker holds it, or will."""
WORKING_STATES = ("running", "paused")
"""A worker process should be holding the run (its lease)."""
TERMINAL_STATES = ("stopped", "failed", "finished")
"""No worker holds the run; stopped and failed ones can be resumed."""
POLICIES = ("auto", "human")
COMMANDS = ("pause", "resume", "stop")

# -- held-out skills -------------------------------------------------------
HOLDOUT_SUFFIX = "_holdout"
SKILL_KINDS = ("steer", "holdout")


def holdout_name(skill: str) -> str:
    """The held-out twin of a steer skill: copy -> copy_holdout."""
    return skill + HOLDOUT_SUFFIX


def skill_name(base: str, kind: str) -> str:
    """The stored name of a skill of `kind` (steer | holdout) measuring `base`."""
    if kind not in SKILL_KINDS:
        raise ValueError(f"skill kind must be one of {', '.join(SKILL_KINDS)}, got {kind!r}")
    return base if kind == "steer" else holdout_name(base)


def is_holdout(skill: str) -> bool:
    """Whether a stored skill name is a held-out twin (for stores written
    without a `kind` column; prefer the skills table's `kind`)."""
    return skill.endswith(HOLDOUT_SUFFIX)


def base_skill(skill: str) -> str:
    """copy_holdout -> copy; copy -> copy."""
    return skill.removesuffix(HOLDOUT_SUFFIX)


# -- tokens and checkpoints ------------------------------------------------


def tokens_per_step(batch_size: int, context_length: int) -> int:
    """Tokens trained by one optimizer step: sequences x tokens per sequence."""
    return batch_size * context_length


def config_tokens_per_step(cfg: dict) -> int:
    """tokens_per_step of a resolved config as stored (a plain dict)."""
    return tokens_per_step(cfg["train"]["batch_size"], cfg["data"]["context_length"])


def next_boundary(step: int, every: int, total: int) -> int:
    """The first checkpoint step after `step` (multiples of `every`, and the
    last step `total`)."""
    return min(total, (step // every + 1) * every)


def is_boundary(step: int, every: int, total: int) -> bool:
    """Whether a checkpoint is taken at `step` (step 0 included)."""
    return step == total or (step % every == 0 and step < total)


def checkpoint_steps(every: int, total: int) -> list[int]:
    """Every checkpoint step of a run: 0, every, 2*every, ..., total."""
    steps = list(range(0, total, every))
    return steps + [total]


# -- metrics ----------------------------------------------------------------
UNBOUNDED_METRICS = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "answer_nll",
                               "loss"})
"""Metrics that are not a score in [0, 1] (losses, perplexities): they are
estimated on their own scale, drawn without clipping to [0, 1], and never
steered toward a target score."""


def is_score(metric: str | None) -> bool:
    """Whether a metric is a score in [0, 1] (accuracy, exact match, f1...)."""
    return (metric or "exact_match") not in UNBOUNDED_METRICS
