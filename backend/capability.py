"""Latent capability: a per-skill state-space estimate from noisy measurements.

Each checkpoint measures a skill as a few exact-match counts (one per prompt
template, n fresh items each). None of them is the capability; each is the
capability seen through sampled items, one prompt and one scoring rule. The
state is the skill's level in logit units:

    state      x_t = [level_t, slope_t]           (logit units; slope per checkpoint)
    transition level_t = level_{t-1} + phi d slope_{t-1} + w_level
               slope_t = phi slope_{t-1} + w_slope  (d: tokens between the
                                                     checkpoints / tokens per checkpoint)
    observe    k_j ~ Binomial(n_j, sigmoid(level_t + b_j))   per template j

Facets, not noise. Template j answers with its own difficulty offset b_j
(logit units, mean zero over the templates: IRT with the checkpoint as the
person and the template as the item family), estimated jointly from the
run's own history up to the checkpoint (`template_offsets`). A template that
is systematically harder is then neither noise nor bias, and the score is
what the templates ask on average: mean_j sigmoid(level + b_j).

Counts, not logits of counts. Each update is the exact binomial likelihood
of the counts times the Gaussian prediction, approximated at its mode
(Laplace; `_laplace`): no pseudo-count, so a run of zero counts drives the
estimate toward 0 as the answers accumulate, instead of sticking at the
pseudo-count's 1/(2N).

Plateaus and jumps. How a learning curve moves is itself uncertain: it rises
smoothly (a trend carries on), or jumps when the skill clicks and then
plateaus. So several filters run side by side (DYNAMICS: a local linear
trend, a damped trend, a local level, and two near-constant levels that
average a plateau over many checkpoints); each is weighted by how well it
predicted this skill's observations so far (its predictive log-likelihood,
older terms discounted by FORGET per checkpoint), and the estimate is their
weighted mixture (mean, and variance including the spread between them):
Bayesian model averaging. Every prediction is gated: an innovation beyond
GATE predicted standard deviations grows the level's and slope's variances
by nu^2 - S before the update, so a filter re-bases on a jump instead of
lagging it.

A second look from the scorer measured next to exact match (off by default,
SIDE_SIGNALS). The answer's per-token loss under template 0 is continuous
and moves before and while the skill does. Calibrated on the run's own
history (binomial regression of the counts on its log, `calibrated_looks`),
it is one more Gaussian look at the level, with its own variance: what the
calibration misses, plus the fit's uncertainty, inflated when its past looks
missed. It joins only once the history shows it tracks the skill. It helped
on two saved runs and hurt on a third: near the ceiling the loss keeps
falling while exact match saturates, and the log-linear calibration
extrapolates past it.

Other metrics (`estimate(..., metric=...)`): a bounded mean in [0, 1] with its
own stderr (ll_acc, acc) is observed as a Gaussian in logit space (delta
method); a lower-is-better metric (answer_nll, perplexity, loss: positive and
unbounded) as a Gaussian in -log(value), so that up is better on the state
scale and the score, interval and slope come back in the metric's own units
and direction (a falling loss has a negative slope). Any other metric is
filtered on its own scale, higher being better.

Everything is causal: the estimate at checkpoint t uses checkpoints <= t
only, exactly what the controller could know then.

Reported per checkpoint: score, a 95% interval (level +- Z95 sd mapped to
the score), and the learning slope in score per checkpoint and per token (the
score's derivative times the trend filter's logit slope), with its own 95%
interval.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from backend.vocab import Z95

# Dynamics of the filters averaged: (phi, level process noise per checkpoint,
# logit units^2). phi = 1 a trend carries on, 0.5 it fades, 0 a level without
# momentum; the last two are plateaus: levels that barely drift, so they
# average many checkpoints' answers, and only the gate lets them jump.
DYNAMICS = ((1.0, 0.02), (0.5, 0.02), (0.0, 0.02), (0.0, 0.002), (0.0, 0.0002))
SLOPE_NOISE = 0.02  # per checkpoint, logit units^2
PRIOR_SLOPE_VAR = 1.0
# Before the first checkpoint: a level of logit -4 (score 0.018: an untrained
# model answers almost nothing) give or take 4 logits (sd), wide enough that
# the first counts decide.
PRIOR_LEVEL, PRIOR_LEVEL_VAR = -4.0, 16.0
FORGET = 0.8  # discount per checkpoint of a dynamics' past predictive log-likelihood
GATE = 2.0  # innovations beyond this many predicted sds re-base the level (a jump)
# Template offsets shrink toward 0 with the weight of this many binomial
# information units (n p (1 - p): 10 is 40 answers at p = 0.5).
OFFSET_PRIOR_WEIGHT = 10.0
# A side signal (the answer's loss) becomes a look at the level once its
# calibration on the run's own history has this many checkpoints and a
# slope this many standard errors from 0.
SIDE_MIN_POINTS, SIDE_MIN_T = 4, 3.0
# Off: on held-out seed 3 the loss look made the estimate worse than the
# templates' plain mean (docs/fidelity.md); "loss" turns it on.
SIDE_SIGNALS: tuple[str, ...] = ()
LOWER_IS_BETTER = frozenset({"answer_nll", "perplexity", "word_perplexity", "byte_perplexity",
                             "bits_per_byte", "loss"})


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
    # would leave it (a plain Newton step overshoots where sigmoid saturates)
    lo, hi = m - 50.0, m + 50.0
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


def _filter(points: list[dict], tokens_per_checkpoint: float, phi: float, level_noise: float):
    """One gated filter with damping phi: yields (x, P, log-likelihood of the
    checkpoint's data under the prediction) per point. A point carries
    `counts` [(k, n, offset)] and `gauss` [(y, r)], either possibly empty."""
    x = np.array([PRIOR_LEVEL, 0.0])
    P = np.diag([PRIOR_LEVEL_VAR, PRIOR_SLOPE_VAR])
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


def calibrated_looks(counts: list[list[tuple[int, int, float]]], side: list[float | None]) -> list[tuple | None]:
    """A side signal's look at the level at each checkpoint, causal: at t,
    the counts [(k, n, offset)] and side values (None: not measured) of the
    checkpoints s < t calibrate level = a + c side by binomial regression
    (k ~ Binomial(n, sigmoid(a + c side + offset)), Newton), so checkpoints
    at 0 count as what they are, not as a pseudo-count's logit. What the
    signal misses is s2, the variance of each checkpoint's level around the
    line (method of moments over the checkpoints, each weighted by its
    binomial information). The look at t is (a + c side[t], s2 + the fit's
    variance there, times the mean squared standardised miss of the past
    looks when above 1), or None while the history has fewer than
    SIDE_MIN_POINTS checkpoints, no spread in the signal, or a slope not
    SIDE_MIN_T standard errors from 0 (a signal that does not yet track the
    skill)."""
    looks: list[tuple | None] = []
    errors: list[float | None] = [None] * len(side)
    for t, z in enumerate(side):
        # checkpoints where every answer was wrong (or right) are left out: a
        # run's first checkpoint at 0 would otherwise anchor a line through
        # any signal that merely differs between the untrained and the
        # trained model, whether or not it tracks the skill after that
        hist = [(counts[s], side[s]) for s in range(t) if side[s] is not None and counts[s]
                and 0 < sum(c[0] for c in counts[s]) < sum(c[1] for c in counts[s])]
        zs = [h[1] for h in hist]
        if z is None or len(hist) < SIDE_MIN_POINTS or np.ptp(zs) < 1e-12:
            looks.append(None)
            continue
        zc = float(np.mean(zs))  # centred, so the intercept and the slope are nearly independent
        beta, info = np.zeros(2), np.eye(2)
        for _ in range(50):
            grad, info = -1e-3 * beta, 1e-3 * np.eye(2)  # a whisper of ridge: all-zero histories stay finite
            for cs, zz in hist:
                x = np.array([1.0, zz - zc])
                for k, n, b in cs:
                    q = _sigmoid(float(x @ beta) + b)
                    grad += (k - n * q) * x
                    info += n * q * (1 - q) * np.outer(x, x)
            step = np.linalg.solve(info, grad)
            step *= min(1.0, 5.0 / max(abs(step).max(), 1e-12))
            beta += step
            if abs(step).max() < 1e-9:
                break
        cov = np.linalg.inv(info)
        # each checkpoint's level around the line: residual^2 minus its
        # binomial variance 1 / sum n q (1 - q), weighted by that information
        num = den = 0.0
        for cs, zz in hist:
            fit = beta[0] + beta[1] * (zz - zc)
            w = sum(n * _sigmoid(fit + b) * (1 - _sigmoid(fit + b)) for _, n, b in cs)
            k_all, n_all = sum(c[0] for c in cs), sum(c[1] for c in cs)
            mean_b = sum(c[2] for c in cs) / len(cs)
            y = _logit((k_all + 0.5) / (n_all + 1)) - mean_b
            num += w * ((y - fit) ** 2 - 1 / max(w, 1e-9))
            den += w
        s2 = max(0.0, num / den) if den > 0 else 0.0
        if abs(beta[1]) < SIDE_MIN_T * math.sqrt(cov[1, 1] * (1 + s2 * den / len(hist))):
            looks.append(None)
            continue
        x = np.array([1.0, z - zc])
        # the fit's variance grows with the spread beyond binomial (s2 per checkpoint)
        y, r = float(x @ beta), s2 + float(x @ cov @ x) * (1 + s2 * den / len(hist))
        # and with how far the past looks missed: their squared standardised
        # errors against their checkpoint's own counts, on average (when > 1)
        misses = [e for e in errors if e is not None]
        looks.append((y, r * max(1.0, float(np.mean(misses))) if misses else r))
        errors[t] = _miss(looks[t], counts[t])
    return looks


def _miss(look: tuple[float, float], cs: list[tuple[int, int, float]]) -> float | None:
    """A look's squared standardised error against one checkpoint's pooled
    counts: (logit of the counts - look)^2 over the look's variance plus the
    counts' binomial variance at the look (None without counts)."""
    if not cs:
        return None
    y, r = look
    k_all, n_all = sum(c[0] for c in cs), sum(c[1] for c in cs)
    obs = _logit((k_all + 0.5) / (n_all + 1)) - sum(c[2] for c in cs) / len(cs)
    info = sum(n * _sigmoid(y + b) * (1 - _sigmoid(y + b)) for _, n, b in cs)
    return (obs - y) ** 2 / (r + 1 / max(info, 1e-9))


def kalman(points: list[dict], tokens_per_checkpoint: float, to_score=None,
           sides: list[list[float | None]] = ()) -> list[dict]:
    """Estimate one skill. points: [{step, tokens_seen, counts: [(k, n,
    offset)], gauss: [(y, r)], raw_mean}] ordered by step. Returns one
    estimate per point: the score (to_score(level, point), default: the mean
    over the point's template offsets of sigmoid(level + offset); its interval
    from the level's) from the mixture of the DYNAMICS filters, weighted by their
    discounted predictive likelihood; the learning slope from the local linear
    trend, the one whose slope is the pace of learning rather than momentum
    expected to fade.

    sides: signals with a value per point (None: not measured) that may track
    the level, e.g. the log of the answer's loss; each, calibrated on the
    run's history against the counts (`calibrated_looks`), is one more
    Gaussian look."""
    to_score = to_score or _template_mean
    if sides:
        looks = [calibrated_looks([pt["counts"] for pt in points], side) for side in sides]
        points = [{**pt, "gauss": pt["gauss"] + [lk[t] for lk in looks if lk[t]]} for t, pt in enumerate(points)]
    runs = [list(_filter(points, tokens_per_checkpoint, phi, q)) for phi, q in DYNAMICS]
    trend = runs[0]
    out, score = [], np.zeros(len(runs))
    for t, pt in enumerate(points):
        score = FORGET * score + np.array([r[t][2] for r in runs])
        w = np.exp(score - score.max())
        w /= w.sum()
        levels = [float(r[t][0][0]) for r in runs]
        level = float(np.dot(w, levels))
        var = sum(wm * (r[t][1][0, 0] + (lm - level) ** 2) for wm, lm, r in zip(w, levels, runs))
        out.append(_summarise(pt, level, var, float(trend[t][0][1]), float(trend[t][1][1, 1]),
                              tokens_per_checkpoint, to_score))
    return out


def _summarise(pt: dict, level: float, var_level: float, slope: float, var_slope: float,
               tokens_per_checkpoint: float, to_score) -> dict:
    sd_level, sd_slope = math.sqrt(max(var_level, 0)), math.sqrt(max(var_slope, 0))
    p, a, b = (to_score(x, pt) for x in (level, level - Z95 * sd_level, level + Z95 * sd_level))
    # score change per checkpoint: the score's derivative (numeric) times the state's slope
    g = (to_score(level + 1e-4, pt) - to_score(level - 1e-4, pt)) / 2e-4
    s_lo, s_hi = sorted((g * (slope - Z95 * sd_slope), g * (slope + Z95 * sd_slope)))
    return {
        "step": pt["step"],
        "tokens_seen": pt["tokens_seen"],
        "score": p,
        "lo": min(a, b),
        "hi": max(a, b),
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


def _gaussian_points(rows: list[dict], lower_is_better: bool) -> tuple[list[dict], object]:
    """Filter points of one skill's rows of a non-binary metric (one look per
    row, on the state scale) and the map from the state back to the
    metric's units."""
    values = [float(m["value"]) for m in rows]
    if lower_is_better:
        def to_state(v, se):
            v = max(v, 1e-9)
            return -math.log(v), (se / v) ** 2

        def to_score(x, pt):
            return math.exp(-x)
    elif values and all(0.0 <= v <= 1.0 for v in values):
        def to_state(v, se):
            p = min(max(v, 1e-4), 1 - 1e-4)
            return _logit(p), (se / (p * (1 - p))) ** 2

        def to_score(x, pt):
            return _sigmoid(x)
    else:
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
                # no stderr: a bounded mean's binomial one, else 10% of the value
                n = int(m.get("n") or 1)
                v = float(m["value"])
                se = math.sqrt(max(v * (1 - v), 0.25 / n) / n) if 0 <= v <= 1 else 0.1 * abs(v) + 1e-6
            gauss.append(to_state(float(m["value"]), float(se)))
        points.append({"step": step, "tokens_seen": ms[0]["tokens_seen"], "counts": [], "gauss": gauss,
                       "raw_mean": sum(float(m["value"]) for m in ms) / len(ms), "n_templates": len(ms)})
    return points, to_score


def estimate(measurements: list[dict], tokens_per_checkpoint: float,
             skills: list[str] | None = None, metric: str = "exact_match",
             higher_is_better: bool | None = None) -> dict[str, list[dict]]:
    """Latent estimates per skill from store measurement rows of one metric
    (default exact match: the rows of every template are binomial counts;
    any other metric is filtered as a Gaussian look with its stderr, in its
    own units and direction: see the module docstring). The direction is
    the task's (`higher_is_better`, as the skills table stores it); without
    one, a known loss or perplexity name counts as lower-is-better. Each
    estimate also says `higher_is_better`."""
    if higher_is_better is None:
        higher_is_better = metric not in LOWER_IS_BETTER
    grouped: dict[str, list[dict]] = defaultdict(list)
    for m in measurements:
        if m.get("metric") != metric or m.get("skill") is None:
            continue
        if skills is not None and m["skill"] not in skills:
            continue
        grouped[m["skill"]].append(m)
    out = {}
    for s, rows in grouped.items():
        if metric == "exact_match":
            points, to_score = _binary_points(rows), _template_mean
            sides = _side_signals(measurements, s, [pt["step"] for pt in points])
        else:
            points, to_score, sides = *_gaussian_points(rows, not higher_is_better), []
        out[s] = [{**e, "higher_is_better": higher_is_better}
                  for e in kalman(points, tokens_per_checkpoint, to_score, sides)]
    return out


def _side_signals(measurements: list[dict], skill: str, steps: list[int]) -> list[list[float | None]]:
    """The side signals of a skill per step (SIDE_SIGNALS): "loss", the log
    of the answer's per-token loss (log nats/token) under template 0. (The
    held-out twin's level was tried as a second one and made the estimate
    worse: docs/fidelity.md.)"""
    out = []
    if "loss" in SIDE_SIGNALS:
        loss = {m["step"]: math.log(float(m["value"])) for m in measurements
                if m.get("metric") == "answer_nll" and m.get("skill") == skill and (m.get("value") or 0) > 0
                and m.get("prompt_variant") in (None, "template0")}
        if loss:
            out.append([loss.get(st) for st in steps])
    return out
