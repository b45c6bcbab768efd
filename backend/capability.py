"""Latent capability: a per-skill estimate from noisy measurements.

Each checkpoint measures a skill as a few exact-match counts (one per prompt
template, n fresh items each). None of them is the capability; each is the
capability seen through sampled items, one prompt and one scoring rule. The
score estimated is what the templates ask on average: the pooled share of
right answers.

Jumps, plateaus and climbs (`_segments`). Under a mixture that keeps
changing, a skill's score mostly sits still and then jumps when the skill
clicks or the mixture turns, or climbs steadily for a while. So the run is
cut into segments, and before each checkpoint a new one begins with
probability HAZARD. The posterior over where the current segment began is
Bayesian online changepoint detection (Adams & MacKay 2007): a plateau
averages all its checkpoints, one checkpoint's sampling noise moves the
estimate toward a new segment only as far as it is surprising, and a real
jump is followed at once. A fresh segment is one of four kinds: dead (the
skill answers almost nothing: a Beta prior of DEAD_ITEMS pseudo-answers
near 0), at chance (the model guesses, or gives the most frequent answer:
CHANCE_ITEMS pseudo-answers at the skill's chance level, as the skills table
stores it), a level (Jeffreys) and a trend. In the first three the score is
constant (a Beta posterior of the pooled counts since the segment began); in
a trend segment its logit moves linearly, a Gaussian (level, slope) updated
through the counts' exact binomial likelihood (Laplace, `_laplace`), so a
steady climb is followed without the lag of a level. The kinds are averaged
by how well each predicted the counts (Bayesian model averaging within the
changepoint posterior). A skill at chance is then estimated at chance,
tightly, and a run of zeros at 0, instead of chasing noise. The estimate is
the mixture's median (the number that minimises the expected absolute
error), with the dead kind's mass at its mode, 0 (a skill that answers
nothing is estimated at 0, not at its Beta's median 0.0002); its 95%
interval the mixture's 2.5% and 97.5% quantiles, computed exactly
(`_mixture_quantiles`).

The learning slope (the local linear trend filter). A Kalman filter with a
trend in logit units, observing the counts through their exact binomial
likelihood and each template through its difficulty offset
(`template_offsets`, IRT-style), gives the slope.

The trend filter's state and dynamics (also the filters of other metrics):

    state      x_t = [level_t, slope_t]           (logit units; slope per checkpoint)
    transition level_t = level_{t-1} + phi d slope_{t-1} + w_level
               slope_t = phi slope_{t-1} + w_slope  (d: tokens between the
                                                     checkpoints / tokens per checkpoint)
    observe    k_j ~ Binomial(n_j, sigmoid(level_t + b_j))   per template j

Every prediction is gated: an innovation beyond GATE predicted standard
deviations grows the level's and slope's variances by nu^2 - S before the
update, so a filter re-bases on a jump instead of lagging it.

Other metrics (`estimate(..., metric=...)`) are observed as Gaussian looks
on a scale their name decides (backend/vocab.py), never their values, so a
skill's estimates are on one scale at every checkpoint: a score in [0, 1]
with its own stderr (ll_acc, acc, f1: vocab.is_score) in logit space (delta
method); a loss or perplexity (vocab.is_loss: answer_nll, perplexity,
bits_per_byte, loss: positive and unbounded) in -log(value), so that up is
better on the state scale; any other metric (bleu, chrf, ter, rouge, mcc, a
custom one) as reported, whichever its direction (TER can be 0 and mcc
negative: neither logit nor log fits them). The score, interval and slope
come back in the metric's own units and direction (a falling loss or TER
has a negative slope). A value outside the range the name promises (an f1
in 0-100) ends the skill's estimates (`estimate`). These have no counts to
cut into Beta segments: several filters run side by side (DYNAMICS: a
local linear trend, a damped trend, a local level, and two near-constant
levels that average a plateau), averaged by their predictive likelihood
(older terms discounted by FORGET per checkpoint).

Everything is causal: the estimate at checkpoint t uses checkpoints <= t
only, exactly what the controller could know then.

Reported per checkpoint: score, a 95% interval, and the learning slope in
score per checkpoint and per token (the score's derivative times the trend
filter's logit slope), with its own 95% interval.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from backend.vocab import Z95, in_range, is_loss, is_score

# Dynamics of the filters averaged for a Gaussian-look metric: (phi, level
# process noise per checkpoint, logit units^2). phi = 1 a trend carries on,
# 0.5 it fades, 0 a level without momentum; the last two are plateaus: levels
# that barely drift, so they average many checkpoints' looks, and only the
# gate lets them jump. The first (the local linear trend) also gives every
# metric its slope.
DYNAMICS = ((1.0, 0.02), (0.5, 0.02), (0.0, 0.02), (0.0, 0.002), (0.0, 0.0002))
SLOPE_NOISE = 0.02  # per checkpoint, logit units^2
PRIOR_SLOPE_VAR = 1.0
# Before the first checkpoint: a level of logit -4 (score 0.018: an untrained
# model answers almost nothing) give or take 4 logits (sd), wide enough that
# the first counts decide.
PRIOR_LEVEL, PRIOR_LEVEL_VAR = -4.0, 16.0
# A metric filtered as reported (bleu 0-100, ter, mcc) has no level to expect
# before its first checkpoint: a prior this wide lets the first look decide.
RAW_PRIOR = (0.0, 1e8)
FORGET = 0.8  # discount per checkpoint of a model's past predictive log-likelihood
GATE = 2.0  # innovations beyond this many predicted sds re-base the level (a jump)
# Template offsets shrink toward 0 with the weight of this many binomial
# information units (n p (1 - p): 10 is 40 answers at p = 0.5).
OFFSET_PRIOR_WEIGHT = 10.0
# Segments of exact match (`_segments`). A change comes before a checkpoint
# with probability HAZARD (per checkpoint). Chosen on the tuning seeds
# (docs/fidelity.md): 0.05 to 0.2 moved the ratio to the templates' mean by
# under 0.01, 0.05 covering less.
HAZARD = 0.1
# Segments begun more than this many checkpoints ago are merged per kind
# (`_merge_old`): the hypotheses stay bounded however long the run.
SEGMENT_MEMORY = 20
# A fresh segment is dead, at chance or anything, with these prior
# probabilities (anything: the rest; at chance only where the chance level
# is known), each a Beta prior on the pooled score: dead Beta(0.5,
# DEAD_ITEMS) (mean 0.0005), at chance CHANCE_ITEMS pseudo-answers at the
# chance level (sd 0.029 at 0.5), anything Beta(SEG_PRIOR) (Jeffreys).
DEAD_PRIOR, DEAD_ITEMS = 0.3, 1000.0
CHANCE_PRIOR, CHANCE_ITEMS = 0.3, 300.0
SEG_PRIOR = (0.5, 0.5)
# Trend segments: a share TREND_SHARE of the anything kind's prior is a segment
# whose logit score moves linearly (level, slope: a Gaussian updated through
# the pooled counts' exact binomial likelihood), from level ~ N(TREND_LEVEL)
# (mean, variance) and slope ~ N(0, TREND_SLOPE_VAR) (logit units per
# checkpoint), with process noise TREND_NOISE (level, slope) per checkpoint.
# The rest of the anything kind is a level (Beta(SEG_PRIOR)).
TREND_SHARE = 0.8
TREND_LEVEL = (0.0, 4.0)
TREND_SLOPE_VAR = 0.05
TREND_NOISE = (0.05, 0.005)
# False: exact match by the DYNAMICS filters' average (the estimator before
# the segments); kept for bench/fidelity.py --ablate, which compares the two.
SEGMENTS = True


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    if x < -700:
        return 0.0
    return 1 / (1 + math.exp(-x))


def template_offsets(history: list[list[tuple[int, int]]]) -> list[float]:
    """Difficulty offset b_j of each template (logit units, mean zero) from
    [[(k_j, n_j) per template] per checkpoint]: per checkpoint, each
    template's logit minus the templates' mean logit, averaged over
    checkpoints weighted by their binomial information n p (1 - p) at the
    pooled p (a checkpoint where every template scores 0 says nothing about
    which is harder), shrunk toward 0 by OFFSET_PRIOR_WEIGHT."""
    if not history:
        return []
    J = len(history[-1])
    acc, weight = [0.0] * J, OFFSET_PRIOR_WEIGHT
    for counts in history:
        if len(counts) != J:
            continue
        ys = [_logit((k + 0.5) / (n + 1)) for k, n in counts]
        mean_y = sum(ys) / J
        n_all = sum(n for _, n in counts)
        p = (sum(k for k, _ in counts) + 0.5) / (n_all + 1)
        w = n_all * p * (1 - p) / J
        acc = [a + w * (y - mean_y) for a, y in zip(acc, ys)]
        weight += w
    return [a / weight for a in acc]


def _laplace(m: float, v: float, counts: list[tuple[int, int, float]],
             gauss: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Posterior of a level with prior N(m, v) given binomial counts
    [(k, n, offset)] (k ~ Binomial(n, sigmoid(level + offset))) and Gaussian
    looks [(y, r)] (y ~ N(level, r)), at its mode (Newton). Returns
    (mode, curvature precision h of the likelihood alone at the mode, log
    marginal likelihood, Laplace approximation without the binomial
    coefficients, which are the same under every dynamics)."""
    def grad(x: float) -> tuple[float, float]:
        g, h = -(x - m) / v, 1 / v
        for k, n, b in counts:
            s = _sigmoid(x + b)
            g += k - n * s
            h += n * s * (1 - s)
        for y, r in gauss:
            g += (y - x) / r
            h += 1 / r
        return g, h

    # the log posterior is concave, so its gradient falls through one root:
    # Newton steps, kept inside a bracket that bisection shrinks when a step
    # would leave it (a plain Newton step overshoots where sigmoid saturates);
    # the root lies between the prior mean and the Gaussian looks, which on
    # a metric's own scale may be far from it
    ys = [y for y, _ in gauss]
    lo, hi = min([m] + ys) - 50.0, max([m] + ys) + 50.0
    x = m
    for _ in range(200):
        g, h = grad(x)
        if g > 0:
            lo = x
        else:
            hi = x
        nxt = x + g / h
        if not lo < nxt < hi:
            nxt = (lo + hi) / 2
        if abs(nxt - x) < 1e-10:
            break
        x = nxt
    f, h_lik = -0.5 * (x - m) ** 2 / v, 0.0
    for k, n, b in counts:
        s = _sigmoid(x + b)
        f += k * math.log(max(s, 1e-300)) + (n - k) * math.log(max(1 - s, 1e-300))
        h_lik += n * s * (1 - s)
    for y, r in gauss:
        f += -0.5 * (math.log(2 * math.pi * r) + (y - x) ** 2 / r)
        h_lik += 1 / r
    return x, h_lik, f - 0.5 * math.log(v * (h_lik + 1 / v))


