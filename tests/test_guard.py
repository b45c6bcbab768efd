"""backend/guard.py: the alarm rule and the alert lifecycle (rebuilt from events)."""

import pytest

from backend import guard
from backend.store import Store, StoreError


def est(step, score, half=0.05):
    return {"step": step, "score": score, "lo": max(0.0, score - half), "hi": min(1.0, score + half)}


def series(*scores, half=0.05):
    return [est(100 * i, s, half) for i, s in enumerate(scores)]


def test_fires_when_steer_rises_and_holdout_stalls():
    alert = guard.check(series(0.0, 0.4, 0.6), series(0.0, 0.0, 0.05))
    assert alert and alert["from_step"] == 0 and alert["to_step"] == 200
    assert alert["steer_rise"] == pytest.approx(0.6) and alert["holdout_rise"] == pytest.approx(0.05)
    assert alert["gap"] > 2 * alert["gap_sd"]


def test_one_checkpoint_of_lag_raises_nothing():
    # the held-out variant learns one checkpoint later, then keeps up
    assert guard.check(series(0.0, 0.35), series(0.0, 0.15)) is None
    assert guard.check(series(0.0, 0.35, 0.55), series(0.0, 0.15, 0.55)) is None


def test_quiet_when_both_rise_together():
    assert guard.check(series(0.0, 0.3, 0.7), series(0.0, 0.25, 0.6)) is None


def test_quiet_when_the_gap_is_within_the_intervals():
    # the same rise, measured so noisily that the gap means nothing
    assert guard.check(series(0.1, 0.3, half=0.3), series(0.1, 0.1, half=0.3)) is None


def test_quiet_when_steer_does_not_rise_beyond_noise():
    assert guard.check(series(0.0, 0.04), series(0.0, 0.0)) is None


def test_reference_moves_to_the_acknowledged_checkpoint():
    steer, held = series(0.0, 0.6, 0.65, 0.7), series(0.0, 0.05, 0.1, 0.15)
    assert guard.check(steer, held, since_step=0)
    # acknowledged at step 100: from there both moved alike
    assert guard.check(steer, held, since_step=100) is None


def test_alert_state_is_rebuilt_from_events():
    def ev(i, kind, skill):
        return {"id": i, "kind": kind, "after": {"skill": skill, "step": 10 * i}}

    events = [ev(1, "goodhart_alert", "copy"), ev(2, "goodhart_alert", "add2"), ev(3, "proposed", "copy"),
              ev(4, "goodhart_ack", "copy"), ev(5, "goodhart_alert", "add2")]
    assert {k: e["id"] for k, e in guard.alerts_from_events(events).items()} == {"add2": 5}
    assert guard.alerts_from_events(events[:3]).keys() == {"copy", "add2"}
    assert guard.alerts_from_events([]) == {}


def test_alert_lifecycle(tmp_path):
    store = Store(tmp_path / "a.db")
    from backend.config import preset

    run = store.create_run(preset("tiny").to_dict())
    data = {"steer_rise": 0.5, "holdout_rise": 0.0, "gap": 0.5, "gap_sd": 0.1, "from_step": 0, "to_step": 20}
    assert guard.raise_alert(store, run, step=20, skill="copy", message="copy rose alone", data=data)
    # one open alert per skill: a second is not stored
    assert not guard.raise_alert(store, run, step=30, skill="copy", message="again", data=data)
    assert set(guard.open_alerts(store, run)) == {"copy"}
    with pytest.raises(StoreError, match="no open Goodhart alert for skill 'add2'"):
        guard.acknowledge(store, run, "add2", by="alice", step=30)
    guard.acknowledge(store, run, "copy", by="alice", step=30, note="checked the items")
    assert guard.open_alerts(store, run) == {}
    assert guard.last_ack_step(store, run, "copy") == 30
    ack = store.events(run, "goodhart_ack")[-1]
    assert ack["actor"] == "alice" and "checked the items" in ack["message"]
    # after the acknowledgement a new alert can be raised again
    assert guard.raise_alert(store, run, step=50, skill="copy", message="again", data=data)


