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

An alert's state is rebuilt from the run's events (goodhart_alert,
goodhart_ack): `alerts_from_events` is that state machine, pure; the other
functions read and write it through the store.
"""

from __future__ import annotations

import math

from backend.store import Store, StoreError
from backend.vocab import Z95

ALERT, ACK = "goodhart_alert", "goodhart_ack"

Z = 2.0  # rises and gaps count when beyond ~2 standard deviations


def _sd(e: dict) -> float:
    # the 95% interval is +-Z95 sd (asymmetric after the sigmoid; close enough)
    return (e["hi"] - e["lo"]) / (2 * Z95)


def check(steer: list[dict], holdout: list[dict], since_step: int = 0) -> dict | None:
    """steer, holdout: latent estimates by step. Returns the alert's numbers,
    or None while the held-out skill keeps up."""
    s_by = {e["step"]: e for e in steer}
    h_by = {e["step"]: e for e in holdout}
    # direction from the estimates (the skill's metric, as stored): for a
    # lower-is-better metric (a loss) improving is falling, so rises are
    # measured on the negated score
    sign = 1.0 if all(e.get("higher_is_better", True) for e in steer[-1:]) else -1.0
    steps = sorted(set(s_by) & set(h_by))
    base_steps = [s for s in steps if s <= since_step] or steps[:1]
    if not base_steps:
        return None
    b = base_steps[-1]
    later = [t for t in steps if t > b]
    if len(later) < 2:
        return None
    alerts = [_gap(s_by, h_by, b, t, sign) for t in later[-2:]]
    return alerts[-1] if all(alerts) else None


def _gap(s_by: dict, h_by: dict, b: int, t: int, sign: float = 1.0) -> dict | None:
    rise_s = sign * (s_by[t]["score"] - s_by[b]["score"])
    rise_h = sign * (h_by[t]["score"] - h_by[b]["score"])
    sd_s = math.hypot(_sd(s_by[t]), _sd(s_by[b]))
    sd_h = math.hypot(_sd(h_by[t]), _sd(h_by[b]))
    gap = rise_s - rise_h
    if rise_s > Z * sd_s and gap > Z * math.hypot(sd_s, sd_h) and rise_h < 0.5 * rise_s:
        return {"from_step": b, "to_step": t, "steer_rise": rise_s, "holdout_rise": rise_h,
                "gap": gap, "gap_sd": math.hypot(sd_s, sd_h)}
    return None


# -- alert lifecycle (events in the store) ------------------------------------


def alerts_from_events(events: list[dict]) -> dict[str, dict]:
    """Skill -> its latest alert event, for alerts not acknowledged since;
    `events` oldest first (any kinds; others are ignored)."""
    open_: dict[str, dict] = {}
    for e in events:
        skill = (e["after"] or {}).get("skill")
        if e["kind"] == ALERT:
            open_[skill] = e
        elif e["kind"] == ACK:
            open_.pop(skill, None)
    return open_


def open_alerts(store: Store, run_id: int) -> dict[str, dict]:
    """Skill -> its latest alert event, for the run's unacknowledged alerts."""
    return alerts_from_events(store.events(run_id, (ALERT, ACK)))


def raise_alert(store: Store, run_id: int, *, step: int, skill: str, message: str, data: dict) -> bool:
    """Record a Goodhart alert for a steer skill unless one is open;
    returns True when a new alert was stored."""
    with store.transaction():
        if skill in open_alerts(store, run_id):
            return False
        store.log_event(run_id, ALERT, message, actor="guard", after={**data, "skill": skill, "step": step})
    return True


def acknowledge(store: Store, run_id: int, skill: str, *, by: str, step: int, note: str | None = None) -> None:
    """A person acknowledges a skill's alert: the controller may push the
    skill again, and the guard compares progress from `step` on. StoreError
    when the skill has no open alert."""
    with store.transaction():
        if skill not in open_alerts(store, run_id):
            raise StoreError(f"run {run_id} has no open Goodhart alert for skill {skill!r}")
        store.log_event(run_id, ACK, f"alert on {skill} acknowledged" + (f": {note}" if note else ""),
                        actor=by, after={"skill": skill, "step": step})


def last_ack_step(store: Store, run_id: int, skill: str) -> int | None:
    """The step at which a person last acknowledged the skill's alert, or None."""
    for e in reversed(store.events(run_id, ACK)):
        if (e["after"] or {}).get("skill") == skill:
            return e["after"].get("step")
    return None