def _pooled_look(counts: list[tuple[int, int, float]], gauss: list[tuple[float, float]],
                 p_hat: float) -> tuple[float, float]:
    """One Gaussian look (y, r) at the level from a checkpoint's data alone,
    for the jump gate only: the pooled counts' logit, less the mean
    offset, with the delta-method variance averaged at the observed and
    the predicted score (at the observed one alone a count of 0 would say
    almost nothing), combined with the Gaussian looks by precision."""
    prec = wsum = 0.0
    if counts:
        k = sum(c[0] for c in counts)
        n_all = sum(c[1] for c in counts)
        p = (k + 0.5) / (n_all + 1)
        q = min(max(p_hat, 1e-9), 1 - 1e-9)
        r = (1 / ((n_all + 1) * p * (1 - p)) + 1 / ((n_all + 1) * q * (1 - q))) / 2
        y = _logit(p) - sum(c[2] for c in counts) / len(counts)
        prec, wsum = 1 / r, y / r
    for y, r in gauss:
        prec, wsum = prec + 1 / r, wsum + y / r
    return wsum / prec, 1 / prec


def _filter(points: list[dict], tokens_per_checkpoint: float, phi: float, level_noise: float,
            prior: tuple[float, float] = (PRIOR_LEVEL, PRIOR_LEVEL_VAR)):
    """One gated filter with damping phi from a level ~ N(prior): yields (x,
    P, log-likelihood of the checkpoint's data under the prediction) per
    point. A point carries `counts` [(k, n, offset)] and `gauss` [(y, r)],
    either possibly empty."""
    x = np.array([prior[0], 0.0])
    P = np.diag([prior[1], PRIOR_SLOPE_VAR])
    prev_tokens = None
    for pt in points:
        if prev_tokens is not None:
            d = max(1e-9, (pt["tokens_seen"] - prev_tokens) / tokens_per_checkpoint)
            F = np.array([[1.0, phi * d], [0.0, phi]])
            x = F @ x
            P = F @ P @ F.T + np.diag([level_noise * d, SLOPE_NOISE * d])
            y, r = _pooled_look(pt["counts"], pt["gauss"], _sigmoid(x[0]))
            nu2, S = (y - x[0]) ** 2, P[0, 0] + r
            if nu2 > GATE * GATE * S:  # a jump: re-base instead of creeping toward it
                P[0, 0] += nu2 - S
                P[1, 1] += nu2 - S
        mode, h, loglik = _laplace(float(x[0]), float(P[0, 0]), pt["counts"], pt["gauss"])
        if h > 0:
            # the Laplace posterior of the level as a Kalman update with the
            # equivalent Gaussian look (y_eff, 1/h), so the slope follows
            r_eff = 1 / h
            y_eff = mode + r_eff * (mode - x[0]) / P[0, 0]
            K = P[:, 0] / (P[0, 0] + r_eff)
            x = x + K * (y_eff - x[0])
            P = P - np.outer(K, P[0, :])
        prev_tokens = pt["tokens_seen"]
        yield x.copy(), P.copy(), loglik


