"""`deficit` (the default): a noise-aware, eval-driven exponentiated-gradient step.

It reads each steer skill's latent capability (backend.capability: score with
a 95% interval, learning slope per checkpoint with its interval), never the
raw numbers, and only acts on what stands out of the noise:

    deficit_s   = target - score_s, or 0 when the interval reaches the
                  saturation level (saturated, or within noise of it)
    learnable_s = 1 at the first checkpoint (optimism: no slope yet),
                  0.5 + 0.5 * min(1, slope_s / 0.1) when the slope's whole
                  interval is above 0 (surely learning); otherwise (stalled,
                  or a slope within noise: the same, so a noisy slope never
                  moves weight) 0.5 if the skill has risen since its first
                  checkpoint (some estimate's interval above the first one's:
                  data has moved it, more may move it further), else 0.1 (no
                  sign yet that data moves it; the 0.1 keeps exploring it)
    priority_s  = deficit_s * learnable_s; 0 while the Goodhart guard holds
                  the skill back

A domain's gain is the mean priority of the steer skills it streams; one that
streams no steer skill has gain 0. Gains are divided by
scale = max(max_i gain_i, GAIN_FLOOR): when every priority is small (early on,
all skills at 0 and none risen yet), the contrast between domains that feed
steer skills and domains that feed none still moves weight at a useful pace,
while GAIN_FLOOR = 0.25 caps how much a small difference between two noisy
deficits is amplified (4x at most). Then

    w_j <- w_j * exp(step_size * (gain_j - max_i gain_i) / scale)

and the shared constraints (smoothing, floor, cap, max change) apply.
"""

from __future__ import annotations

import math

from backend.controllers import History, Proposal, register_strategy
from backend.controllers.constraints import apply_constraints
from backend.controllers.forecast import slope_forecast

PROGRESS_SCALE = 0.1  # a rise of 0.1 score per checkpoint counts as full progress
STALLED = 0.25 * PROGRESS_SCALE  # a slope surely below this counts as not moving
MOVED = 0.5  # learnability of a skill that data has moved before, now flat
UNMOVED = 0.1  # learnability of a skill that has never risen: exploration only
GAIN_FLOOR = 0.25  # gains are scaled by max(best gain, this)


@register_strategy("deficit")
class Deficit:
    def __init__(self, cfg):
        self.cfg = cfg

    def skill_signal(self, series: list[dict], blocked: str | None = None) -> dict:
        """The priority of one skill from its latent estimates, with why."""
        e = series[-1]
        out = {"score": e["score"], "lo": e["lo"], "hi": e["hi"], "slope": e.get("slope"),
               "deficit": 0.0, "learnable": 0.0, "priority": 0.0, "why": ""}
        if blocked:
            out.update(priority=0.0, why="held back by the Goodhart guard")
            return out
        if e["score"] >= self.cfg.saturation:
            out.update(priority=0.0, why="saturated")
            return out
        if e["hi"] >= self.cfg.saturation:
            out.update(priority=0.0, why="deficit within noise of saturation")
            return out
        out["deficit"] = max(0.0, self.cfg.target - e["score"])
        if len(series) < 2:
            out.update(learnable=1.0, slope=None, why="no slope yet")
        elif e["slope_lo"] > 0:
            out.update(learnable=0.5 + 0.5 * min(1.0, e["slope"] / PROGRESS_SCALE), why="learning")
        else:
            flat = "stalled" if e["slope_hi"] < STALLED else "slope within noise, counted as stalled"
            if any(x["lo"] > series[0]["hi"] for x in series[1:]):
                out.update(learnable=MOVED, why=f"{flat}; it has risen since its first checkpoint")
            else:
                out.update(learnable=UNMOVED, why=f"{flat}; it has never risen since its first checkpoint")
        out["priority"] = out["deficit"] * out["learnable"]
        return out

    def propose(self, history: History, current: dict[str, float]) -> Proposal:
        latent = history.latent()
        skills = {s: self.skill_signal(v, history.blocked.get(s)) for s, v in latent.items() if v}
        gain, feeds = {}, {}
        for d in history.domains:
            fed = [s for s, ds in history.skill_domains.items() if d in ds and s in skills]
            feeds[d] = fed
            gain[d] = sum(skills[s]["priority"] for s in fed) / len(fed) if fed else 0.0
        mean_gain = sum(current[d] * gain[d] for d in history.domains)
        top = max(gain.values())  # subtracting the max never overflows
        scale = max(top, GAIN_FLOOR)
        raw = {d: current[d] * math.exp(self.cfg.step_size * (gain[d] - top) / scale) for d in history.domains}
        weights = apply_constraints(raw, current, self.cfg)

        rationale = {}
        for d in history.domains:
            change = f"{current[d]:.3f} -> {weights[d]:.3f}"
            if not feeds[d]:
                rationale[d] = f"{change}: streams no steer skill (gain 0 vs mean {mean_gain:.3f})"
                continue
            parts = []
            for s in feeds[d]:
                k = skills[s]
                slope = "n/a" if k["slope"] is None else f"{k['slope']:+.3f}/ckpt"
                parts.append(f"{s} {k['score']:.2f} [{k['lo']:.2f}, {k['hi']:.2f}] slope {slope}: {k['why']}")
            rationale[d] = f"{change}: gain {gain[d]:.3f} vs mean {mean_gain:.3f}; " + "; ".join(parts)

        # the latent slope, scaled by how much more (or less) of the skill's
        # domains the new mixture trains on (backend.controllers.forecast)
        forecast = {s: slope_forecast(k["score"], k["slope"], history.skill_domains[s], current, weights)
                    for s, k in skills.items()}
        return Proposal(weights=weights, rationale=rationale, forecast=forecast)
