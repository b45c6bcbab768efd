"""`deficit` (the default): an eval-driven exponentiated-gradient step.

For each steer skill s at the latest checkpoint:
    deficit_s  = target - score_s            (0 once score_s >= saturation)
    progress_s = score_s - score_s(previous checkpoint)
    learnable_s = 1 before there are two checkpoints (optimism), else
                  0.25 + 0.75 * min(1, max(0, progress_s) / 0.1)
    priority_s = deficit_s * learnable_s
Each domain's gain is the mean priority of the steer skills it streams (0 for
a domain that streams none), and the mixture moves by
    w_j <- w_j * exp(step_size * (gain_j - sum_i w_i gain_i))
before the shared constraints (smoothing, floor, cap, max change).

So weight flows toward domains whose skills are far from the target and
still moving, and away from saturated skills, stalled skills and domains
that teach nothing measured.
"""

from __future__ import annotations

import math

from backend.controllers import History, Proposal, register_strategy
from backend.controllers.constraints import apply_constraints

PROGRESS_SCALE = 0.1  # a rise of 0.1 per checkpoint counts as full progress


@register_strategy("deficit")
class Deficit:
    def __init__(self, cfg):
        self.cfg = cfg

    def skill_priority(self, series: list[dict]) -> dict:
        last = series[-1]
        score = last["value"]
        saturated = score >= self.cfg.saturation
        deficit = 0.0 if saturated else max(0.0, self.cfg.target - score)
        if len(series) < 2:
            progress, learnable = None, 1.0
        else:
            progress = score - series[-2]["value"]
            learnable = 0.25 + 0.75 * min(1.0, max(0.0, progress) / PROGRESS_SCALE)
        return {
            "score": score,
            "deficit": deficit,
            "progress": progress,
            "learnable": learnable,
            "priority": deficit * learnable,
            "saturated": saturated,
        }

    def propose(self, history: History, current: dict[str, float]) -> Proposal:
        skills = {s: self.skill_priority(v) for s, v in history.scores.items() if v}
        gain, feeds = {}, {}
        for d in history.domains:
            fed = [s for s, ds in history.skill_domains.items() if d in ds and s in skills]
            feeds[d] = fed
            gain[d] = sum(skills[s]["priority"] for s in fed) / len(fed) if fed else 0.0
        mean_gain = sum(current[d] * gain[d] for d in history.domains)
        # subtracting the largest gain (not the mean) gives the same mixture
        # after normalising and never overflows
        top = max(gain.values())
        raw = {d: current[d] * math.exp(self.cfg.step_size * (gain[d] - top)) for d in history.domains}
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
                prog = "n/a" if k["progress"] is None else f"{k['progress']:+.2f}"
                state = " saturated" if k["saturated"] else ""
                parts.append(f"{s} score {k['score']:.2f} deficit {k['deficit']:.2f} progress {prog}{state}")
            rationale[d] = f"{change}: gain {gain[d]:.3f} vs mean {mean_gain:.3f}; " + "; ".join(parts)

        forecast = {}
        for s, k in skills.items():
            # the last rise, scaled by how much more (or less) of the skill's
            # domains the new mixture trains on
            ds = history.skill_domains[s]
            old_share = sum(current[d] for d in ds) or 1e-9
            ratio = sum(weights[d] for d in ds) / old_share
            rise = max(0.0, k["progress"] or 0.0) * ratio
            forecast[s] = {
                "score": k["score"],
                "expected": min(1.0, k["score"] + rise),
                "basis": "last checkpoint's rise x change in the skill's data share",
            }
        return Proposal(weights=weights, rationale=rationale, forecast=forecast)