def _segments(points: list[dict], tokens_per_checkpoint: float, chance: float | None = None):
    """The score of exact match as segments; before each checkpoint a new one
    begins with probability HAZARD. A fresh segment is one of four kinds:
    dead (the skill answers almost nothing), at chance (the model guesses or
    gives the most frequent answer: `chance`, the skill's chance level;
    left out without one), a level (anything, constant) and a trend (the
    score's logit moving linearly, `_trend_update`). Within the first three
    the score is constant: a Beta posterior of the pooled counts since the
    segment began. The posterior over the current segment's start and kind
    is Bayesian online changepoint detection (Adams & MacKay 2007),
    averaged over the kinds by their predictive likelihood: a plateau
    averages all its checkpoints, a steady climb is followed by the trend
    kind without lagging, and one checkpoint's sampling noise moves the
    posterior toward a new segment only by as much as it is surprising,
    where a gate would re-base on every 2-sd blip. Yields per point the
    posterior as (weights, a, b, dead) over the Beta hypotheses (dead: the
    dead kind's), (weights, mean, variance) over the trend hypotheses, each
    the logit-normal of the score, and the log predictive likelihood of the
    point's counts (without the binomial coefficients, like `_laplace`'s)."""
    from scipy.special import betaln

    fresh = [(DEAD_PRIOR, SEG_PRIOR[0], DEAD_ITEMS)]
    if chance is not None and 0 < chance < 1:
        fresh.append((CHANCE_PRIOR, chance * CHANCE_ITEMS, (1 - chance) * CHANCE_ITEMS))
    rest = 1.0 - sum(f[0] for f in fresh)
    fresh.append((rest * (1 - TREND_SHARE), *SEG_PRIOR))
    fresh = [f for f in fresh if f[0] > 0]
    trend_prior = math.log(rest * TREND_SHARE) if rest * TREND_SHARE > 0 else None
    # hypotheses (log posterior weight, a, b, a0, b0, start): the Beta now, the kind's
    # prior Beta and the checkpoint the segment began at
    hyps: list[tuple[float, float, float, float, float, int]] = []
    # trend hypotheses (log posterior weight, mean [level, slope], covariance, start)
    trends: list[tuple[float, np.ndarray, np.ndarray, int]] = []
    prev_tokens = None
    for t, pt in enumerate(points):
        k = float(sum(c[0] for c in pt["counts"]))
        n = float(sum(c[1] for c in pt["counts"]))
        lse = float(np.logaddexp.reduce([h[0] for h in hyps] + [h[0] for h in trends])) if hyps else 0.0
        new_trend = [] if trend_prior is None else [(trend_prior, np.array([TREND_LEVEL[0], 0.0]),
                                                     np.diag([TREND_LEVEL[1], TREND_SLOPE_VAR]), t)]
        if prev_tokens is None:
            hyps = [(math.log(p), a, b, a, b, t) for p, a, b in fresh]
            trends = new_trend
        else:
            d = max(1e-9, (pt["tokens_seen"] - prev_tokens) / tokens_per_checkpoint)
            stay = (1 - HAZARD) ** d
            hyps = [(w + math.log(stay), *h) for w, *h in hyps] + [
                (math.log(1 - stay) + math.log(p), a, b, a, b, t) for p, a, b in fresh]
            F = np.array([[1.0, d], [0.0, 1.0]])
            Q = np.diag([TREND_NOISE[0] * d, TREND_NOISE[1] * d])
            trends = [(w + math.log(stay), F @ m, F @ P @ F.T + Q, s) for w, m, P, s in trends] + [
                (w + math.log(1 - stay), m, P, s) for w, m, P, s in new_trend]
        # each hypothesis' predictive of the pooled counts (beta-binomial, without the
        # binomial coefficient, the same under every hypothesis), then Bayes
        joint = [w + betaln(a + k, b + n - k) - betaln(a, b) for w, a, b, *_ in hyps]
        updated = [_trend_update(m, P, k, n) for _, m, P, _ in trends]
        joint_t = [w + u[2] for (w, *_), u in zip(trends, updated)]
        total = float(np.logaddexp.reduce(joint + joint_t))
        hyps = _merge_old([(j - total, a + k, b + n - k, a0, b0, s) for j, (_, a, b, a0, b0, s) in zip(joint, hyps)
                           if j - total > -14], t - SEGMENT_MEMORY)  # 1e-6 moves no quantile reported
        trends = _merge_old_trends([(j - total, m, P, s) for j, (m, P, _), (*_, s) in zip(joint_t, updated, trends)
                                    if j - total > -14], t - SEGMENT_MEMORY)
        prev_tokens = pt["tokens_seen"]
        w = np.exp([h[0] for h in hyps] + [h[0] for h in trends])
        w /= w.sum()
        nb = len(hyps)
        yield (w[:nb], np.array([h[1] for h in hyps]), np.array([h[2] for h in hyps]),
               np.array([h[4] == DEAD_ITEMS for h in hyps], dtype=bool),
               w[nb:], np.array([h[1][0] for h in trends]), np.array([h[2][0, 0] for h in trends]), total - lse)


