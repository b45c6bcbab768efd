"""`deficit` (the default): a noise-aware, eval-driven exponentiated-gradient step.

It reads each steer skill's latent capability (backend.capability: score with
a 95% interval, learning slope per checkpoint with its interval), never the
raw numbers, and only acts on what stands out of the noise:

    deficit_s   = (target - score_s) / (1 - chance_s), or 0 when the
                  interval reaches the saturation level (saturated, or within
                  noise of it): the deficit above chance, so a skill at its
                  chance level (a yes/no task answered "yes" to every item)
                  lacks as much skill as one that scores 0 where a guess
                  scores 0 (as lm-eval's normalised scores count it)
    learnable_s = 1 at the first checkpoint (optimism: no slope yet),
                  0.5 + 0.5 * min(1, slope_s / 0.1) when the slope's whole
                  interval is above 0 (surely learning); otherwise (stalled,
                  or a slope within noise: the same, so a noisy slope never
                  moves weight) 0.5 if the skill has risen since its first
                  checkpoint (some estimate's interval above the first one's:
                  data has moved it, more may move it further), else 0.1 (no
                  sign yet that data moves it; the 0.1 keeps exploring it)
                  With the skill's chance level known (History.chance), both
                  "learning" and "risen" need the interval above chance: a
                  model that gives one constant answer to every item scores
                  about chance however it jumped, and that is no skill.
    priority_s  = deficit_s * learnable_s

A domain's gain is what it is expected to do for the steer skills, read
from the affinity matrix (History.links(), backend.affinity: how much each
domain feeds each skill, with an interval; declared links are its prior):

    gain_j = sum over steer skills s of priority_s * A_sj / PRIOR

With the declared links alone (no history yet) A_sj = PRIOR / n_j for the n_j
skills domain j is declared to stream, so gain_j is the mean priority of
those skills; a link nobody declared starts at 0. Gains are divided by
scale = max(max_i gain_i, GAIN_FLOOR): when every priority is small (early on,
all skills at 0 and none risen yet), the contrast between domains that feed
steer skills and domains that feed none still moves weight at a useful pace,
while GAIN_FLOOR = 0.25 caps how much a small difference between two noisy
deficits is amplified (4x at most). Then

    w_j <- w_j * exp(step_size * (gain_j - max_i gain_i) / scale)

Exploration: while a steer skill with priority > 0 has no domain clearly
first (backend.affinity.identified: the mixture has barely varied, so the
history cannot tell its domains apart), the domain whose links to those
skills are most uncertain keeps at least its current share and gains
EXPLORE = 0.1 of the mixture on top (the budget, per checkpoint) (sum of priority x posterior sd; a tie goes to the
domain trained least), and that domain's rationale says so. The loop then
applies the Goodhart hold and the shared constraints (smoothing, floor, cap,
max change), as for every strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backend import affinity
from backend.controllers import History, Proposal, register_strategy
from backend.controllers.forecast import slope_forecast
from backend.controllers.settings import check_positive, check_unit

PROGRESS_SCALE = 0.1  # a rise of 0.1 score per checkpoint counts as full progress
STALLED = 0.25 * PROGRESS_SCALE  # a slope surely below this counts as not moving
MOVED = 0.5  # learnability of a skill that data has moved before, now flat
UNMOVED = 0.1  # learnability of a skill that has never risen: exploration only
GAIN_FLOOR = 0.25  # gains are scaled by max(best gain, this)
SHOWN = 3  # affinities named per rationale line (the largest contributions)
EXPLORE = 0.1  # share of the mixture added, per checkpoint, to the least-known domain while a link is unknown


@dataclass(kw_only=True)
class DeficitSettings:
    """`deficit`'s settings (controller.options)."""

    step_size: float = 2.0
    """Exponentiated-gradient step size (eta)."""
    target: float = 1.0
    """Score a steer skill should reach; deficit = target - score."""
    saturation: float = 0.95
    """A skill at or above this score counts as saturated."""

    def validate(self, path: str, run_cfg=None) -> None:
        """Raise ConfigError naming the field (`path`.field) that is out of range."""
        check_positive(self, "step_size", path)
        check_unit(self, ("target", "saturation"), path)


