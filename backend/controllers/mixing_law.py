"""`mixing-law`: fit a per-skill law of capability change vs mixture weights
from the run's own history, then take a proximal step toward the mixture it
predicts best for the mean steer score.

Data mixing laws (Ye et al. 2024, "Data Mixing Laws: Optimizing Data
Mixtures by Predicting Language Modeling Performance", arXiv:2403.16952)
predict a model's performance from the mixture proportions with a law fitted
on a few runs; Aioli (Chen et al. 2024, "Aioli: A Unified Optimization
Framework for Language Model Data Mixing", arXiv:2411.05735) shows that the
online methods share one linear dynamic law, the change of each group's loss
over a round is linear in the round's proportions, L_{t+1} = L_t - A_t p_t,
and updates p_{t+1} ∝ p_t exp(eta * sum_i A_t[i, :]). We use Aioli's
linear-in-weights form with the latent capability in place of the loss:

    dlogit_s(w) = a_s + sum_j b_sj (w_j - wbar_j)            (per checkpoint)

- one row per stretch between two checkpoints: the change of the skill's
  latent logit (History.latent(): logit of the Kalman score, per
  checkpoint's worth of tokens) against the weights trained in that stretch
  (History.mixtures); wbar is the mean of those weights. Centring makes a_s
  the mean change, identifiable even though the weights always sum to 1.
- ridge (RIDGE) toward a prior rather than toward 0: the skill's mean rise
  (if it rises) spread over the domains that feed it, each by its affinity
  (History.links(), backend.affinity; declared links are its prior):
  f_sj = A_sj / max_i A_si, b0_sj = f_sj max(mean dlogit_s, 0) / (f_s . wbar).
  With little variation in the weights the law says "a skill rises in
  proportion to the affinity-weighted share of its domains"; as the mixture
  varies, the data take over. Each rationale line names the affinities the
  prior used, with their intervals.
  Aioli instead measures A_t each round on short perturbed runs; we spend no
  extra training, so the law learns only from the mixtures the run trains.
  RIDGE = 0.01 weight^2 is sigma^2 / tau^2 for a noise of ~0.5 logit in one
  stretch's change and a prior spread of ~5 logits per checkpoint per unit
  weight (moving 0.2 of the mixture shifts a skill's pace by ~1 logit).
- too little history (no steer skill with MIN_STRETCHES stretches between
  checkpoints whose mixture is known) keeps the current mixture, saying
  why; a skill still short of them is left out of the step and forecast
  from its latent slope.

The step maximises the predicted mean steer score at the next checkpoint,
linearised at the current mixture c, minus a KL proximity term to c:

    g_j = mean over steer skills s of p_s (1 - p_s) b_sj   (weighted by the
          researcher's priority of each skill where the objective gives one),
          p_s = sigmoid(logit(score_s) + dlogit_s(c))   (d score / d w_j)
    w   = argmax_w  g.w - KL(w || c) / eta   =>   w_j ∝ c_j exp(eta g_j)

which is Aioli's update with eta = step_size (MixingLawSettings; Aioli tunes
eta per setting; it has no single published default). The loop shows the
strategy no skill the Goodhart guard holds back, so those are left out of g,
then applies the hold and the shared constraints.

The forecast per steer skill comes from the law: expected =
sigmoid(logit(score) + dlogit_s(new weights)).

Stateless: the law is refitted from History at every call. Known limit: the
rows are a time series, so a slowdown of learning late in the run is
confounded with whatever mixture was trained then.
"""

from __future__ import annotations

import math
from itertools import pairwise

from dataclasses import dataclass

import numpy as np

from backend import affinity
from backend.controllers import History, Proposal, register_strategy
from backend.controllers.forecast import slope_forecasts
from backend.controllers.settings import check_positive

RIDGE = 0.01  # weight^2 units; see the module docstring
MIN_STRETCHES = 2  # stretches with a measured change needed to fit a law
P_CLIP = 1e-6  # keeps logits finite


def _logit(p: float) -> float:
    p = min(max(p, P_CLIP), 1 - P_CLIP)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x > -700 else 0.0


def stretches(series: list[dict], mixtures: dict[int, dict], domains: list[str],
              checkpoint_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, y): the weights trained in each stretch (n, K) and the change of
    the latent logit over it, per checkpoint's worth of tokens (n,)."""
    rows, ys = [], []
    for prev, cur in pairwise(series):
        w = mixtures.get(cur["step"])
        if w is None:
            continue
        ckpts = (cur["tokens_seen"] - prev["tokens_seen"]) / checkpoint_tokens if checkpoint_tokens else 1.0
        if ckpts <= 0:
            continue
        rows.append([float(w.get(d, 0.0)) for d in domains])
        ys.append((_logit(cur["score"]) - _logit(prev["score"])) / ckpts)
    return np.array(rows).reshape(-1, len(domains)), np.array(ys)


