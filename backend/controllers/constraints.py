"""Constraints every strategy's proposal passes through.

The projection is exact: the result is the point of {floor <= w <= cap,
|w - current| <= max_change, sum w = 1} reached by shifting the smoothed
proposal by one constant (found by bisection), so it always sums to 1. The
Goodhart hold enters as one more upper bound: a held domain's current weight.
"""

from __future__ import annotations

from backend.mixture import WeightsError


def apply_constraints(proposed: dict[str, float], current: dict[str, float], cfg,
                      held: set[str] = frozenset()) -> dict[str, float]:
    """Smooth toward uniform, then project onto floor/cap/max-change bounds
    with sum 1. `cfg` is a ControllerConfig (floor, cap, max_change,
    smoothing). A domain in `held` (the Goodhart hold) ends at most at its
    current weight, or at the floor where it stands below it."""
    names = list(current)
    k = len(names)
    total = sum(max(0.0, proposed[n]) for n in names) or 1.0
    x = [(1 - cfg.smoothing) * max(0.0, proposed[n]) / total + cfg.smoothing / k for n in names]
    lo = [max(cfg.floor, current[n] - cfg.max_change) for n in names]
    hi = [min(cfg.cap, current[n] + cfg.max_change) for n in names]
    if sum(lo) > 1 or sum(hi) < 1 or any(l > h for l, h in zip(lo, hi)):
        # the current mixture itself breaks floor/cap: drop the step limit
        lo, hi = [cfg.floor] * k, [cfg.cap] * k
    hold = [min(h, max(current[n], l)) if n in held else h for n, l, h in zip(names, lo, hi)]
    if sum(hold) >= 1:  # else every domain is held where no mixture sums to 1: the bounds win
        hi = hold
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
