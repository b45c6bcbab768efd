"""Mixture weights: the one rule for weights typed by a person, stored in a
config, or read from an imported schedule.

Weights are an object over exactly the run's domains; each a finite number
>= 0, not all zero; they are renormalised to sum to 1.
"""

from __future__ import annotations

import math


class WeightsError(ValueError):
    """Weights that cannot be a mixture; the message names the domain."""

    def __init__(self, message: str, domain: str | None = None):
        super().__init__(message)
        self.domain = domain
        """The domain whose weight is wrong; None when the fault is the whole
        object (not an object, a missing domain, all zero)."""


def validate_weights(weights, domains: list[str]) -> dict[str, float]:
    """Check weights for the given domains and return them renormalised.

    Refuses: a non-object, unknown or missing domains, non-numbers,
    non-finite or negative values, and all-zero weights."""
    if not isinstance(weights, dict):
        raise WeightsError(f"expected an object mapping domain to weight, got {type(weights).__name__}")
    unknown = [k for k in weights if k not in domains]
    if unknown:
        raise WeightsError(f"unknown domain {unknown[0]!r} (domains: {', '.join(domains)})", unknown[0])
    missing = [d for d in domains if d not in weights]
    if missing:
        raise WeightsError(f"missing weight for domain {missing[0]!r}")
    out = {}
    for d in domains:
        v = weights[d]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise WeightsError(f"weight of {d!r} is not a number: {v!r}", d)
        try:
            finite = math.isfinite(v)
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            # str() of an int beyond 4300 digits raises; its size says enough
            shown = f"an integer of {v.bit_length()} bits" if isinstance(v, int) else str(v)
            raise WeightsError(f"weight of {d!r} is not finite: {shown}", d)
        if v < 0:
            raise WeightsError(f"weight of {d!r} is negative: {v!r}", d)
        out[d] = float(v) + 0.0  # -0.0 is 0.0
    total = sum(out.values())
    if total == math.inf:  # each weight finite, their sum past the largest float: scale first
        top = max(out.values())
        out = {d: v / top for d, v in out.items()}
        total = sum(out.values())
    if total <= 0:
        raise WeightsError("all weights are zero")
    return {d: v / total for d, v in out.items()}
