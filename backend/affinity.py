"""Affinity: how much each domain feeds each steer skill, with a 95%
interval, learned online from the run's own history.

Declared links (`domains = [...]` on a task skill, a synthetic domain's
`skills`) are the prior, not the truth; the run's history refines them, and
a person's pin overrides both. Per steer skill s, one row per stretch k
between two checkpoints whose mixture is known (History.mixtures):

    y_k = gain of the skill's latent score ABOVE CHANCE over the stretch,
          per checkpoint's worth of tokens (a score at chance is a guess:
          a rise up to it is no skill)
    y_k = a_s + sum_j A_sj (w_jk - wbar_j) + e_k,   e_k ~ N(0, var_k)

w_jk is the share of the stretch's tokens that domain j supplied (weights x
tokens, per unit of tokens), wbar_j their noise-weighted mean over the
stretches, var_k the variance of the gain (the two latent estimates'
intervals, backend.capability). The weights sum to 1, so a skill's rise
while the mixture stays put says nothing about which domain caused it: the
intercept a_s (flat prior) absorbs it, and A_sj learns only from how the
gain moves when the mixture moves. A_sj, the affinity, is in above-chance
score per checkpoint per unit of mixture weight.

Bayesian ridge: A_sj ~ N(prior_sj, tau_sj^2), independent. The prior mean
is PRIOR / n_j for a declared link, n_j the number of steer skills declared
on domain j (a domain that streams n skills gives each a 1/n share of its
tokens), with sd TAU; a link nobody declared has mean 0 and the smaller sd
TAU_UNDECLARED: the data can still find it, but a few confounded stretches
do not invent it. The posterior is Gaussian;
its mean clipped at 0 (a domain is taken not to un-teach a skill) and
mean +- Z95 sd clipped at 0 is the interval. The weights sum to 1, so the
history cannot tell the common level of a skill's links (a skill that learns
from everything looks like one that learns from nothing in particular): the
prior sets that level, and sd is that of the link relative to the skill's
other links, which the history does narrow. `source` is "learned" once the
history holds at least as much information about a link as its prior
(sum over stretches of (w_jk - wbar_j)^2 / var_k >= 1 / prior sd^2), else
"prior".

Pins (a person's word, audited by the store's owner): pinned off -> 0
[0, 0]; pinned on -> at least the declared prior PRIOR / max(n_j, 1), lo
included. `source` "pinned".

With `declared=False` (controller.links = "learned") the declared
links are hidden. Then the prior of a skill's links comes from the gradient
alignment measured at the checkpoints (History.alignment,
backend.evaluation.alignment: the centred cosine of each domain's gradient
with the skill's answer gradient, how much more than the average domain
each one pushes toward the answers) where there is any: c_j, the mean
positive part of the alignment at the first checkpoint (the untrained
model: the gradients then say which domain holds the answers' tokens, which
on both synthetic suites ranks the true domain best of any checkpoint) and
at the latest ALIGN_WINDOW after it (what the trained model is taught now), and

    r_sj         = (c_j / max_i c_i) ** ALIGN_POWER   (the most coupled domain: 1)
    prior mean_j = PRIOR * r_sj / n_j
    prior sd_j   = PRIOR * max(ALIGN_SD, stderr(c_j) / max_i c_i) / n_j

with n_j = max(1, sum over skills s' of r_s'j): as with declared links, a
domain coupled to n skills gives each a 1/n share of its tokens, so a domain
that streams three skills is not worth three times one that streams one.
ALIGN_SD says how far a proxy measured on the gradient may be from what
training does. ALIGN_POWER sharpens the contrast: the alignment's size ranks
the domains, but a domain half as coupled is not measured to teach half as
much. A negative alignment (the domain pushes away from the answers more
than the average does) counts 0. `source` is then "aligned";
bench/alignment_ranking.py measures how often each rule ranks a true domain
first. Without alignment every link starts at mean 0, sd TAU, and only
the run's history tells the domains apart.

With the links declared, the declarations stay the prior's means, and the
alignment says where the prior is firm: a link is SUPPORTED when its
domain is aligned with the skill at least CONFIRM times as strongly as the
skill's most aligned domain (c_j / max_i c_i >= CONFIRM, c as above). Where
declaration and alignment agree (a declared link supported, an undeclared
one not) the prior's sd is ALIGN_SD of the declared mean (ALIGN_SD x PRIOR
around 0 for an undeclared link), as firm as a measured link; where they
disagree it keeps TAU or TAU_UNDECLARED, and the run's history decides. So
a few confounded stretches neither overturn a confirmed declaration nor
credit its gains to a domain nothing links to the skill (with only the
declared links firm, a demo run credited kv_recall's gains to the random
strings and fed them half the mixture).

Known limit: the rows are a time series, so a skill that starts learning
late is credited to whatever mixture was trained then. The controllers
explore (a small, budgeted perturbation; backend/controllers/deficit.py)
where a skill's ranking of domains is not identifiable.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

from backend.vocab import Z95

PRIOR = 0.2  # above-chance score per checkpoint per unit weight of a domain declared to feed only that skill
TAU = 0.5  # prior sd of a declared link (same units): one stretch with 0.1 more weight can move it
TAU_UNDECLARED = 0.2  # prior sd of a link nobody declared, next to declared ones (prior mean 0)
NOISE_FLOOR = 0.01  # sd of a stretch's gain, at least (score per checkpoint)
SEPARATION = 2.0  # the top domain's affinity over the runner-up's that counts as identified
NEGLIGIBLE = 0.005  # an affinity below this feeds the skill too little to count (0.05 score over 10 ckpts at full weight)
ALIGN_WINDOW = 3  # checkpoints of gradient alignment averaged with the first (the latest ones)
ALIGN_SD = 0.25  # sd of an alignment-based prior, as a share of PRIOR, at least
ALIGN_POWER = 3  # the relative coupling's power in the prior (1/3 as coupled: 1/27 of the prior)
CONFIRM = 0.5  # a link aligned at least this share of the skill's top domain is supported by the alignment
SOURCES = ("prior", "aligned", "learned", "pinned")


def prior(domains: list[str], skill_domains: dict[str, list[str]], skill: str,
          declared: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The prior (mean, sd) of each (skill, domain) link, in `domains` order."""
    if not declared:
        return np.zeros(len(domains)), np.full(len(domains), TAU)
    n = {d: sum(d in ds for ds in skill_domains.values()) for d in domains}
    own = skill_domains.get(skill, [])
    return (np.array([PRIOR / n[d] if d in own else 0.0 for d in domains]),
            np.array([TAU if d in own else TAU_UNDECLARED for d in domains]))


