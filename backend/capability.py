"""Latent capability: a per-skill state-space estimate from noisy measurements.

Each checkpoint measures a skill as a few exact-match scores (one per prompt
template, n items each). None of them is the capability; each is the
capability seen through sampled items, one prompt and one scoring rule. We
estimate it with a Kalman filter in logit space:

    state      x_t = [level_t, slope_t]           (logit units; slope per checkpoint)
    transition level_t = level_{t-1} + d * slope_{t-1} + w_level
               slope_t = slope_{t-1} + w_slope     (d: tokens between the
                                                     checkpoints / tokens per checkpoint)
    observe    y_t = level_t + v_t

y_t is logit(p) of the templates' pooled counts, p = (k + 0.5)/(N + 1) (k
correct of N answers over all J templates, so 0 and 1 stay finite), and
Var(v_t) is the delta-method variance 1/((n + 1) p (1 - p)) of the n items
the templates share, plus the spread across templates (between-template
variance tau^2, pooled over the checkpoints so far) over J. The filter is causal: the estimate at checkpoint t uses checkpoints
<= t only, exactly what the controller could know then.

Reported per checkpoint: score = sigmoid(level), a 95% interval
sigmoid(level +- 1.96 sd), and the learning slope in score per checkpoint and
per token (p (1 - p) times the logit slope), with its own 95% interval.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

Z95 = 1.96
# Process noise per checkpoint, logit units^2. Learning curves of the
# synthetic skills move up to ~2 logits per checkpoint and change pace over a
# few checkpoints; these let the filter follow that without chasing noise.
LEVEL_NOISE = 0.02
SLOPE_NOISE = 0.02
PRIOR_SLOPE_VAR = 1.0


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x > -700 else 0.0


def observation(scores: list[tuple[float, int]], tau2: float) -> tuple[float, float]:
    """(y, variance) in logit space from [(exact-match value, n)] of one
    checkpoint's templates. The templates ask the same n items, so pooling
    their counts (k correct of N answers) sharpens the point, p = (k + 0.5) /
    (N + 1), but not the item-sampling error: its delta-method variance is
    1/((n + 1) p (1 - p)) with n the items, not the answers. The spread
    across the J templates adds tau^2/J."""
    k = sum(round(value * n) for value, n in scores)
    n_all = sum(n for _, n in scores)
    n_items = max(n for _, n in scores)
    p = (k + 0.5) / (n_all + 1)
    return _logit(p), 1 / ((n_items + 1) * p * (1 - p)) + tau2 / len(scores)


def template_spread(per_checkpoint: list[list[tuple[float, int]]]) -> float:
    """Between-template variance tau^2 (logit units), method of moments,
    pooled over checkpoints: mean of max(0, var(y_j) - mean(R_j))."""
    vals = []
    for scores in per_checkpoint:
        if len(scores) < 2:
            continue
        ys, rs = [], []
        for value, n in scores:
            k = round(value * n)
            p = (k + 0.5) / (n + 1)
            ys.append(_logit(p))
            rs.append(1 / ((n + 1) * p * (1 - p)))
        vals.append(max(0.0, float(np.var(ys, ddof=1)) - sum(rs) / len(rs)))
    return sum(vals) / len(vals) if vals else 0.0


def kalman(points: list[dict], tokens_per_checkpoint: float) -> list[dict]:
    """Filter one skill. points: [{step, tokens_seen, scores: [(value, n)]}]
    ordered by step. Returns one estimate per point."""
    if not points:
        return []
    out = []
    x = P = None
    prev_tokens = None
    for i, pt in enumerate(points):
        # the template spread known so far (causal, like everything else)
        tau2 = template_spread([p["scores"] for p in points[: i + 1]])
        y, r = observation(pt["scores"], tau2)
        if x is None:
            x = np.array([y, 0.0])
            P = np.diag([r + 1.0, PRIOR_SLOPE_VAR])
        else:
            d = max(1e-9, (pt["tokens_seen"] - prev_tokens) / tokens_per_checkpoint)
            F = np.array([[1.0, d], [0.0, 1.0]])
            Q = np.diag([LEVEL_NOISE * d, SLOPE_NOISE * d])
            x = F @ x
            P = F @ P @ F.T + Q
        # update with the observation of the level
        S = P[0, 0] + r
        K = P[:, 0] / S
        x = x + K * (y - x[0])
        P = P - np.outer(K, P[0, :])
        prev_tokens = pt["tokens_seen"]
        out.append(_summarise(pt, x, P, tokens_per_checkpoint))
    return out


def _summarise(pt: dict, x: np.ndarray, P: np.ndarray, tokens_per_checkpoint: float) -> dict:
    level, slope = float(x[0]), float(x[1])
    sd_level, sd_slope = math.sqrt(max(P[0, 0], 0)), math.sqrt(max(P[1, 1], 0))
    p = _sigmoid(level)
    # score change per checkpoint: d sigmoid = p (1 - p) d logit
    g = p * (1 - p)
    return {
        "step": pt["step"],
        "tokens_seen": pt["tokens_seen"],
        "score": p,
        "lo": _sigmoid(level - Z95 * sd_level),
        "hi": _sigmoid(level + Z95 * sd_level),
        "slope": g * slope,
        "slope_lo": g * (slope - Z95 * sd_slope),
        "slope_hi": g * (slope + Z95 * sd_slope),
        "slope_per_token": g * slope / tokens_per_checkpoint,
        "raw_mean": sum(v for v, _ in pt["scores"]) / len(pt["scores"]),
        "n_templates": len(pt["scores"]),
    }


def estimate(measurements: list[dict], tokens_per_checkpoint: float,
             skills: list[str] | None = None) -> dict[str, list[dict]]:
    """Latent estimates per skill from store measurement rows (exact-match
    rows of every template are used; other scorers stay raw)."""
    grouped: dict[str, dict[int, dict]] = defaultdict(dict)
    for m in measurements:
        if m.get("metric") != "exact_match" or m.get("skill") is None:
            continue
        if skills is not None and m["skill"] not in skills:
            continue
        pt = grouped[m["skill"]].setdefault(m["step"], {"step": m["step"], "tokens_seen": m["tokens_seen"],
                                                        "scores": []})
        pt["scores"].append((float(m["value"]), int(m.get("n") or 1)))
    return {s: kalman([pts[k] for k in sorted(pts)], tokens_per_checkpoint) for s, pts in grouped.items()}
