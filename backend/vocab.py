"""One vocabulary: the conventions every module shares, defined once.

Run states, held-out skill naming, tokens per step, checkpoint-boundary
arithmetic, which metrics are scores in [0, 1] and the 95% normal
quantile. Pure functions of plain values, so the loop, the CLI, the pages
and the benchmarks all import the same rule.
"""

from __future__ import annotations

import math
import re

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
# Whether a metric is a score in [0, 1] is decided by its name alone, never by
# the values seen so far, so one skill is estimated, drawn and steered on one
# scale for the whole run. The allow list holds the names lm-eval (and this
# project's own harness) report as a mean of per-item scores in [0, 1]; every
# other name (perplexities, losses, bleu, chrf, ter, rouge*, mcc, a custom
# metric) is unbounded. f1 is on it as drop, coqa and the registered f1
# report it; a task reporting f1 in 0-100 (squad_v2) breaks the name's
# promise: see `in_range` and capability.estimate.
SCORE_METRICS = frozenset({
    "exact_match", "em", "acc", "acc_norm", "acc_mutual_info", "acc_bytes", "acc_all", "ll_acc", "f1", "mc1", "mc2",
    "prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc", "inst_level_loose_acc",
    "bleu_acc", "rouge1_acc", "rouge2_acc", "rougeL_acc"})
"""Scores in [0, 1], higher is better: accuracies (ll_acc: this project's
loglikelihood accuracy), exact match, f1, TruthfulQA's mc1 / mc2 and
*_acc, IFEval's strict / loose accuracies; and pass@k (`PASS_AT_K`)."""
PASS_AT_K = re.compile(r"pass(@|_at_)(\d+|k)")
"""pass@1, pass_at_1, pass_at_k (code tasks): a share of problems solved."""
LOSS_METRICS = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "answer_nll", "loss"})
"""Losses and perplexities: not negative, lower is better (their direction
where the task gives none), estimated in -log(value)."""


def _base_metric(metric: str | None) -> str:
    """The metric a name is of: "exact_match/flexible-extract" (an lm-eval
    filter's other than the first, backend.evaluation.lmeval_tasks) is
    exact match; None is exact match."""
    return (metric or "exact_match").split("/", 1)[0]


def is_score(metric: str | None) -> bool:
    """Whether a metric is a score in [0, 1] by its name (SCORE_METRICS,
    PASS_AT_K; None: exact match). Only a score is drawn clipped to [0, 1]
    and steered toward a target."""
    metric = _base_metric(metric)
    return metric in SCORE_METRICS or PASS_AT_K.fullmatch(metric) is not None


def is_loss(metric: str | None) -> bool:
    """Whether a metric is a loss or perplexity by its name (LOSS_METRICS)."""
    return _base_metric(metric) in LOSS_METRICS


def in_range(metric: str | None, value: float) -> bool:
    """Whether `value` lies in the range `metric`'s name promises: [0, 1]
    for a score (1e-9 either side for rounding), >= 0 for a loss or
    perplexity, any finite number otherwise."""
    if not math.isfinite(value):
        return False
    if is_score(metric):
        return -1e-9 <= value <= 1 + 1e-9
    return value >= 0 or not is_loss(metric)