def fit_law(W: np.ndarray, y: np.ndarray, feeds: np.ndarray, ridge: float = RIDGE) -> dict:
    """Ridge fit of y = a + b.(w - wbar), b shrunk toward the prior b0 (the
    mean rise spread over the skill's domains, `feeds` each domain's
    relative affinity in [0, 1])."""
    wbar = W.mean(axis=0)
    X = W - wbar
    mean = float(y.mean())
    share = float(feeds @ wbar)
    b0 = feeds * (max(mean, 0.0) / share) if share > 0 else np.zeros(W.shape[1])
    r = y - X @ b0 - mean  # X is centred, so the intercept is the mean of y
    beta = np.linalg.solve(X.T @ X + ridge * np.eye(W.shape[1]), X.T @ r)
    return {"a": mean, "b": b0 + beta, "b0": b0, "wbar": wbar, "n": len(y)}


def predict(law: dict, w: np.ndarray) -> float:
    """Predicted change of the latent logit over one checkpoint at weights w."""
    return float(law["a"] + law["b"] @ (w - law["wbar"]))


@dataclass(kw_only=True)
class MixingLawSettings:
    """`mixing-law`'s settings (controller.options)."""

    step_size: float = 2.0
    """eta of the KL-proximal step w_j ∝ c_j exp(eta g_j)."""

    def validate(self, path: str, run_cfg=None) -> None:
        """Raise ConfigError naming the field (`path`.step_size) if not > 0."""
        check_positive(self, "step_size", path)


@register_strategy("mixing-law", settings=MixingLawSettings)
class MixingLaw:
    reads_links = True  # its law's prior is the affinity (History.links())
    def __init__(self, settings: MixingLawSettings):
        self.settings = settings

    def laws(self, latent: dict[str, list[dict]], history: History) -> tuple[dict[str, dict], dict[str, dict]]:
        """(laws, last estimate) per steer skill; a skill with fewer than
        MIN_STRETCHES stretches gets no law, and one giving a constant answer
        to every item (History.constant) neither."""
        mixtures = {m["step"]: m["weights"] for m in history.mixtures}
        links = history.links()
        laws, last = {}, {}
        for s, series in latent.items():
            # one answer to every item is a guess flipping, not a rise: no law, no forecast
            if not series or s not in links or s in history.constant:
                continue
            last[s] = series[-1]
            W, y = stretches(series, mixtures, history.domains, history.checkpoint_tokens)
            if len(y) < MIN_STRETCHES:
                continue
            a = np.array([links[s][d]["mean"] for d in history.domains])
            laws[s] = fit_law(W, y, a / a.max() if a.max() > 0 else a)
        return laws, last

    def propose(self, history: History, current: dict[str, float]) -> Proposal:
        """Raw weights w_j ∝ c_j exp(eta g_j); the current mixture while no
        skill has a law."""
        names = history.domains
        latent = history.latent()
        laws, last = self.laws(latent, history)
        if not laws:
            why = (f"too little history to fit a mixing law (no steer skill has {MIN_STRETCHES} stretches "
                   f"between checkpoints with their mixture known)" if last
                   else "no steer skill has an estimate yet")
            return Proposal(weights=dict(current), rationale={d: f"current mixture kept, {why}" for d in names})

        c = np.array([current[d] for d in names])
        objective = history.objective  # the researcher's priority weight per skill
        weight = {s: objective.priority(s) if objective is not None else 1.0 for s in laws}
        g = np.zeros(len(names))
        for s in laws:
            p = _sigmoid(_logit(last[s]["score"]) + predict(laws[s], c))
            g += weight[s] * p * (1 - p) * laws[s]["b"]
        g /= sum(weight.values()) or 1.0
        # w_j ∝ c_j exp(eta g_j): the KL-proximal maximiser of g.w (max subtracted: no overflow)
        raw = {d: current[d] * math.exp(self.settings.step_size * (g[i] - g.max())) for i, d in enumerate(names)}

        mean_g = float(c @ g)
        unfit = sorted(s for s in last if s not in laws)
        links = history.links()
        rationale = {}
        for i, d in enumerate(names):
            parts = [f"{s} b {laws[s]['b'][i]:+.2f} (affinity {affinity.describe(links[s][d])})" for s in laws]
            line = (f"predicted gain {g[i]:+.4f} mean steer score per checkpoint per unit weight "
                    f"(mixture mean {mean_g:+.4f}); law dlogit/ckpt per unit weight: " + ", ".join(parts))
            if unfit:
                line += f"; too little history for a law: {', '.join(unfit)}"
            rationale[d] = line
        return Proposal(weights=raw, rationale=rationale)

    def forecast(self, history: History, current: dict[str, float], weights: dict[str, float]) -> dict[str, dict]:
        """From the law where a skill has one; else its latent slope scaled
        by the change in data share."""
        latent = history.latent()
        laws, last = self.laws(latent, history)
        unfit = {s: latent[s] for s in last if s not in laws}
        forecast = slope_forecasts(unfit, history.links(), current, weights)
        w_new = np.array([weights[d] for d in history.domains])
        for s, law in laws.items():
            forecast[s] = {
                "score": last[s]["score"],
                "expected": _sigmoid(_logit(last[s]["score"]) + predict(law, w_new)),
                "basis": (f"mixing law fitted on {law['n']} stretches: dlogit = {law['a']:+.2f} + "
                          f"b.(w - wbar), ridge {RIDGE} toward the skill's affinity-weighted domain share"),
            }
        return forecast