def _trend_update(m: np.ndarray, P: np.ndarray, k: float, n: float) -> tuple[np.ndarray, np.ndarray, float]:
    """A trend segment's (level, slope) Gaussian updated by the pooled counts
    k of n (k ~ Binomial(n, sigmoid(level))): the level's posterior by
    Laplace (`_laplace`), carried to the slope as a Gaussian look at the
    level; and the log predictive likelihood of the counts."""
    x, h, loglik = _laplace(float(m[0]), float(P[0, 0]), [(k, n, 0.0)], [])
    if h <= 0:
        return m, P, loglik
    r = 1 / h
    y = m[0] + (x - m[0]) * (P[0, 0] + r) / P[0, 0]  # the look whose Kalman update lands on the mode
    gain = P[:, 0] / (P[0, 0] + r)
    return m + gain * (y - m[0]), P - np.outer(gain, P[0, :]), loglik


def _merge_old(hyps: list[tuple], cutoff: int) -> list[tuple]:
    """The hypotheses of segments begun at or before checkpoint `cutoff`
    merged, per kind, into one begun at `cutoff` (weights summed, Beta
    parameters averaged by weight), so their number stays bounded on a long
    run. An approximation (the merged Beta is not the mixture's); the saved
    runs (at most 19 checkpoints) never reach it."""
    old: dict[tuple[float, float], list[tuple]] = defaultdict(list)
    out = []
    for h in hyps:
        (old[h[3], h[4]] if h[5] <= cutoff else out).append(h)
    for (a0, b0), hs in old.items():
        w = np.exp([h[0] for h in hs])
        total = float(w.sum())
        out.append((math.log(total), float(w @ [h[1] for h in hs]) / total, float(w @ [h[2] for h in hs]) / total,
                    a0, b0, cutoff))
    return out


