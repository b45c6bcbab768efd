"""The Goodhart guard: a closed loop that chases its own evaluation teaches
to the test, so every steer skill's held-out variant (another template and
value range, never shown to the controller) is watched.

An alert fires when, since the reference checkpoint (the run's start, or the
checkpoint where a person last acknowledged an alert on the skill), the
steer skill's latent score rose beyond its noise while the held-out score
rose less than half as much and the gap between the two rises is beyond
their combined intervals, at two checkpoints in a row: a held-out variant
that lags one checkpoint and then catches up (as one learning a little later
does) raises nothing. Until a person acknowledges it, the controller stops
pushing that skill.
"""

from __future__ import annotations

import math

Z = 2.0  # rises and gaps count when beyond ~2 standard deviations


def _sd(e: dict) -> float:
    # the 95% interval is +-1.96 sd (asymmetric after the sigmoid; close enough)
    return (e["hi"] - e["lo"]) / (2 * 1.96)


def check(steer: list[dict], holdout: list[dict], since_step: int = 0) -> dict | None:
    """steer, holdout: latent estimates by step. Returns the alert's numbers,
    or None while the held-out skill keeps up."""
    s_by = {e["step"]: e for e in steer}
    h_by = {e["step"]: e for e in holdout}
    steps = sorted(set(s_by) & set(h_by))
    base_steps = [s for s in steps if s <= since_step] or steps[:1]
    if not base_steps:
        return None
    b = base_steps[-1]
    later = [t for t in steps if t > b]
    if len(later) < 2:
        return None
    alerts = [_gap(s_by, h_by, b, t) for t in later[-2:]]
    return alerts[-1] if all(alerts) else None


def _gap(s_by: dict, h_by: dict, b: int, t: int) -> dict | None:
    rise_s = s_by[t]["score"] - s_by[b]["score"]
    rise_h = h_by[t]["score"] - h_by[b]["score"]
    sd_s = math.hypot(_sd(s_by[t]), _sd(s_by[b]))
    sd_h = math.hypot(_sd(h_by[t]), _sd(h_by[b]))
    gap = rise_s - rise_h
    if rise_s > Z * sd_s and gap > Z * math.hypot(sd_s, sd_h) and rise_h < 0.5 * rise_s:
        return {"from_step": b, "to_step": t, "steer_rise": rise_s, "holdout_rise": rise_h,
                "gap": gap, "gap_sd": math.hypot(sd_s, sd_h)}
    return None
