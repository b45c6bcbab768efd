"""The forecast every proposal carries: per steer skill, the latent score now
and the score expected at the next checkpoint if the proposal is applied.

Strategies without a model of skills (deficit, doremi, odm) forecast from the
latent learning slope, scaled by how much more (or less) of the skill's
domains the new mixture trains on:

    expected_s = clip(score_s + slope_s * share_s(new) / share_s(current), 0, 1)

slope_s is the latent slope in score per checkpoint (backend.capability);
share_s(w) is the summed weight of the domains that stream skill s. A skill
with a single checkpoint has no slope yet and is forecast to stay where it
is. A strategy with its own model of the skills (mixing-law) forecasts from
that model instead and says so in `basis`.
"""

from __future__ import annotations

SLOPE_BASIS = "latent slope x change in the skill's data share"


def slope_forecast(score: float, slope: float | None, domains: list[str],
                   current: dict[str, float], weights: dict[str, float]) -> dict:
    """{score, expected, basis} of one skill: its latent slope (score per
    checkpoint; None before it has one) scaled by the change of the summed
    weight of `domains` from `current` to `weights`."""
    old_share = sum(current[d] for d in domains) or 1e-9
    ratio = sum(weights[d] for d in domains) / old_share
    rise = (slope or 0.0) * ratio
    return {"score": score, "expected": min(1.0, max(0.0, score + rise)), "basis": SLOPE_BASIS}


def slope_forecasts(latent: dict[str, list[dict]], skill_domains: dict[str, list[str]],
                    current: dict[str, float], weights: dict[str, float]) -> dict[str, dict]:
    """slope_forecast of every steer skill with estimates, from its latest
    latent estimate (History.latent())."""
    out = {}
    for s, series in latent.items():
        if not series or s not in skill_domains:
            continue
        e = series[-1]
        slope = e.get("slope") if len(series) >= 2 else None
        out[s] = slope_forecast(e["score"], slope, skill_domains[s], current, weights)
    return out
