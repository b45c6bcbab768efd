"""`doremi`: DoReMi's domain reweighting, run online on the run's own model.

Xie et al. 2023, "DoReMi: Optimizing Data Mixtures Speeds Up Language Model
Pretraining", arXiv:2305.10429, Algorithm 1. The paper trains a small proxy
model with Group DRO against a reference model and, at every training step t,
takes an exponentiated-gradient (EG) step on the domain weights alpha:

    lambda_t[j] = mean over domain j's tokens of max(loss_proxy - loss_ref, 0)
    alpha'_t    = alpha_{t-1} * exp(eta * lambda_t), normalised to sum 1
    alpha_t     = (1 - c) * alpha'_t + c * u                   (u: uniform)

and returns the time average  (1/T) sum_{t=1..T} alpha_t. Paper defaults:
eta = 1, c = 1e-3 (module constants ETA and SMOOTHING_C; doremi's
settings have no step size).

What is used here, and how it differs from the paper:

- The proxy is the run's own model; one EG step per checkpoint (the paper
  steps every training step), on the held-out next-token loss of each
  domain at that checkpoint (History.domain_loss; the paper uses the
  per-token training loss of the batch).
- The reference: with reference_losses set (DoReMiSettings), the held-out domain
  losses of a separately trained reference model, as in the paper (the
  data-efficiency benchmark gives it the last checkpoint of the `uniform`
  run of the same seed and counts that run's tokens as DoReMi's overhead).
  Without it, a frozen earlier checkpoint of this same run: its
  held-out domain losses at step reference_step, by default the
  first checkpoint after step 0 (the model trained one stretch on the initial
  mixture). The paper's reference is a separately trained model of the same
  size on the baseline mixture, run to the full budget, so its loss
  estimates the loss each domain can reach; we have no such model in the
  loop, and training one would cost a second run. The consequence: the
  run's model soon beats an earlier checkpoint of itself on every domain, so
  excess loss is 0 except where a domain's loss has risen since the
  reference (forgetting, typically a domain starved by the mixture), and
  only such a domain gains weight. We keep the paper's clip at 0 rather
  than rewarding the domains that improved least.
- The clip acts on each domain's mean loss (we have no per-token losses);
  the paper clips each token's excess, then averages.
- The EG iterates start from the run's initial mixture (History.mixtures at
  step 0, the mixture the reference was trained on), and are recomputed from
  History at every call: alpha_1..alpha_T are a pure function of the
  reference losses and the domain losses at the T checkpoints after it, so
  the running sum for the time average needs no state and a resumed worker
  proposes exactly what an uninterrupted one would.
- The proposal is the time average; the loop then applies the Goodhart hold
  and the shared constraints (smoothing toward uniform, floor, cap, max
  change) as for every strategy.

The forecast per steer skill is the latent slope scaled by the change in the
skill's data share (backend.controllers.forecast): DoReMi has no model of
skills.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from backend.controllers import History, Proposal, register_strategy
from backend.controllers.forecast import slope_forecasts
from backend.controllers.settings import config_error

ETA = 1.0  # DoReMi's EG step size (paper default)
SMOOTHING_C = 1e-3  # DoReMi's mix with uniform after every step (paper default c)


def losses_by_step(history: History) -> dict[int, dict[str, float]]:
    """step -> {domain: held-out loss}, for the checkpoints that measured every domain."""
    by_step: dict[int, dict[str, float]] = {}
    for d in history.domains:
        for m in history.domain_loss.get(d, []):
            by_step.setdefault(m["step"], {})[d] = float(m["value"])
    return {s: v for s, v in sorted(by_step.items()) if len(v) == len(history.domains)}


def initial_mixture(history: History, current: dict[str, float]) -> dict[str, float]:
    """The mixture trained first (History.mixtures at its earliest step);
    the current one when the history holds none."""
    if history.mixtures:
        w = min(history.mixtures, key=lambda m: m["step"])["weights"]
        total = sum(w.get(d, 0.0) for d in history.domains)
        if total > 0:
            return {d: w.get(d, 0.0) / total for d in history.domains}
    return dict(current)


@dataclass(kw_only=True)
class DoReMiSettings:
    """`doremi`'s settings (controller.options)."""

    reference_step: int | None = None
    """The checkpoint step whose held-out domain losses are the reference (a
    frozen earlier checkpoint of this run); None: the first checkpoint after
    step 0."""
    reference_losses: dict[str, float] | None = None
    """Held-out loss per domain of a separately trained reference model
    (DoReMi's reference: a run of the same model on the baseline mixture,
    e.g. its last checkpoint's `domain_loss` rows). Set, it replaces
    reference_step."""

    def validate(self, path: str, run_cfg=None) -> None:
        """Raise ConfigError naming the field; with the run's config
        (`run_cfg`), also check reference_step against its checkpoints and
        reference_losses against its domains."""
        ref = self.reference_step
        if ref is not None and ref < 0:
            raise config_error(f"{path}.reference_step: must be >= 0 (a checkpoint step), got {ref}")
        for d, v in (self.reference_losses or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise config_error(f"{path}.reference_losses.{d}: must be a finite loss > 0, got {v!r}")
        if run_cfg is None:
            return
        every, steps = run_cfg.train.checkpoint_every, run_cfg.train.steps
        if ref is not None and (ref % every or ref >= steps):
            raise config_error(f"{path}.reference_step: {ref} is not a checkpoint the run can still steer from "
                         f"(a multiple of train.checkpoint_every {every} below train.steps {steps})")
        names = [d.name for d in run_cfg.data.domains]
        if self.reference_losses is not None and set(self.reference_losses) != set(names):
            missing = sorted(set(names) - set(self.reference_losses))
            extra = sorted(set(self.reference_losses) - set(names))
            raise config_error(f"{path}.reference_losses: needs exactly the domains {names} "
                         f"(missing {missing}, unknown {extra})")


@register_strategy("doremi", settings=DoReMiSettings)
class DoReMi:
    def __init__(self, settings: DoReMiSettings):
        self.settings = settings

    def reference_step(self, losses: dict[int, dict[str, float]]) -> int | None:
        """The configured reference step, or the first checkpoint after step
        0; None while that checkpoint has no losses yet."""
        if self.settings.reference_step is not None:
            return self.settings.reference_step if self.settings.reference_step in losses else None
        after0 = [s for s in losses if s > 0]
        return after0[0] if after0 else None

    def iterates(self, history: History, current: dict[str, float]) -> dict:
        """The EG iterates from the reference on, recomputed from History:
        {ref_step, ref, steps, excess (last), alphas}. ref_step is -1 for
        an external reference (every checkpoint of the run takes a step)."""
        losses = losses_by_step(history)
        if self.settings.reference_losses is not None:
            ref_step, ref = -1, dict(self.settings.reference_losses)
        else:
            ref_step = self.reference_step(losses)
            if ref_step is None:
                return {"ref_step": None, "steps": [], "alphas": []}
            ref = losses[ref_step]
        names, k = history.domains, len(history.domains)
        alpha = initial_mixture(history, current)
        alphas, steps, excess = [], [], {}
        for step, now in losses.items():
            if step <= ref_step:
                continue
            excess = {d: now[d] - ref[d] for d in names}
            lam = {d: max(0.0, excess[d]) for d in names}
            top = max(lam.values())  # subtracting the max never overflows
            raw = {d: alpha[d] * math.exp(ETA * (lam[d] - top)) for d in names}
            total = sum(raw.values())
            alpha = {d: (1 - SMOOTHING_C) * raw[d] / total + SMOOTHING_C / k for d in names}
            alphas.append(alpha)
            steps.append(step)
        return {"ref_step": ref_step, "ref": ref, "now": losses[steps[-1]] if steps else ref,
                "steps": steps, "excess": excess, "alphas": alphas}

    def propose(self, history: History, current: dict[str, float]) -> Proposal:
        """Raw weights: the time average of the EG iterates (the current
        mixture before the first step)."""
        it = self.iterates(history, current)
        names = history.domains
        if not it["alphas"]:
            if it["ref_step"] is None:
                wait = (f"step {self.settings.reference_step}" if self.settings.reference_step is not None
                        else "the first checkpoint after step 0")
                why = f"waiting for the reference checkpoint ({wait}) and its held-out domain losses"
            elif it["ref_step"] < 0:
                why = "no held-out domain losses of this run yet, so no EG step"
            else:
                why = f"reference at step {it['ref_step']}; no checkpoint after it yet, so no EG step"
            return Proposal(weights=dict(current), rationale={d: f"unchanged, {why}" for d in names})
        t = len(it["alphas"])
        avg = {d: sum(a[d] for a in it["alphas"]) / t for d in names}
        last = it["alphas"][-1]
        ref_name = "reference model" if it["ref_step"] < 0 else f"step {it['ref_step']}"
        rationale = {}
        for d in names:
            ex = it["excess"][d]
            rationale[d] = (
                f"held-out loss {it['now'][d]:.3f} vs reference "
                f"{it['ref'][d]:.3f} ({ref_name}): excess {ex:+.3f}, clipped {max(0.0, ex):.3f}; "
                f"EG weight {last[d]:.3f}, time average over {t} checkpoint{'s' * (t > 1)} {avg[d]:.3f}"
            )
        return Proposal(weights=avg, rationale=rationale)

    def forecast(self, history: History, current: dict[str, float], weights: dict[str, float]) -> dict[str, dict]:
        """The latent slope scaled by the change in data share (DoReMi has no
        model of skills)."""
        return slope_forecasts(history.latent(), history.links(), current, weights)
