"""The demo presets tell the truth: `demo` shows most steer skills learning
above chance, and `demo-leak` (the demo plus a planted contamination) makes
the Goodhart guard fire. The slow tests run them for real."""

import pytest
from conftest import cli_json

from backend.config import preset
from backend.store import Store

LEAKED = "mul1"  # the skill whose steer items demo-leak streams
ABOVE_CHANCE = 5  # steer skills the demo ends with above chance beyond their 95% interval (issue 12)


def test_demo_leak_is_the_demo_plus_one_domain_that_streams_the_test():
    demo, leak = preset("demo").to_dict(), preset("demo-leak").to_dict()
    leaky = [d for d in leak["data"]["domains"] if d["contamination"]]
    assert [(d["name"], d["skills"], d["contamination"]) for d in leaky] == [("leaky", [LEAKED], 1.0)]
    # a small fixed benchmark: the 20 items a template that leak are the ones evaluated at every checkpoint
    assert (leak["evaluation"]["item_rounds"], leak["evaluation"]["items_per_skill"]) == (1, 20)
    # everything else is the demo's: the same model, budget, skills and honest domains
    leak["data"]["domains"] = [d for d in leak["data"]["domains"] if not d["contamination"]]
    for key in ("item_rounds", "items_per_skill"):
        leak["evaluation"][key] = demo["evaluation"][key]
    assert {**leak, "name": "demo"} == demo


def latest_scores(store: Store, run: int) -> dict[str, dict]:
    """Skill -> its latent estimate at the run's last checkpoint, with its chance level."""
    chance = {s["name"]: s["chance"] or 0.0 for s in store.skills(run)}
    est = {}
    for e in store.capability(run):
        est[e["skill"]] = {**e, "chance": chance[e["skill"]]}
    return est


@pytest.mark.demo
def test_demo_leak_raises_the_goodhart_alert_on_the_leaked_skill(tmp_path):
    """A shortened demo-leak (the first 1,500 steps; the preset's own
    cadence): the steer items of mul1 are memorised while its held-out
    variant stays at chance, and the guard says so."""
    cfg = tmp_path / "leak.toml"
    cfg.write_text('preset = "demo-leak"\n[train]\nsteps = 1500\n')
    db = tmp_path / "leak.db"
    res = cli_json("run", "--config", cfg, db=db, timeout=3600)
    assert res["status"] == "finished"
    store, run = Store(db), res["run"]
    alerts = store.events(run, "goodhart_alert")
    assert [a["after"]["skill"] for a in alerts] == [LEAKED], [a["message"] for a in alerts]
    est = latest_scores(store, run)
    assert est[LEAKED]["lo"] > est[LEAKED]["chance"]  # the test is passed...
    assert est[f"{LEAKED}_holdout"]["lo"] <= est[f"{LEAKED}_holdout"]["chance"]  # ...the skill is not learned
    # the controller stops pushing the leaked skill once the alert is open
    after = [p for p in store.proposals(run) if p["step"] >= alerts[0]["after"]["step"]]
    assert after and all("Goodhart guard" in p["rationale"]["leaky"] for p in after)


@pytest.mark.demo
def test_the_demo_learns_most_steer_skills_above_chance_and_says_which_are_out_of_reach(tmp_path):
    """The full demo: at the end ABOVE_CHANCE steer skills sit above chance
    by more than their 95% interval, they rose at different checkpoints, and
    at least one skill is out of reach, which the last proposal says."""
    db = tmp_path / "demo.db"
    res = cli_json("run", "--preset", "demo", db=db, timeout=3600)
    assert res["status"] == "finished"
    store, run = Store(db), res["run"]
    steer = {s["name"] for s in store.skills(run) if s["kind"] == "steer"}
    est = latest_scores(store, run)
    above = sorted(s for s in steer if est[s]["lo"] > est[s]["chance"])
    assert len(above) >= ABOVE_CHANCE, {s: (round(est[s]["score"], 3), est[s]["chance"]) for s in steer}
    first_above = {s: min(e["step"] for e in store.capability(run, skill=s) if e["lo"] > est[s]["chance"])
                   for s in above}
    assert len(set(first_above.values())) >= 2, first_above  # the skills rise at different times
    last = store.proposals(run)[-1]
    assert "out of reach" in " ".join(last["rationale"].values())