LEAK_CONFIG = """
preset = "tiny"
name = "{name}"
[model]
hidden_size = 96
num_layers = 2
num_heads = 4
intermediate_size = 256
[data]
context_length = 48
tokenizer_vocab = 400
[[data.domains]]
name = "strings"
source = "synthetic"
skills = ["copy"]
[[data.domains]]
name = "leaky"
source = "synthetic"
skills = ["copy"]
contamination = {contamination}
[[data.domains]]
name = "noise"
source = "random"
[evaluation]
skills = ["copy"]
items_per_skill = 4
item_rounds = 1  # a fixed benchmark, the usual target of contamination
batch_size = 48
max_gen_toks = 8
heldout_loss_sequences = 4
[train]
steps = 200
checkpoint_every = 25
batch_size = 16
lr = 1e-2
warmup_steps = 10
"""


@pytest.mark.slow
def test_planted_leak_fires_the_alarm_within_two_checkpoints_and_a_clean_run_never(tmp_path):
    from conftest import cli, cli_json

    stores = {}
    for name, contamination in (("leak", 1.0), ("clean", 0.0)):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(LEAK_CONFIG.format(name=name, contamination=contamination))
        res = cli_json("run", "--config", cfg, db=tmp_path / f"{name}.db")
        assert res["status"] == "finished"
        stores[name] = (Store(tmp_path / f"{name}.db"), res["run"])

    store, run = stores["leak"]
    # the leak shows in the raw numbers: the steer items are answered, the held-out ones not
    raw = {}
    for m in store.measurements(run):
        if m["metric"] == "exact_match":
            raw.setdefault((m["step"], m["skill"]), []).append(m["value"])
    gap = {step: sum(raw[(step, "copy")]) / 3 - raw[(step, "copy_holdout")][0]
           for step in sorted({s for s, _ in raw})}
    onset = min(step for step, g in gap.items() if g >= 0.25)
    alerts = store.events(run, "goodhart_alert")
    assert alerts, f"no alarm; steer - holdout by step: {gap}"
    assert alerts[0]["after"]["skill"] == "copy"
    assert onset <= alerts[0]["after"]["step"] <= onset + 2 * 25
    # the controller stops pushing copy while the alert is open
    after = [p for p in store.proposals(run) if p["step"] >= alerts[0]["after"]["step"]]
    assert after and all("Goodhart guard" in p["rationale"]["leaky"] for p in after)
    # a person acknowledges it from the command line
    db = tmp_path / "leak.db"
    assert [a["skill"] for a in cli_json("alerts", run, db=db)] == ["copy"]
    cli("ack-alert", run, "copy", "--by", "alice", db=db)
    assert guard.open_alerts(store, run) == {}

    store, run = stores["clean"]
    assert store.events(run, "goodhart_alert") == []


def test_a_lower_is_better_skill_alerts_when_its_loss_falls_alone():
    """Direction comes with the estimates: for a loss, improving is falling;
    the steer loss falling while the held-out loss stays is the alert, and
    both rising (getting worse) is none."""
    def series(values, hib=False, sd=0.02):
        return [{"step": 10 * i, "score": v, "lo": v - 1.96 * sd, "hi": v + 1.96 * sd, "higher_is_better": hib}
                for i, v in enumerate(values)]

    steer = series([3.0, 2.5, 2.0, 1.5])
    held = series([3.0, 3.0, 2.98, 2.99])
    alert = guard.check(steer, held)
    assert alert is not None and alert["steer_rise"] == pytest.approx(1.5)
    assert guard.check(series([3.0, 3.5, 4.0, 4.5]), held) is None  # worse, not better
    assert guard.check(series([3.0, 2.5, 2.0, 1.5], hib=True), held) is None  # read as a score: it fell