def _merge_old_trends(trends: list[tuple], cutoff: int) -> list[tuple]:
    """The trend hypotheses begun at or before checkpoint `cutoff` merged
    into one begun at `cutoff`: weights summed, the (level, slope) Gaussian
    the mixture's mean and covariance (as `_merge_old`, bounded on a long
    run)."""
    old = [h for h in trends if h[3] <= cutoff]
    if len(old) < 2:
        return trends
    w = np.exp([h[0] for h in old])
    w /= w.sum()
    m = sum(wi * h[1] for wi, h in zip(w, old))
    P = sum(wi * (h[2] + np.outer(h[1] - m, h[1] - m)) for wi, h in zip(w, old))
    total = float(np.logaddexp.reduce([h[0] for h in old]))
    return [h for h in trends if h[3] > cutoff] + [(total, m, P, cutoff)]


def _mixture_quantiles(betas: tuple, normals: tuple, at_zero=None) -> tuple[float, float, float]:
    """Median and 95% interval (2.5% and 97.5% quantiles) of a score that is
    a mixture of Beta(a, b) with weights w (betas: (w, a, b) arrays) and of
    sigmoid(N(m, v)) with weights u (normals: (u, m, v) arrays), by
    bisection in logit space (exact near 0, where a logit-normal
    approximation of a Beta with a < 1 puts its upper bound several times
    too high). at_zero (a mask over the Betas): components whose mass the
    median counts at 0, their mode (the dead kind, a < 1); the interval
    keeps their whole Beta."""
    from scipy.special import betainc, ndtr

    w, a, b = betas
    u, m, v = normals
    zero = np.zeros(3)
    if at_zero is not None and at_zero.any():
        zero[0] = float(w[at_zero].sum())
        w_median = np.where(at_zero, 0.0, w)
    else:
        w_median = w
    weights = np.stack([w_median, w, w])  # per target: the Beta weights its cdf sums
    targets = np.array([0.5, (1 - 0.95) / 2, (1 + 0.95) / 2])
    lo, hi = np.full(3, -40.0), np.full(3, 40.0)  # logits; the three quantiles bisected together
    for _ in range(44):  # 80 logits halved 44 times: 5e-12
        mid = (lo + hi) / 2
        x = 1 / (1 + np.exp(-mid))
        cdf = (betainc(a, b, x[:, None]) * weights).sum(1) + zero + ndtr((mid[:, None] - m) / np.sqrt(v)) @ u
        below = cdf < targets
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    p, q_lo, q_hi = (_sigmoid(float(z)) for z in (lo + hi) / 2)
    if zero[0] >= 0.5:  # the median is the dead kind's mode
        p = 0.0
    return p, min(q_lo, p), q_hi