@register_strategy("deficit", settings=DeficitSettings)
class Deficit:
    reads_links = True  # it steers by the affinity (History.links())
    def __init__(self, settings: DeficitSettings):
        self.settings = settings

    def skill_signal(self, series: list[dict], chance: float | None = None, constant: str | None = None,
                     target: float | None = None) -> dict:
        """The priority of one skill from its latent estimates, with why.
        With its chance level, a rise counts only when the skill's interval
        stands above chance: a model giving one constant answer to every
        item scores about chance, which is no skill, however it jumped.
        `constant` (that one answer, at the latest checkpoint) never counts
        as learning or as risen, whatever the interval says. `target`
        (default: the settings' target) sets the deficit."""
        e = series[-1]
        out = {"score": e["score"], "lo": e["lo"], "hi": e["hi"], "slope": e.get("slope"),
               "deficit": 0.0, "learnable": 0.0, "priority": 0.0, "why": ""}
        if e["score"] >= self.settings.saturation:
            out.update(priority=0.0, why="saturated")
            return out
        if e["hi"] >= self.settings.saturation:
            out.update(priority=0.0, why="deficit within noise of saturation")
            return out
        above = 1.0 - chance if chance is not None and chance < 1 else 1.0  # the score's room above chance
        out["deficit"] = max(0.0, (self.settings.target if target is None else target) - e["score"]) / above
        if len(series) < 2:
            out.update(learnable=1.0, slope=None, why="no slope yet")
        elif e["slope_lo"] > 0 and constant is None and (chance is None or e["lo"] > chance):
            out.update(learnable=0.5 + 0.5 * min(1.0, e["slope"] / PROGRESS_SCALE), why="learning")
        else:
            if e["slope_lo"] > 0:  # rising, but not yet beyond chance: that much a constant answer scores
                flat = "rising only to chance"
            else:
                flat = "stalled" if e["slope_hi"] < STALLED else "slope within noise, counted as stalled"
            floor = chance if chance is not None else float("-inf")
            if constant is not None:
                out.update(learnable=UNMOVED, why=f"{flat}; one answer to every item is a guess, not a rise")
            elif any(x["lo"] > max(series[0]["hi"], floor) for x in series[1:]):
                out.update(learnable=MOVED, why=f"{flat}; it has risen since its first checkpoint")
            elif chance is not None and e["lo"] <= chance:
                out.update(learnable=UNMOVED, why=f"{flat} at chance ({chance:.2f}: a constant answer scores "
                                                  f"that); it has never risen above chance: out of reach so far")
            else:
                out.update(learnable=UNMOVED, why=f"{flat}; it has never risen since its first checkpoint: "
                                                  f"out of reach so far")
        out["priority"] = out["deficit"] * out["learnable"]
        return out

    def signals(self, history: History) -> dict[str, dict]:
        """skill_signal of every steer skill with estimates; with the
        researcher's objective (History.objective), each skill's own target
        and its priority weight (multiplying its priority)."""
        objective = history.objective
        out = {}
        for s, v in history.latent().items():
            if not v:
                continue
            target = objective.target(s, self.settings.target) if objective is not None else None
            out[s] = self.skill_signal(v, history.chance.get(s), history.constant.get(s), target)
            if objective is not None:
                out[s]["priority"] *= objective.priority(s)
        return out

    def propose(self, history: History, current: dict[str, float]) -> Proposal:
        """Raw weights current * exp(step_size * (gain - best gain) / scale),
        plus EXPLORE of the mixture for the least-known domain while a
        skill's links are not identifiable."""
        skills = self.signals(history)
        links = history.links()
        skills = {s: k for s, k in skills.items() if s in links}
        contrib = {d: {s: k["priority"] * links[s][d]["mean"] / affinity.PRIOR for s, k in skills.items()}
                   for d in history.domains}
        gain = {d: sum(contrib[d].values()) for d in history.domains}
        mean_gain = sum(current[d] * gain[d] for d in history.domains)
        top = max(gain.values())  # subtracting the max never overflows
        scale = max(top, GAIN_FLOOR)
        raw = {d: current[d] * math.exp(self.settings.step_size * (gain[d] - top) / scale)
               for d in history.domains}

        unknown = sorted(s for s, k in skills.items() if k["priority"] > 0 and not affinity.identified(links[s]))
        explored = None
        if unknown:
            spread = {d: sum(skills[s]["priority"] * links[s][d]["sd"] for s in unknown) for d in history.domains}
            explored = max(history.domains, key=lambda d: (spread[d], -current[d]))
            total = sum(raw.values())  # the explored domain keeps at least its current share, plus EXPLORE
            raw[explored] = max(raw[explored], current[explored] * total) + EXPLORE * total

        rationale = {}
        for d in history.domains:
            used = sorted((s for s in skills if links[s][d]["mean"] > 0),
                          key=lambda s: (-contrib[d][s], -links[s][d]["mean"]))
            if not used:
                rationale[d] = f"streams no steer skill by the affinity estimate so far (gain 0 vs mean {mean_gain:.3f})"
            else:
                parts = []
                for s in used[:SHOWN]:
                    k = skills[s]
                    slope = "n/a" if k["slope"] is None else f"{k['slope']:+.3f}/ckpt"
                    parts.append(f"{s} {k['score']:.2f} [{k['lo']:.2f}, {k['hi']:.2f}] slope {slope}: {k['why']}; "
                                 f"affinity {affinity.describe(links[s][d])}")
                more = f"; {len(used) - SHOWN} more skills add {sum(contrib[d][s] for s in used[SHOWN:]):.3f}" \
                    if len(used) > SHOWN else ""
                rationale[d] = f"gain {gain[d]:.3f} vs mean {mean_gain:.3f}; " + "; ".join(parts) + more
            if d == explored:
                rationale[d] += (f"; exploring: +{EXPLORE:.2f} of the mixture, the history cannot "
                                 f"yet tell which domain feeds {', '.join(unknown)} (this domain's links are "
                                 f"the least known)")
        return Proposal(weights=raw, rationale=rationale)

    def forecast(self, history: History, current: dict[str, float], weights: dict[str, float]) -> dict[str, dict]:
        """The latent slope, scaled by how much more (or less) `weights`
        trains of the skill's domains, each counted by its affinity
        (backend.controllers.forecast)."""
        links = history.links()
        return {s: slope_forecast(k["score"], k["slope"], links[s], current, weights)
                for s, k in self.signals(history).items() if s in links}
