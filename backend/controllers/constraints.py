"""Constraints every strategy's proposal passes through, and validation of
weights typed by a person.

The projection is exact: the result is the point of {floor <= w <= cap,
|w - current| <= max_change, sum w = 1} reached by shifting the smoothed
proposal by one constant (found by bisection), so it always sums to 1.
"""

from __future__ import annotations

import math


class WeightsError(ValueError):
    """Weights that cannot be a mixture; the message names the domain."""


def validate_weights(weights, domains: list[str]) -> dict[str, float]:
    """Check weights for the given domains and return them renormalised.

    Refuses: a non-object, unknown or missing domains, non-numbers,
    non-finite or negative values, and all-zero weights."""
    if not isinstance(weights, dict):
        raise WeightsError(f"expected an object mapping domain to weight, got {type(weights).__name__}")
    unknown = [k for k in weights if k not in domains]
    if unknown:
        raise WeightsError(f"unknown domain {unknown[0]!r} (domains: {', '.join(domains)})")
    missing = [d for d in domains if d not in weights]
    if missing:
        raise WeightsError(f"missing weight for domain {missing[0]!r}")
    out = {}
    for d in domains:
        v = weights[d]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise WeightsError(f"weight of {d!r} is not a number: {v!r}")
        try:
            finite = math.isfinite(v)
        except OverflowError:  # an int too large for a float
            finite = False
        if not finite:
            raise WeightsError(f"weight of {d!r} is not finite: {str(v)[:40]}")
        if v < 0:
            raise WeightsError(f"weight of {d!r} is negative: {v!r}")
        out[d] = float(v)
    total = sum(out.values())
    if total <= 0:
        raise WeightsError("all weights are zero")
    return {d: v / total for d, v in out.items()}


def apply_constraints(proposed: dict[str, float], current: dict[str, float], cfg) -> dict[str, float]:
    """Smooth toward uniform, then project onto floor/cap/max-change bounds
    with sum 1. `cfg` is a ControllerConfig."""
    names = list(current)
    k = len(names)
    total = sum(max(0.0, proposed[n]) for n in names) or 1.0
    x = [(1 - cfg.smoothing) * max(0.0, proposed[n]) / total + cfg.smoothing / k for n in names]
    lo = [max(cfg.floor, current[n] - cfg.max_change) for n in names]
    hi = [min(cfg.cap, current[n] + cfg.max_change) for n in names]
    if sum(lo) > 1 or sum(hi) < 1 or any(l > h for l, h in zip(lo, hi)):
        # the current mixture itself breaks floor/cap: drop the step limit
        lo, hi = [cfg.floor] * k, [cfg.cap] * k
    if sum(lo) > 1 or sum(hi) < 1:
        raise WeightsError(
            f"floor {cfg.floor} and cap {cfg.cap} admit no mixture of {k} domains"
        )
    a, b = -1.0 - max(x), 1.0 + max(x)
    for _ in range(100):
        mid = (a + b) / 2
        s = sum(min(h, max(l, xi + mid)) for xi, l, h in zip(x, lo, hi))
        a, b = (mid, b) if s < 1 else (a, mid)
    w = [min(h, max(l, xi + (a + b) / 2)) for xi, l, h in zip(x, lo, hi)]
    s = sum(w)
    return {n: wi / s for n, wi in zip(names, w)}
