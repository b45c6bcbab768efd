"""Constraints every strategy's proposal passes through.

The projection is exact: the result is the point of {floor <= w <= cap,
|w - current| <= max_change, sum w = 1} reached by shifting the smoothed
proposal by one constant (found by bisection), so it always sums to 1. The
Goodhart hold enters as one more upper bound: a held domain's current weight.
The objective's mixture shares (objective.domains.<d>.min / max) narrow one
domain's floor and cap, and are kept exactly like them.
"""

from __future__ import annotations

from backend.mixture import WeightsError


def apply_constraints(proposed: dict[str, float], current: dict[str, float], cfg,
                      held: set[str] = frozenset(),
                      shares: dict[str, tuple[float, float]] | None = None) -> dict[str, float]:
    """Smooth toward uniform, then project onto floor/cap/max-change bounds
    with sum 1. `cfg` is a ControllerConfig (floor, cap, max_change,
    smoothing). A domain in `held` (the Goodhart hold) ends at most at its
    current weight, or at the floor where it stands below it. `shares`:
    domain -> (least, largest) share (Objective.shares), kept like floor
    and cap."""
    names = list(current)
    k = len(names)
    shares = shares or {}
    total = sum(max(0.0, proposed[n]) for n in names) or 1.0
    x = [(1 - cfg.smoothing) * max(0.0, proposed[n]) / total + cfg.smoothing / k for n in names]
    floor = [max(cfg.floor, shares.get(n, (0.0, 1.0))[0]) for n in names]
    cap = [min(cfg.cap, shares.get(n, (0.0, 1.0))[1]) for n in names]
    lo = [max(f, current[n] - cfg.max_change) for n, f in zip(names, floor)]
    hi = [min(c, current[n] + cfg.max_change) for n, c in zip(names, cap)]
    if sum(lo) > 1 or sum(hi) < 1 or any(l > h for l, h in zip(lo, hi)):
        # the current mixture itself breaks floor/cap (or a share): drop the step limit
        lo, hi = list(floor), list(cap)
    hold = [min(h, max(current[n], l)) if n in held else h for n, l, h in zip(names, lo, hi)]
    if sum(hold) >= 1:  # else every domain is held where no mixture sums to 1: the bounds win
        hi = hold
    if sum(lo) > 1 or sum(hi) < 1 or any(l > h for l, h in zip(lo, hi)):
        named = f" and the objective's shares ({', '.join(sorted(shares))})" if shares else ""
        raise WeightsError(f"floor {cfg.floor} and cap {cfg.cap}{named} admit no mixture of {k} domains")
    a, b = -1.0 - max(x), 1.0 + max(x)
    for _ in range(100):
        mid = (a + b) / 2
        s = sum(min(h, max(l, xi + mid)) for xi, l, h in zip(x, lo, hi))
        a, b = (mid, b) if s < 1 else (a, mid)
    w = [min(h, max(l, xi + (a + b) / 2)) for xi, l, h in zip(x, lo, hi)]
    s = sum(w)
    return {n: wi / s for n, wi in zip(names, w)}
