"""Latent capability: a per-skill state-space estimate from noisy measurements.

Each checkpoint measures a skill as a few exact-match scores (one per prompt
template, n items each). None of them is the capability; each is the
capability seen through sampled items, one prompt and one scoring rule. We
estimate it with a Kalman filter in logit space:

    state      x_t = [level_t, slope_t]           (logit units; slope per checkpoint)
    transition level_t = level_{t-1} + phi d slope_{t-1} + w_level
               slope_t = phi slope_{t-1} + w_slope  (d: tokens between the
                                                     checkpoints / tokens per checkpoint)
    observe    y_t = level_t + v_t

How a learning curve moves is itself uncertain: some rise smoothly (a trend
carries on, phi = 1), some jump and then plateau (extrapolating the jump
overshoots; phi = 0 is a level with no momentum). So three filters run side
by side, phi in DAMPINGS = (1, 0.5, 0): a local linear trend, a damped trend
(Gardner and McKenzie 1985) and a local level. Each is weighted by how well it
predicted this skill's observations so far (its predictive log-likelihood,
older terms discounted by FORGET per checkpoint), and the estimate is their
weighted mixture (mean, and variance including the spread between them):
Bayesian model averaging, causal like everything else here.

Learning curves also jump beyond what any process noise allows: a skill can
go from 0 to half its items in one stretch. So every prediction is gated:
when the innovation nu = y_t - level exceeds GATE standard deviations of its
predicted spread S, the level's and slope's variances grow by nu^2 - S
before the update (innovation-matched process noise), so a filter re-bases on
the new level instead of creeping toward it over several checkpoints.

y_t is logit(p) of the templates' pooled counts, p = (k + 0.5)/(N + 1) (k
correct of N answers over all J templates, so 0 and 1 stay finite), and
Var(v_t) is the delta-method variance of the N answers (each template asks
its own items, so the templates are independent looks; see `observation`),
plus the spread across templates (between-template variance tau^2, pooled
over the checkpoints so far) over J. The filter is causal: the estimate at
checkpoint t uses checkpoints <= t only, exactly what the controller could
know then.

Reported per checkpoint: score = sigmoid(level), a 95% interval
sigmoid(level +- 1.96 sd), and the learning slope in score per checkpoint and
per token (p (1 - p) times the logit slope), with its own 95% interval.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

Z95 = 1.96
# Process noise per checkpoint, logit units^2: the drift the filter follows
# without chasing noise. Larger moves pass the gate instead.
LEVEL_NOISE = 0.02
SLOPE_NOISE = 0.02
PRIOR_SLOPE_VAR = 1.0
DAMPINGS = (1.0, 0.5, 0.0)  # phi of the three dynamics: trend, damped trend, level
FORGET = 0.8  # discount per checkpoint of a dynamics' past predictive log-likelihood
GATE = 2.0  # innovations beyond this many predicted sds re-base the level (a jump)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x > -700 else 0.0


def observation(scores: list[tuple[float, int]], tau2: float, p_hat: float | None = None) -> tuple[float, float]:
    """(y, variance) in logit space from [(exact-match value, n)] of one
    checkpoint's templates. Each template asks its own items, so their counts
    pool: k correct of N answers, p = (k + 0.5) / (N + 1), with the
    delta-method variance 1/((N + 1) q (1 - q)) at q = p. Given the filter's
    predicted score p_hat, the variance is the mean of that one and the one
    at q = p_hat: at q = p alone a count of 0 says almost nothing (the
    pseudo-count puts p at 1/(2N), where the logit is flat), so a skill that
    blipped above 0 would linger there; at q = p_hat alone the filter would
    trust its own prediction. The spread across the J templates adds tau^2/J."""
    k = sum(round(value * n) for value, n in scores)
    n_all = sum(n for _, n in scores)
    p = (k + 0.5) / (n_all + 1)
    r = 1 / ((n_all + 1) * p * (1 - p))
    if p_hat is not None:
        q = min(max(p_hat, 1e-9), 1 - 1e-9)
        r = (r + 1 / ((n_all + 1) * q * (1 - q))) / 2
    return _logit(p), r + tau2 / len(scores)


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


def _filter(points: list[dict], tau2s: list[float], tokens_per_checkpoint: float, phi: float):
    """One gated Kalman filter with damping phi: yields (x, P, log-likelihood
    of the observation under the prediction; 0 for the first) per point.
    tau2s: the template spread known at each point."""
    x = P = None
    prev_tokens = None
    for pt, tau2 in zip(points, tau2s):
        loglik = 0.0
        if x is None:
            y, r = observation(pt["scores"], tau2)
            x = np.array([y, 0.0])
            P = np.diag([r + 1.0, PRIOR_SLOPE_VAR])
        else:
            d = max(1e-9, (pt["tokens_seen"] - prev_tokens) / tokens_per_checkpoint)
            F = np.array([[1.0, phi * d], [0.0, phi]])
            Q = np.diag([LEVEL_NOISE * d, SLOPE_NOISE * d])
            x = F @ x
            P = F @ P @ F.T + Q
            y, r = observation(pt["scores"], tau2, _sigmoid(x[0]))
            nu2, S = (y - x[0]) ** 2, P[0, 0] + r
            loglik = -0.5 * (math.log(2 * math.pi * S) + nu2 / S)
            if nu2 > GATE * GATE * S:  # a jump: re-base instead of creeping toward it
                P[0, 0] += nu2 - S
                P[1, 1] += nu2 - S
        # update with the observation of the level
        S = P[0, 0] + r
        K = P[:, 0] / S
        x = x + K * (y - x[0])
        P = P - np.outer(K, P[0, :])
        prev_tokens = pt["tokens_seen"]
        yield x, P, loglik


def kalman(points: list[dict], tokens_per_checkpoint: float) -> list[dict]:
    """Estimate one skill. points: [{step, tokens_seen, scores: [(value, n)]}]
    ordered by step. Returns one estimate per point: the score and its
    interval from the mixture of the DAMPINGS filters, weighted by their
    discounted predictive likelihood; the learning slope from the local linear
    trend (phi = 1), the one whose slope is the pace of learning rather than
    momentum expected to fade."""
    # the template spread known at each point (causal, like everything else)
    tau2s = [template_spread([p["scores"] for p in points[: i + 1]]) for i in range(len(points))]
    runs = [list(_filter(points, tau2s, tokens_per_checkpoint, phi)) for phi in DAMPINGS]
    trend = runs[DAMPINGS.index(1.0)]
    out, score = [], np.zeros(len(runs))
    for t, pt in enumerate(points):
        score = FORGET * score + np.array([r[t][2] for r in runs])
        w = np.exp(score - score.max())
        w /= w.sum()
        levels = [float(r[t][0][0]) for r in runs]
        level = float(np.dot(w, levels))
        var = sum(wm * (r[t][1][0, 0] + (lm - level) ** 2) for wm, lm, r in zip(w, levels, runs))
        x, P = trend[t][0], trend[t][1]
        out.append(_summarise(pt, level, var, float(x[1]), float(P[1, 1]), tokens_per_checkpoint))
    return out


def _summarise(pt: dict, level: float, var_level: float, slope: float, var_slope: float,
               tokens_per_checkpoint: float) -> dict:
    sd_level, sd_slope = math.sqrt(max(var_level, 0)), math.sqrt(max(var_slope, 0))
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
