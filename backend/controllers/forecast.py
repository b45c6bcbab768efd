"""The forecast every proposal carries: per steer skill, the latent score now
and the score expected at the next checkpoint if the proposal is applied.

Strategies without a model of skills (deficit, doremi, odm) forecast from the
latent learning slope, scaled by how much more (or less) of the skill's
domains the new mixture trains on:

    expected_s = clip(score_s + slope_s * share_s(new) / share_s(current), 0, 1)

slope_s is the latent slope in score per checkpoint (backend.capability);
share_s(w) = sum_j A_sj w_j is the weight of the domains that feed skill s,
each counted by its affinity A_sj (History.links(), backend.affinity). A skill
with a single checkpoint has no slope yet and is forecast to stay where it
is. A strategy with its own model of the skills (mixing-law) forecasts from
that model instead and says so in `basis`.
"""

from __future__ import annotations

from backend.affinity import describe, ranked, share

SLOPE_BASIS = "latent slope x change in the skill's affinity-weighted data share"


def slope_forecast(score: float, slope: float | None, links: dict[str, dict],
                   current: dict[str, float], weights: dict[str, float]) -> dict:
    """{score, expected, basis} of one skill: its latent slope (score per
    checkpoint; None before it has one) scaled by the change of its
    affinity-weighted share (`links`: domain -> {mean, lo, hi, source})
    from `current` to `weights`. The basis names the affinity it leaned on
    most."""
    old_share = share(links, current)
    ratio = share(links, weights) / old_share if old_share > 0 else 1.0
    rise = (slope or 0.0) * ratio
    top = ranked(links)[0] if links else None
    basis = SLOPE_BASIS + (f" (top: {top} {describe(links[top])})" if top else "")
    return {"score": score, "expected": min(1.0, max(0.0, score + rise)), "basis": basis}


def slope_forecasts(latent: dict[str, list[dict]], links: dict[str, dict[str, dict]],
                    current: dict[str, float], weights: dict[str, float]) -> dict[str, dict]:
    """slope_forecast of every steer skill with estimates and an affinity,
    from its latest latent estimate (History.latent(), History.links())."""
    out = {}
    for s, series in latent.items():
        if not series or s not in links:
            continue
        e = series[-1]
        slope = e.get("slope") if len(series) >= 2 else None
        out[s] = slope_forecast(e["score"], slope, links[s], current, weights)
    return out