def kalman(points: list[dict], tokens_per_checkpoint: float, to_score=None,
           chance: float | None = None, prior: tuple[float, float] = (PRIOR_LEVEL, PRIOR_LEVEL_VAR)) -> list[dict]:
    """Estimate one skill. points: [{step, tokens_seen, counts: [(k, n,
    offset)], gauss: [(y, r)], raw_mean, n_templates}] ordered by step.
    Returns one estimate per point (score, 95% interval lo / hi, slope).

    Where every point has counts (exact match): the score is the pooled
    share of right answers, the median of the mixture of `_segments`
    (chance: the skill's chance level, if known; the dead kind's mass
    counted at its mode, 0) and lo and hi the mixture's 2.5% and 97.5%
    quantiles. Otherwise (Gaussian
    looks) the level is the mixture of the DYNAMICS filters, weighted by
    their discounted predictive likelihood, and to_score maps it and level
    +- Z95 sd to the metric; prior is the level's (mean, variance) before
    the first checkpoint on the looks' scale. The learning slope is always
    the local linear trend's, the one whose slope is the pace of learning
    rather than momentum expected to fade."""
    if SEGMENTS and points and all(pt["counts"] for pt in points):
        trend, scores = list(_filter(points, tokens_per_checkpoint, *DYNAMICS[0])), []
        for ws, a, b, dead, us, ms, vs, _ in _segments(points, tokens_per_checkpoint, chance):
            p, lo, hi = _mixture_quantiles((ws, a, b), (us, ms, vs), dead)
            # the score's change per unit of level: d sigmoid / dx at the median
            scores.append((p, lo, hi, p * (1 - p)))
    else:
        runs = [list(_filter(points, tokens_per_checkpoint, phi, q, prior)) for phi, q in DYNAMICS]
        trend, levels, score = runs[0], [], np.zeros(len(runs))
        for t in range(len(points)):
            score = FORGET * score + np.array([r[t][2] for r in runs])
            w = np.exp(score - score.max())
            w /= w.sum()
            means = [float(r[t][0][0]) for r in runs]
            level = float(np.dot(w, means))
            levels.append((level, sum(wm * (r[t][1][0, 0] + (lm - level) ** 2)
                                      for wm, lm, r in zip(w, means, runs))))
        scores = [_mapped(pt, level, var, to_score or _template_mean) for pt, (level, var) in zip(points, levels)]
    return [_summarise(pt, sc, float(tr[0][1]), float(tr[1][1, 1]), tokens_per_checkpoint)
            for pt, sc, tr in zip(points, scores, trend)]


