"""backend/forecast_errors.py: after each checkpoint the forecast of the
proposal whose mixture trained the stretch that ended there is scored, on a
fresh on-disk database per test."""

import sqlite3

import pytest

from backend.config import preset
from backend.decisions import decide, set_mixture
from backend.forecast_errors import record_forecast_errors

from conftest import DOMAINS, PROPOSED, UNIFORM


@pytest.fixture
def run_id(store):
    """A run with its initial mixture and latent scores at step 0."""
    rid = store.create_run(preset("tiny").to_dict())
    store.add_segment(rid, from_step=0, tokens_at=0, weights=UNIFORM, source="initial")
    latent(store, rid, 0, copy=0.2, add2=0.1)
    return rid


def latent(store, run_id, step, **scores):
    store.set_capability(run_id, [{"step": step, "skill": s, "tokens_seen": step * 100, "score": v,
                                   "lo": max(0.0, v - 0.05), "hi": min(1.0, v + 0.05)} for s, v in scores.items()])


def propose(store, run_id, step, forecast, strategy="deficit"):
    return store.add_proposal(run_id, step=step, strategy=strategy, current_weights=store.current_weights(run_id),
                              weights=PROPOSED, rationale={d: "why" for d in DOMAINS}, forecast=forecast)


def forecast(**skills):
    return {s: {"score": now, "expected": nxt, "basis": "latent slope"} for s, (now, nxt) in skills.items()}


def applied_at_once(store, run_id, step, fc):
    """A proposal made and applied at the same checkpoint (policy auto)."""
    pid = propose(store, run_id, step, fc)
    decide(store, pid, "approve", by="auto")
    store.apply_approved(run_id, step=step, tokens_at=step * 100)
    return pid


def test_a_forecast_is_scored_at_the_next_checkpoint(store, run_id):
    pid = applied_at_once(store, run_id, 0, forecast(copy=(0.2, 0.3), add2=(0.1, 0.15)))
    latent(store, run_id, 10, copy=0.35, add2=0.1)
    rows = record_forecast_errors(store, run_id, 10)
    assert len(rows) == 2
    stored = store.forecast_errors(run_id)
    assert [(r["step"], r["skill"]) for r in stored] == [(10, "add2"), (10, "copy")]
    add2, copy = stored
    assert copy["proposal_id"] == pid and (copy["proposal_step"], copy["applied_step"]) == (0, 0)
    assert (copy["forecast"], copy["actual"]) == (pytest.approx(0.3), pytest.approx(0.35))
    assert copy["error"] == pytest.approx(0.05)  # actual - forecast
    assert (copy["forecast_change"], copy["actual_change"]) == (pytest.approx(0.1), pytest.approx(0.15))
    assert add2["error"] == pytest.approx(-0.05) and add2["basis"] == "latent slope"
    assert store.forecast_errors(run_id, skill="copy") == [copy]


def test_recording_again_replaces_instead_of_adding(store, run_id):
    applied_at_once(store, run_id, 0, forecast(copy=(0.2, 0.3), add2=(0.1, 0.15)))
    latent(store, run_id, 10, copy=0.35, add2=0.1)
    record_forecast_errors(store, run_id, 10)
    record_forecast_errors(store, run_id, 10)  # a resumed worker redoes the boundary
    assert len(store.forecast_errors(run_id)) == 2
    latent(store, run_id, 10, copy=0.4, add2=0.1)  # re-estimated
    record_forecast_errors(store, run_id, 10)
    rows = store.forecast_errors(run_id, skill="copy")
    assert len(rows) == 1 and rows[0]["error"] == pytest.approx(0.1)


def test_only_the_checkpoint_right_after_the_application_is_scored(store, run_id):
    applied_at_once(store, run_id, 0, forecast(copy=(0.2, 0.3)))
    latent(store, run_id, 10, copy=0.35)
    record_forecast_errors(store, run_id, 10)
    latent(store, run_id, 20, copy=0.5)  # the same mixture trains on; no new proposal
    assert record_forecast_errors(store, run_id, 20) == []
    assert [r["step"] for r in store.forecast_errors(run_id)] == [10]
    assert record_forecast_errors(store, run_id, 0) == []  # nothing before the first checkpoint


def test_a_proposal_applied_late_is_scored_from_where_it_started(store, run_id):
    latent(store, run_id, 10, copy=0.35)
    pid = propose(store, run_id, 10, forecast(copy=(0.35, 0.45)))
    latent(store, run_id, 20, copy=0.4)
    assert record_forecast_errors(store, run_id, 20) == []  # the initial mixture trained 10 -> 20
    decide(store, pid, "approve", by="ana")  # a person approved it after the checkpoint at 20 ...
    store.apply_approved(run_id, step=20, tokens_at=2000)  # ... so it trains from step 20
    latent(store, run_id, 30, copy=0.55)
    (row,) = record_forecast_errors(store, run_id, 30)
    assert (row["proposal_step"], row["applied_step"], row["step"]) == (10, 20, 30)
    # the change it predicted (+0.10), from the score where its mixture started (0.40)
    assert row["score"] == pytest.approx(0.4) and row["forecast"] == pytest.approx(0.5)
    assert row["actual"] == pytest.approx(0.55) and row["error"] == pytest.approx(0.05)


def test_segments_without_a_forecast_record_nothing(store, run_id):
    # a person's manual mixture
    set_mixture(store, run_id, PROPOSED, step=0, by="ana")
    store.apply_approved(run_id, step=0, tokens_at=0)
    latent(store, run_id, 10, copy=0.3)
    assert record_forecast_errors(store, run_id, 10) == []
    # a strategy that forecasts nothing (static)
    applied = applied_at_once(store, run_id, 10, {})
    latent(store, run_id, 20, copy=0.4)
    assert record_forecast_errors(store, run_id, 20) == [] and store.proposal(applied)["status"] == "applied"
    # a replayed segment
    store.add_segment(run_id, from_step=20, tokens_at=2000, weights=UNIFORM, source="replay")
    latent(store, run_id, 30, copy=0.5)
    assert record_forecast_errors(store, run_id, 30) == []
    # a forecast skill with no latent score at the checkpoint is skipped
    applied_at_once(store, run_id, 30, forecast(copy=(0.5, 0.6), gone=(0.1, 0.2)))
    latent(store, run_id, 40, copy=0.55)
    assert [r["skill"] for r in record_forecast_errors(store, run_id, 40)] == ["copy"]
    assert store.forecast_errors(run_id + 1) == []


def test_forecast_errors_are_plain_sqlite(db, store, run_id):
    applied_at_once(store, run_id, 0, forecast(copy=(0.2, 0.3)))
    latent(store, run_id, 10, copy=0.35)
    record_forecast_errors(store, run_id, 10)
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT typeof(run_id), typeof(step), typeof(forecast), typeof(error), typeof(basis) "
                          "FROM forecast_errors").fetchone()
    finally:
        con.close()
    assert row == ("integer", "integer", "real", "real", "text")