def aligned_prior(alignment: dict[str, list[dict]], domains: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The prior (mean, sd) of one skill's links from its gradient alignment
    (domain -> [{step, value, stderr}] by step), in `domains` order: the
    mean positive part of the first measured checkpoint's and the latest
    ALIGN_WINDOW later ones'. None when a domain has no alignment or none
    is positive."""
    c, se = np.zeros(len(domains)), np.zeros(len(domains))
    for j, d in enumerate(domains):
        rows = alignment.get(d, [])
        if not rows:
            return None
        rows = rows[:1] + rows[1:][-ALIGN_WINDOW:]
        c[j] = np.mean([max(r["value"], 0.0) for r in rows])
        se[j] = np.sqrt(np.mean([(r["stderr"] or 0.0) ** 2 for r in rows]) / len(rows))
    top = c.max()
    if top <= 0:
        return None
    return PRIOR * (c / top) ** ALIGN_POWER, PRIOR * np.maximum(ALIGN_SD, se / top)


def _above(e: dict, chance: float) -> float:
    return max(e["score"] - chance, 0.0)


def _sd(e: dict) -> float:
    return (e["hi"] - e["lo"]) / (2 * Z95)


def stretches(series: list[dict], mixtures: dict[int, dict], domains: list[str], checkpoint_tokens: int,
              chance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W, y, var): the mixture of each stretch between consecutive
    estimates (n, K), the above-chance gain per checkpoint (n,) and its
    variance (n,)."""
    rows, ys, vs = [], [], []
    for prev, cur in pairwise(series):
        w = mixtures.get(cur["step"])
        ckpts = (cur["tokens_seen"] - prev["tokens_seen"]) / checkpoint_tokens if checkpoint_tokens else 1.0
        if w is None or ckpts <= 0:
            continue
        rows.append([float(w.get(d, 0.0)) for d in domains])
        ys.append((_above(cur, chance) - _above(prev, chance)) / ckpts)
        vs.append(max((_sd(cur) ** 2 + _sd(prev) ** 2) / ckpts ** 2, NOISE_FLOOR ** 2))
    k = len(domains)
    return np.array(rows).reshape(-1, k), np.array(ys), np.array(vs)


def fit(W: np.ndarray, y: np.ndarray, var: np.ndarray, mean0: np.ndarray,
        sd0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior of A in y = a + A.(w - wbar) + e, A ~ N(mean0, diag sd0^2),
    a flat, e ~ N(0, var) (weighted centring eliminates a): (mean, sd of
    each link relative to the skill's other links, information the history
    holds about each link). The weights sum to 1, so the history cannot
    tell the common level of a skill's links: the prior sets it, and the sd
    is that of the contrast A_j - mean_i A_i, which data do narrow."""
    k = len(mean0)
    if len(y) == 0:
        cov, info, mean = np.diag(sd0 ** 2), np.zeros(k), mean0.copy()
    else:
        p = 1 / var
        wbar = p @ W / p.sum()
        X = W - wbar
        r = y - p @ y / p.sum() - X @ mean0
        cov = np.linalg.inv((X.T * p) @ X + np.diag(1 / sd0 ** 2))
        mean, info = mean0 + cov @ ((X.T * p) @ r), p @ X ** 2
    T = np.eye(k) - np.full((k, k), 1 / k)  # A -> A - mean(A)
    return mean, np.sqrt(np.clip(np.diag(T @ cov @ T.T), 0, None)), info


def estimate(history, pins: dict[tuple[str, str], bool] | None = None, *,
             declared: bool = True) -> dict[str, dict[str, dict]]:
    """The affinity of every steer skill with estimates in `history`
    (backend.controllers.History) to every domain: skill -> domain ->
    {mean, lo, hi, sd, prior, source}. pins: (skill, domain) -> pinned on
    (True) or off (False); declared=False hides the declared links."""
    pins = pins or {}
    mixtures = {m["step"]: m["weights"] for m in history.mixtures}
    domains = history.domains
    n = {d: sum(d in ds for ds in history.skill_domains.values()) for d in domains}
    latent = {s: series for s, series in history.latent().items() if series}
    measured = {s: aligned_prior(history.alignment.get(s, {}), domains) for s in latent}
    measured = {s: a for s, a in measured.items() if a is not None}
    aligned = {} if declared else measured
    shared = np.maximum(1.0, sum((a[0] / PRIOR for a in aligned.values()), np.zeros(len(domains))))  # n_j
    out: dict[str, dict[str, dict]] = {}
    for s, series in latent.items():
        mean0, sd0 = prior(domains, history.skill_domains, s, declared)
        if s in aligned:
            mean0, sd0 = aligned[s][0] / shared, aligned[s][1] / shared
        elif s in measured:  # where declaration and alignment agree the prior is firm, where they differ loose
            agree = (mean0 > 0) == (measured[s][0] >= CONFIRM ** ALIGN_POWER * PRIOR)
            sd0 = np.where(agree, np.minimum(sd0, ALIGN_SD * np.where(mean0 > 0, mean0, PRIOR)), sd0)
        chance = history.chance.get(s) or 0.0
        mean, sd, info = fit(*stretches(series, mixtures, domains, history.checkpoint_tokens, chance), mean0, sd0)
        links = {}
        for j, d in enumerate(domains):
            m = float(mean[j]) if mean[j] > NEGLIGIBLE else 0.0
            row = {"mean": m, "lo": max(float(mean[j]) - Z95 * sd[j], 0.0),
                   "hi": max(float(mean[j]) + Z95 * sd[j], 0.0), "sd": float(sd[j]), "prior": float(mean0[j]),
                   "source": "learned" if info[j] * sd0[j] ** 2 >= 1 else
                   "aligned" if s in aligned else "prior"}
            pin = pins.get((s, d))
            if pin is False:
                row.update(mean=0.0, lo=0.0, hi=0.0, sd=0.0, source="pinned")
            elif pin is True:
                floor = PRIOR / max(n[d], 1)
                row.update(mean=max(m, floor), lo=max(row["lo"], floor), hi=max(row["hi"], floor),
                           source="pinned")
            links[d] = row
        out[s] = links
    return out


def rows(matrix: dict[str, dict[str, dict]]) -> list[dict]:
    """The matrix as store rows ({skill, domain, mean, lo, hi, prior,
    source}; Store.record_affinity)."""
    return [{"skill": s, "domain": d, **{k: v[k] for k in ("mean", "lo", "hi", "prior", "source")}}
            for s, links in sorted(matrix.items()) for d, v in links.items()]


def matrix(store_rows: list[dict]) -> dict[str, dict[str, dict]]:
    """Store rows of one checkpoint back as skill -> domain -> {mean, lo,
    hi, prior, source}."""
    out: dict[str, dict[str, dict]] = {}
    for r in store_rows:
        out.setdefault(r["skill"], {})[r["domain"]] = {k: r[k] for k in ("mean", "lo", "hi", "prior", "source")}
    return out


def share(links: dict[str, dict], weights: dict[str, float]) -> float:
    """Affinity-weighted share of a skill's data in `weights`: sum_j A_sj
    w_j, in above-chance score per checkpoint."""
    return sum(v["mean"] * weights.get(d, 0.0) for d, v in links.items())


def ranked(links: dict[str, dict]) -> list[str]:
    """A skill's domains, the one that feeds it most first."""
    return sorted(links, key=lambda d: -links[d]["mean"])


def identified(links: dict[str, dict]) -> bool:
    """Whether the estimate ranks one domain clearly first for the skill:
    its mean above 0 and either its interval above the runner-up's mean
    (the history tells them apart) or, for a declared link (prior > 0), at
    least SEPARATION times the runner-up's mean (the declaration stands
    until the history says otherwise)."""
    order = ranked(links)
    if not order or links[order[0]]["mean"] <= 0:
        return False
    if len(order) < 2:
        return True
    top, second = links[order[0]], links[order[1]]["mean"]
    return top["lo"] > second or (top["prior"] > 0 and top["mean"] >= SEPARATION * second)


def describe(v: dict) -> str:
    """One affinity as a rationale shows it: "0.21 [0.05, 0.37] learned"."""
    return f"{v['mean']:.2f} [{v['lo']:.2f}, {v['hi']:.2f}] {v['source']}"