def _mapped(pt: dict, level: float, var_level: float, to_score) -> tuple[float, float, float, float]:
    """(score, lo, hi, d score / d level) of a Gaussian level: the level and
    level +- Z95 sd mapped to the metric by to_score."""
    sd = math.sqrt(max(var_level, 0))
    p, a, b = (to_score(x, pt) for x in (level, level - Z95 * sd, level + Z95 * sd))
    g = (to_score(level + 1e-4, pt) - to_score(level - 1e-4, pt)) / 2e-4  # numeric
    return p, min(a, b), max(a, b), g


def _summarise(pt: dict, score: tuple[float, float, float, float], slope: float, var_slope: float,
               tokens_per_checkpoint: float) -> dict:
    p, lo, hi, g = score
    sd_slope = math.sqrt(max(var_slope, 0))
    # score change per checkpoint: the score's derivative times the trend's slope (logit units)
    s_lo, s_hi = sorted((g * (slope - Z95 * sd_slope), g * (slope + Z95 * sd_slope)))
    return {
        "step": pt["step"],
        "tokens_seen": pt["tokens_seen"],
        "score": p,
        "lo": lo,
        "hi": hi,
        "slope": g * slope,
        "slope_lo": s_lo,
        "slope_hi": s_hi,
        "slope_per_token": g * slope / tokens_per_checkpoint,
        "raw_mean": pt["raw_mean"],
        "n_templates": pt["n_templates"],
    }


def _template_mean(x: float, pt: dict) -> float:
    """The score the templates ask on average at level x: mean over the
    point's template offsets b of sigmoid(x + b)."""
    offsets = [c[2] for c in pt["counts"]] or [0.0]
    return sum(_sigmoid(x + b) for b in offsets) / len(offsets)


def _binary_points(rows: list[dict]) -> list[dict]:
    """Filter points of one skill's exact-match rows, with the template
    offsets known at each checkpoint; the score map averages the templates."""
    by_step: dict[int, list[dict]] = defaultdict(list)
    for m in rows:
        by_step[m["step"]].append(m)
    points, history = [], []
    for step in sorted(by_step):
        ms = sorted(by_step[step], key=lambda m: str(m.get("prompt_variant")))
        counts = [(round(float(m["value"]) * int(m.get("n") or 1)), int(m.get("n") or 1)) for m in ms]
        history.append(counts)
        offsets = template_offsets(history)
        points.append({"step": step, "tokens_seen": ms[0]["tokens_seen"], "gauss": [],
                       "counts": [(k, n, b) for (k, n), b in zip(counts, offsets)],
                       "raw_mean": sum(float(m["value"]) for m in ms) / len(ms), "n_templates": len(ms)})
    return points


