"""backend/controllers/forecast.py: the slope forecast every proposal of a
strategy without a model of skills carries. Then forecast errors: after
each checkpoint the store scores the forecast of the proposal whose mixture
trained the stretch that ended there (Store.record_forecast_errors), on a
fresh on-disk database per test."""

import sqlite3

import pytest

from backend.config import preset
from backend.controllers.forecast import SLOPE_BASIS, slope_forecast, slope_forecasts

from test_store import DOMAINS, PROPOSED, UNIFORM


# -- the shared slope forecast --------------------------------------------------------

THREE = {"strings": 1 / 3, "arithmetic": 1 / 3, "noise": 1 / 3}
SKILL_DOMAINS = {"copy": ["strings"], "add2": ["arithmetic"]}


def test_slope_forecast_scales_the_slope_by_the_change_in_data_share():
    f = slope_forecast(0.4, 0.1, ["strings"], THREE, {"strings": 0.5, "arithmetic": 0.3, "noise": 0.2})
    assert f == {"score": 0.4, "expected": pytest.approx(0.4 + 0.1 * 1.5), "basis": SLOPE_BASIS}
    assert slope_forecast(0.4, None, ["strings"], THREE, THREE)["expected"] == 0.4  # no slope yet
    assert slope_forecast(0.95, 0.2, ["strings"], THREE, THREE)["expected"] == 1.0  # a score stays a score
    est = {"copy": [{"score": 0.3, "slope": 0.0}, {"score": 0.4, "slope": 0.1}], "add2": [{"score": 0.2, "slope": 0.3}],
           "gone": []}
    out = slope_forecasts(est, SKILL_DOMAINS, THREE, THREE)
    assert set(out) == {"copy", "add2"}
    assert out["copy"]["expected"] == pytest.approx(0.5)
    assert out["add2"]["expected"] == 0.2  # one estimate: no slope


def test_slope_forecast_of_a_skill_whose_domains_had_no_weight():
    # a share of 0 now: the ratio has no meaning, so the forecast stays within [0, 1]
    f = slope_forecast(0.3, 0.1, ["strings"], {"strings": 0.0, "noise": 1.0}, {"strings": 0.5, "noise": 0.5})
    assert 0.0 <= f["expected"] <= 1.0 and f["expected"] >= f["score"]


# -- forecast errors --------------------------------------------------------------------


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
    store.decide(pid, "approve", by="auto")
    store.apply_approved(run_id, step=step, tokens_at=step * 100)
    return pid


def test_a_forecast_is_scored_at_the_next_checkpoint(store, run_id):
    pid = applied_at_once(store, run_id, 0, forecast(copy=(0.2, 0.3), add2=(0.1, 0.15)))
    latent(store, run_id, 10, copy=0.35, add2=0.1)
    rows = store.record_forecast_errors(run_id, 10)
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
    store.record_forecast_errors(run_id, 10)
    store.record_forecast_errors(run_id, 10)  # a resumed worker redoes the boundary
    assert len(store.forecast_errors(run_id)) == 2
    latent(store, run_id, 10, copy=0.4, add2=0.1)  # re-estimated
    store.record_forecast_errors(run_id, 10)
    rows = store.forecast_errors(run_id, skill="copy")
    assert len(rows) == 1 and rows[0]["error"] == pytest.approx(0.1)


def test_only_the_checkpoint_right_after_the_application_is_scored(store, run_id):
    applied_at_once(store, run_id, 0, forecast(copy=(0.2, 0.3)))
    latent(store, run_id, 10, copy=0.35)
    store.record_forecast_errors(run_id, 10)
    latent(store, run_id, 20, copy=0.5)  # the same mixture trains on; no new proposal
    assert store.record_forecast_errors(run_id, 20) == []
    assert [r["step"] for r in store.forecast_errors(run_id)] == [10]
    assert store.record_forecast_errors(run_id, 0) == []  # nothing before the first checkpoint


def test_a_proposal_applied_late_is_scored_from_where_it_started(store, run_id):
    latent(store, run_id, 10, copy=0.35)
    pid = propose(store, run_id, 10, forecast(copy=(0.35, 0.45)))
    latent(store, run_id, 20, copy=0.4)
    assert store.record_forecast_errors(run_id, 20) == []  # the initial mixture trained 10 -> 20
    store.decide(pid, "approve", by="ana")  # a person approved it after the checkpoint at 20 ...
    store.apply_approved(run_id, step=20, tokens_at=2000)  # ... so it trains from step 20
    latent(store, run_id, 30, copy=0.55)
    (row,) = store.record_forecast_errors(run_id, 30)
    assert (row["proposal_step"], row["applied_step"], row["step"]) == (10, 20, 30)
    # the change it predicted (+0.10), from the score where its mixture started (0.40)
    assert row["score"] == pytest.approx(0.4) and row["forecast"] == pytest.approx(0.5)
    assert row["actual"] == pytest.approx(0.55) and row["error"] == pytest.approx(0.05)


def test_segments_without_a_forecast_record_nothing(store, run_id):
    # a person's manual mixture
    store.set_mixture(run_id, PROPOSED, step=0, by="ana")
    store.apply_approved(run_id, step=0, tokens_at=0)
    latent(store, run_id, 10, copy=0.3)
    assert store.record_forecast_errors(run_id, 10) == []
    # a strategy that forecasts nothing (static)
    applied = applied_at_once(store, run_id, 10, {})
    latent(store, run_id, 20, copy=0.4)
    assert store.record_forecast_errors(run_id, 20) == [] and store.proposal(applied)["status"] == "applied"
    # a replayed segment
    store.add_segment(run_id, from_step=20, tokens_at=2000, weights=UNIFORM, source="replay")
    latent(store, run_id, 30, copy=0.5)
    assert store.record_forecast_errors(run_id, 30) == []
    # a forecast skill with no latent score at the checkpoint is skipped
    applied_at_once(store, run_id, 30, forecast(copy=(0.5, 0.6), gone=(0.1, 0.2)))
    latent(store, run_id, 40, copy=0.55)
    assert [r["skill"] for r in store.record_forecast_errors(run_id, 40)] == ["copy"]
    assert store.forecast_errors(run_id + 1) == []


def test_forecast_errors_are_plain_sqlite(db, store, run_id):
    applied_at_once(store, run_id, 0, forecast(copy=(0.2, 0.3)))
    latent(store, run_id, 10, copy=0.35)
    store.record_forecast_errors(run_id, 10)
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT typeof(run_id), typeof(step), typeof(forecast), typeof(error), typeof(basis) "
                          "FROM forecast_errors").fetchone()
    finally:
        con.close()
    assert row == ("integer", "integer", "real", "real", "text")
