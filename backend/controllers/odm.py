"""`odm`: Online Data Mixing, an EXP3 bandit over domains.

Albalak et al. 2023, "Efficient Online Data Mixing For Language Model
Pre-Training", arXiv:2312.02406, Algorithm 1. Each domain is an arm; the
reward of pulling it is the model's loss on it (a domain with a high loss
has the most left to learn). With K domains, at step t:

    eps_t   = min(1/K, sqrt(ln K / (K t)))                   (decaying exploration)
    pi_t[i] = (1 - K eps_t) * exp(eps_{t-1} R_i) / sum_j exp(eps_{t-1} R_j) + eps_t
    R_i    <- alpha R_i + (1 - alpha) L_i / pi[i]            (importance-weighted,
                                                              smoothed reward estimate)

with R_i = 0 and eps_0 = 1/K at the start. alpha = 0.9 (ALPHA), the default
of the authors' implementation (SmoothedMeanWeightUpdater in
github.com/alon-albalak/online-data-mixing; some of their runs use 0.5).

What is used here, and how it differs from the paper:

- The reward is the held-out next-token loss of each domain at each
  checkpoint (History.domain_loss), not the training loss of each batch: the
  loop measures per-domain loss only at checkpoints. Every domain is trained
  in every stretch, so every arm is observed at every checkpoint.
- pi in the importance weight is the share each domain was actually trained
  at in the stretch that ended at that checkpoint (History.mixtures; the
  current mixture where the history lacks it), since that, not the policy
  proposed, is the probability the domain was sampled with (a person may
  have edited it; constraints reshape it). A domain trained at share 0 was
  not pulled: its estimate is left as it was.
- t counts optimizer steps, as in the paper (one bandit round per step). The
  paper updates R every step with that step's loss; we observe one loss per
  domain per checkpoint, so a stretch of n steps applies the update n times
  with the same observation: R <- alpha^n R + (1 - alpha^n) L / pi.
- Stateless: R is recomputed from History at every call, so a resumed
  worker proposes exactly what an uninterrupted one would.
- The proposal is pi_{t+1} at t = the current step; the loop then applies
  the Goodhart hold and the shared constraints (smoothing toward uniform,
  floor, cap, max change) as for every strategy.

A property of the paper's rule worth knowing: R is a smoothed mean, not a
running sum as in textbook EXP3, so it does not grow with t while eps_{t-1}
in the exponent shrinks as 1/sqrt(t). Late in training the same losses
therefore move the policy less: it drifts back toward uniform.

The forecast per steer skill is the latent slope scaled by the change in the
skill's data share (backend.controllers.forecast): ODM has no model of skills.
"""

from __future__ import annotations

import math

from backend.controllers import History, Proposal, register_strategy
from backend.controllers.forecast import slope_forecasts

ALPHA = 0.9  # smoothing of the reward estimate (authors' implementation default)


def exploration(k: int, t: float) -> float:
    """eps_t = min(1/K, sqrt(ln K / (K t))); 1/K at t <= 0 (eps_0)."""
    if t <= 0 or k < 2:
        return 1.0 / k
    return min(1.0 / k, math.sqrt(math.log(k) / (k * t)))


def policy(rewards: dict[str, float], t: float) -> dict[str, float]:
    """EXP3's pi_t from the reward estimates at step t."""
    k = len(rewards)
    eps, eps_prev = exploration(k, t), exploration(k, t - 1)
    top = max(rewards.values())  # subtracting the max never overflows
    g = {d: math.exp(eps_prev * (r - top)) for d, r in rewards.items()}
    total = sum(g.values())
    return {d: (1 - k * eps) * g[d] / total + eps for d in rewards}


@register_strategy("odm")
class ODM:
    def __init__(self, settings):
        self.settings = settings

    def rewards(self, history: History, current: dict[str, float]) -> dict:
        """The reward estimates, replayed from History: {rewards, loss (last),
        share (last), step (the last checkpoint)}."""
        names = history.domains
        shares = {m["step"]: m["weights"] for m in history.mixtures}
        by_step: dict[int, dict[str, float]] = {}
        for d in names:
            for m in history.domain_loss.get(d, []):
                by_step.setdefault(m["step"], {})[d] = float(m["value"])
        r = dict.fromkeys(names, 0.0)
        loss, share, prev = {}, {}, 0
        for step in sorted(by_step):
            if step <= 0:
                prev = step
                continue  # the untrained model: no arm was pulled yet
            n = step - prev
            prev = step
            w = shares.get(step, current)
            decay = ALPHA ** n
            for d, value in by_step[step].items():
                pi = w.get(d, 0.0)
                if pi > 0:
                    r[d] = decay * r[d] + (1 - decay) * value / pi
                loss[d], share[d] = value, pi
        steps = [m["step"] for m in history.mixtures] + list(by_step)
        return {"rewards": r, "loss": loss, "share": share, "step": max(steps, default=0)}

    def propose(self, history: History, current: dict[str, float]) -> Proposal:
        """Raw weights: EXP3's policy pi_{t+1} at t = the current step."""
        est = self.rewards(history, current)
        t, k = est["step"], len(history.domains)
        pi = policy(est["rewards"], t)
        eps = exploration(k, t)
        rationale = {}
        for d in history.domains:
            tail = f"EXP3 policy {pi[d]:.3f} (exploration {eps:.4f} at step {t})"
            if d in est["loss"]:
                rationale[d] = (f"held-out loss {est['loss'][d]:.3f} at share {est['share'][d]:.3f}, "
                                f"reward estimate {est['rewards'][d]:.2f}; " + tail)
            else:
                rationale[d] = "no held-out loss after training yet, reward estimate 0; " + tail
        return Proposal(weights=pi, rationale=rationale)

    def forecast(self, history: History, current: dict[str, float], weights: dict[str, float]) -> dict[str, dict]:
        """The latent slope scaled by the change in data share (ODM has no
        model of skills)."""
        return slope_forecasts(history.latent(), history.links(), current, weights)