def _gaussian_points(rows: list[dict], metric: str) -> tuple[list[dict], object, tuple[float, float]]:
    """Filter points of one skill's rows of a non-binary metric (one look per
    row, on the state scale), the map from the state back to the metric's
    units and the level's prior on the state scale. The scale is the metric
    name's (module docstring): logit for a score (0 and 1 held 1e-4
    inside), -log for a loss (0 floored at 1e-9), else the value itself
    (from RAW_PRIOR). A row without a stderr gets a score's binomial one,
    or 10% of the value."""
    prior = (PRIOR_LEVEL, PRIOR_LEVEL_VAR)
    if is_score(metric):
        def to_state(v, se):
            p = min(max(v, 1e-4), 1 - 1e-4)
            return _logit(p), (se / (p * (1 - p))) ** 2

        def to_score(x, pt):
            return _sigmoid(x)
    elif is_loss(metric):
        def to_state(v, se):
            v = max(v, 1e-9)
            return -math.log(v), (se / v) ** 2

        def to_score(x, pt):
            return math.exp(-x)
    else:
        prior = RAW_PRIOR

        def to_state(v, se):
            return v, se * se

        def to_score(x, pt):
            return x
    by_step: dict[int, list[dict]] = defaultdict(list)
    for m in rows:
        by_step[m["step"]].append(m)
    points = []
    for step in sorted(by_step):
        ms = by_step[step]
        gauss = []
        for m in ms:
            se = m.get("stderr")
            if se is None or not se > 0:
                n = int(m.get("n") or 1)
                v = float(m["value"])
                se = math.sqrt(max(v * (1 - v), 0.25 / n) / n) if is_score(metric) else 0.1 * abs(v) + 1e-6
            gauss.append(to_state(float(m["value"]), float(se)))
        points.append({"step": step, "tokens_seen": ms[0]["tokens_seen"], "counts": [], "gauss": gauss,
                       "raw_mean": sum(float(m["value"]) for m in ms) / len(ms), "n_templates": len(ms)})
    return points, to_score, prior


def off_range(rows: list[dict], metric: str) -> dict | None:
    """The first of one skill's rows of `metric` (by step) whose value lies
    outside the range the metric's name promises (vocab.in_range: an f1
    reported in 0-100, a negative loss, a NaN), or None."""
    return min((m for m in rows if not in_range(metric, float(m["value"]))), key=lambda m: m["step"], default=None)


def estimate(measurements: list[dict], tokens_per_checkpoint: float,
             skills: list[str] | None = None, metric: str = "exact_match",
             higher_is_better: bool | None = None,
             chance: dict[str, float] | None = None) -> dict[str, list[dict]]:
    """Latent estimates per skill from store measurement rows of one metric
    (default exact match: the rows of every template are binomial counts;
    any other metric is filtered as a Gaussian look with its stderr, on the
    scale its name decides, in its own units and direction: see the module
    docstring). The direction is the task's (`higher_is_better`, as the
    skills table stores it); without one, a known loss or perplexity name
    counts as lower-is-better. Each estimate also says `higher_is_better`.

    A skill's estimates stop before its first checkpoint with a value
    outside its metric's range (`off_range`): such a value has no place on
    the name's scale, clipping it would report a number never measured,
    and moving the skill to another scale would put its later estimates on
    a scale other than the ones already stored and acted on. The estimates
    before it stand, later checkpoints get none (a skill with none is left
    out), and client.history holds the skill unsteerable, saying why; its
    measurements stay shown as reported."""
    if higher_is_better is None:
        higher_is_better = not is_loss(metric)
    grouped: dict[str, list[dict]] = defaultdict(list)
    for m in measurements:
        if m.get("metric") != metric or m.get("skill") is None:
            continue
        if skills is not None and m["skill"] not in skills:
            continue
        grouped[m["skill"]].append(m)
    out = {}
    for s, rows in grouped.items():
        off = off_range(rows, metric)
        rows = [m for m in rows if off is None or m["step"] < off["step"]]
        if not rows:
            continue
        if metric == "exact_match":
            points, to_score, prior = _binary_points(rows), None, (PRIOR_LEVEL, PRIOR_LEVEL_VAR)
        else:
            points, to_score, prior = _gaussian_points(rows, metric)
        out[s] = [{**e, "higher_is_better": higher_is_better}
                  for e in kalman(points, tokens_per_checkpoint, to_score, (chance or {}).get(s), prior)]
    return out
