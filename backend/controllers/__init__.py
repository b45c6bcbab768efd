"""Controller strategies behind one interface, from one registry.

A strategy implements `propose(history, current_weights) -> Proposal`. The
built-in strategies register with `@register_strategy` exactly as a user's
would; every proposal then passes through the shared constraints.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Proposal:
    weights: dict[str, float]
    """New mixture weights (sum to 1 after constraints)."""
    rationale: dict[str, str]
    """One line per domain with the numbers behind the change."""
    forecast: dict[str, dict] = field(default_factory=dict)
    """Per steer skill: current score and the expected score at the next checkpoint."""


@dataclass
class History:
    """What a strategy may see: steer skills only (held-out skills are never
    shown to the controller)."""

    domains: list[str]
    skill_domains: dict[str, list[str]]
    """Steer skill -> domains that stream it."""
    scores: dict[str, list[dict]]
    """Steer skill -> [{step, tokens_seen, value, stderr, n}] by step."""
    domain_loss: dict[str, list[dict]] = field(default_factory=dict)
    """Domain -> [{step, tokens_seen, value, stderr, n}] held-out loss by step."""
    checkpoint_tokens: int = 0
    """Tokens between checkpoints (for forecasts)."""
    estimates: dict[str, list[dict]] = field(default_factory=dict)
    """Steer skill -> latent capability estimates by step (backend.capability):
    score, lo, hi, slope, slope_lo, slope_hi. Computed from `scores` when empty."""
    blocked: dict[str, str] = field(default_factory=dict)
    """Steer skills the Goodhart guard holds back (skill -> alert message)."""
    mixtures: list[dict] = field(default_factory=list)
    """[{step, tokens_seen, weights}] by checkpoint: the mixture trained in
    the stretch that ended at that checkpoint (step 0: the initial one)."""

    def latent(self) -> dict[str, list[dict]]:
        if self.estimates:
            return self.estimates
        from backend.capability import estimate

        rows = [{**m, "skill": s, "metric": "exact_match"} for s, ms in self.scores.items() for m in ms]
        return estimate(rows, self.checkpoint_tokens or 1)


STRATEGIES: dict[str, type] = {}


def register_strategy(name: str):
    """Register a strategy class under `name`."""

    def deco(cls):
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return deco


def get_strategy(name: str, cfg):
    """An instance of the named strategy; the error lists what exists."""
    if name not in STRATEGIES:
        raise KeyError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[name](cfg)


# built-in strategies register on import, like a user's would
from backend.controllers import deficit, doremi, mixing_law, odm, static  # noqa: E402,F401
