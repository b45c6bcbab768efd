"""Forecast errors: after each checkpoint, how far the forecast of the
proposal whose mixture trained the stretch that ended there was off.

`score_forecasts` is the arithmetic (pure); `record_forecast_errors` reads
what it needs from the store and writes the rows back.
"""

from __future__ import annotations

from backend.store import Store


def score_forecasts(proposal: dict, segment: dict, then: dict[str, float], now: dict[str, float],
                    step: int, prev_step: int) -> list[dict]:
    """Score a proposal's per-skill forecasts at checkpoint `step`.

    proposal: the stored proposal whose mixture trained from segment
    `from_step` (== prev_step, the checkpoint before `step`); then / now:
    latent score per skill at prev_step and at step. A proposal applied
    later than it was made (a person approved it after the next checkpoint)
    is scored from where its mixture started: forecast = latent score at
    applied_step + (expected - score), the change it predicted; when it was
    applied at once this is `expected` itself. Skills without a latent
    score at `step` or without an expected value are skipped."""
    rows = []
    for skill, f in (proposal["forecast"] or {}).items():
        if skill not in now or f.get("expected") is None:
            continue
        proposed_from = f.get("score")
        base = then.get(skill, proposed_from)
        change = f["expected"] - proposed_from if proposed_from is not None else None
        if base is None or change is None or base == proposed_from:
            forecast = f["expected"]  # applied where it was made: the forecast as it stands
        else:
            forecast = base + change
        rows.append({
            "proposal_id": proposal["id"], "skill": skill, "step": step,
            "proposal_step": proposal["step"], "applied_step": segment["from_step"], "score": base,
            "forecast": forecast, "actual": now[skill], "error": now[skill] - forecast,
            "forecast_change": change,
            "actual_change": now[skill] - base if base is not None else None,
            "basis": f.get("basis"),
        })
    return rows


def record_forecast_errors(store: Store, run_id: int, step: int) -> list[dict]:
    """At checkpoint `step`: score the forecasts of the proposal whose
    mixture trained the stretch that ended here against the latent scores
    at `step` (capability rows); returns the rows recorded.

    Only the first checkpoint after a proposal was applied is scored (a
    forecast looks one checkpoint ahead); replayed and manual segments carry
    no forecast. Insert-or-replace, so a resumed worker may call it again."""
    latent = store.capability(run_id)
    earlier = [r["step"] for r in latent if r["step"] < step]
    if not earlier:
        return []
    prev_step = max(earlier)
    started = [s for s in store.schedule(run_id) if s["from_step"] <= prev_step]
    seg = started[-1] if started else None
    if seg is None or seg["proposal_id"] is None or seg["from_step"] != prev_step:
        return []
    now = {r["skill"]: r["score"] for r in latent if r["step"] == step}
    then = {r["skill"]: r["score"] for r in latent if r["step"] == prev_step}
    rows = score_forecasts(store.proposal(seg["proposal_id"]), seg, then, now, step, prev_step)
    if rows:
        store.add_forecast_errors(run_id, rows)
    return [{"run_id": run_id, **r} for r in rows]
