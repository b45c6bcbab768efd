"""backend/client.py: the client API on a fresh store with measurement rows
computed "elsewhere" (here: scores that rise with the tokens a skill's
domains received), with the real store, estimator, guard and strategies.
The preset tiny: 30 steps, a checkpoint every 10, skills copy and add2."""

import re

import pytest

from backend.client import RunClient
from backend.config import ConfigError, preset
from backend.decisions import decide
from backend.store import Store, StoreError

TOKENS_PER_STEP = 8 * 64


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "client.db")


def rows(client: RunClient, level: float) -> list[dict]:
    """A measurement row per skill (copy rises with `level`, add2 stays) and
    a held-out loss per domain."""
    out = []
    for s in client.store.skills(client.run_id):
        value = min(0.95, level) if s["base"] == "copy" else 0.1
        out.append({"skill": s["name"], "task": f"ext_{s['name']}", "metric": "exact_match", "value": value,
                    "stderr": 0.03, "n": 100, "prompt_variant": "p0", "decoding": "greedy",
                    "scorer": "exact_match"})
    for d in client.cfg.domain_names:
        out.append({"domain": d, "task": f"heldout_loss/{d}", "metric": "loss", "value": 3.0 - level,
                    "stderr": 0.01, "n": 4})
    return out


def checkpoint(client: RunClient, step: int, level: float) -> None:
    client.report_checkpoint(step, step * client.tokens_per_step, train_loss=3.0 - level,
                             tokens_per_domain={d: step for d in client.cfg.domain_names})
    client.report_measurements(step, rows(client, level))
    client.boundary(step)


def test_register_writes_domains_skills_and_the_first_segment(store):
    client = RunClient.register(store, preset("tiny").replace(policy="human"))
    run = store.run(client.run_id)
    assert run["status"] == "running" and run["policy"] == "human"
    assert [d["name"] for d in store.domains(client.run_id)] == client.cfg.domain_names
    names = [s["name"] for s in store.skills(client.run_id)]
    assert names == ["copy", "copy_holdout", "add2", "add2_holdout"]
    assert all(s["tasks"] and s["domains"] for s in store.skills(client.run_id))  # lm-eval tasks, feeding domains
    assert client.mixture_at(0) == pytest.approx({d: 1 / 6 for d in client.cfg.domain_names})
    # the same run, opened by id (a second process)
    assert RunClient(store, client.run_id).mixture_at(0) == client.mixture_at(0)


def test_register_refuses_domain_rows_that_do_not_fit_the_config(store):
    with pytest.raises(ConfigError, match=r"domains\[0\]\.name: 'web'"):
        RunClient.register(store, preset("tiny"), domains=[{"name": "web"}])
    with pytest.raises(ConfigError, match=r"domains\[0\]\.weight: unknown key"):
        RunClient.register(store, preset("tiny"), domains=[{"name": "strings", "weight": 1}])
    with pytest.raises(ConfigError, match="missing"):
        RunClient.register(store, preset("tiny"), domains=[{"name": "strings"}])
    assert store.runs() == []  # nothing written


def test_an_approved_proposal_applies_once_at_the_next_boundary(store):
    client = RunClient.register(store, preset("tiny").replace(policy="human"))
    rid = client.run_id
    first = client.mixture_at(0)
    checkpoint(client, 0, 0.1)
    (p,) = store.proposals(rid)
    assert p["status"] == "pending" and client.mixture_at(0) == first  # nothing applies until approved
    checkpoint(client, 10, 0.3)
    assert client.mixture_at(10) == first  # proposal 0 was never approved: the mixture holds
    pending = store.proposals(rid, "pending")[-1]
    decide(store, pending["id"], "approve", by="alice")
    assert client.mixture_at(15) == first  # approved, not yet applied: before the boundary, the old weights
    checkpoint(client, 20, 0.5)
    assert client.mixture_at(20) == pending["weights"] != first
    assert client.mixture_at(19) == first  # the stretch before the boundary trained the old weights
    applied = store.proposal(pending["id"])
    assert (applied["status"], applied["applied_step"]) == ("applied", 20)
    events = [e for e in store.events(rid, "applied") if e["proposal_id"] == pending["id"]]
    assert len(events) == 1 and events[0]["after"] == pending["weights"]  # audited
    # a second apply at the same boundary (a resumed trainer) is a no-op
    schedule = store.schedule(rid)
    assert client.apply(20)["id"] == pending["id"]
    client.boundary(20)
    assert store.schedule(rid) == schedule
    assert len(store.events(rid, "applied")) == 1
    # what the dashboard reads, as for a built-in run
    assert {c["skill"] for c in store.capability(rid)} >= {"copy", "add2"}
    assert [c["step"] for c in store.checkpoints(rid)] == [0, 10, 20]
    assert store.events(rid, "tokens_per_domain")[-1]["after"]["code"] == 20


def test_policy_auto_applies_its_own_proposal_at_once(store):
    client = RunClient.register(store, preset("tiny"))
    checkpoint(client, 0, 0.1)
    (p,) = store.proposals(client.run_id)
    assert p["status"] == "applied" and client.mixture_at(0) == p["weights"]


def test_measurement_rows_are_checked_and_nothing_is_written(store):
    client = RunClient.register(store, preset("tiny"))
    with pytest.raises(StoreError, match="no checkpoint at step 10"):
        client.report_measurements(10, rows(client, 0.1))
    client.report_checkpoint(0, 0)
    bad = rows(client, 0.1)
    bad[1] = {**bad[1], "skill": "poetry"}
    with pytest.raises(StoreError, match=r"rows\[1\]\.skill: unknown skill 'poetry'"):
        client.report_measurements(0, bad)
    with pytest.raises(StoreError, match=r"rows\[0\]\.colour: unknown key"):
        client.report_measurements(0, [{**rows(client, 0.1)[0], "colour": "red"}])
    with pytest.raises(StoreError, match=r"rows\[0\]\.domain: 'web'"):
        client.report_measurements(0, [{"domain": "web", "task": "x", "metric": "loss", "value": 1.0}])
    assert store.measurements(client.run_id) == []
    assert not store.checkpoint(client.run_id, 0)["evaluated"]


def test_finish_expires_what_is_still_open(store):
    client = RunClient.register(store, preset("tiny").replace(policy="human"))
    checkpoint(client, 0, 0.1)
    client.finish(30)
    assert store.run(client.run_id)["status"] == "finished"
    assert [p["status"] for p in store.proposals(client.run_id)] == ["expired"]


def test_a_metric_that_is_not_a_score_by_name_is_estimated_as_reported_and_not_steered(store):
    client = RunClient.register(store, preset("tiny").replace(policy="human"))
    rid = client.run_id
    # copy scored by BLEU (0-100), add2 by an f1 that turns out to be reported in 0-100
    metric = {"copy": "bleu", "add2": "f1"}
    store.set_skills(rid, [{**s, "metric": metric.get(s["name"], s["metric"])} for s in store.skills(rid)])
    for step, (bleu, f1) in zip((0, 10, 20), ((0.4, 0.3), (12.0, 0.4), (25.0, 45.0))):
        client.report_checkpoint(step, step * client.tokens_per_step, train_loss=3.0,
                                 tokens_per_domain={d: step for d in client.cfg.domain_names})
        client.report_measurements(step, [
            {"skill": s["name"], "task": f"ext_{s['name']}", "value": {"copy": bleu, "add2": f1}.get(s["name"], 0.1),
             "metric": metric.get(s["name"], "exact_match"), "stderr": 0.03, "n": 100}
            for s in store.skills(rid)])
        client.boundary(step)
    est = {(c["skill"], c["step"]): c for c in store.capability(rid)}
    assert est[("copy", 0)]["hi"] - est[("copy", 0)]["score"] == pytest.approx(
        est[("copy", 0)]["score"] - est[("copy", 0)]["lo"])  # BLEU 0.4 on its own scale, not logit
    assert est[("copy", 20)]["score"] == pytest.approx(25.0, abs=0.5)
    assert ("add2", 10) in est and ("add2", 20) not in est  # no estimate once f1 left [0, 1]
    why = client.history(client.estimate_and_guard(20)).unsteerable
    assert why["copy"] == "its metric bleu is not a [0, 1] score where higher is better"
    assert why["add2"] == "its metric f1 reported 45 at step 20, outside [0, 1]: not estimated from that checkpoint on"
    assert why.keys() == {"copy", "add2"}


def test_a_mixture_that_cannot_train_is_rejected_at_the_boundary_and_the_boundary_stays_open(store):
    """Policy auto; a folder domain prose already at its max_epochs when checkpoint 0 is reached:
    the strategy's proposal (which keeps prose at its floor) is approved, then rejected where it
    would apply; the mixture in force cannot train either, so the boundary stays open until a
    person sets one that fits."""
    from backend.client import EpochLimitError
    from backend.config import from_dict
    from backend.decisions import set_mixture

    cfg = preset("tiny").to_dict()
    cfg["data"]["domains"].append({"name": "prose", "source": "folder", "path": "examples/prose", "max_epochs": 0.5})
    cfg = from_dict(cfg)
    client = RunClient.register(store, cfg, domains=[{"name": d} for d in cfg.domain_names])
    rid = client.run_id
    usage = {d: {"tokens": 0, "epochs": None, "train_tokens": None} for d in cfg.domain_names}
    usage["prose"] = {"tokens": 500, "epochs": 0.5, "train_tokens": 1000}
    store.add_checkpoint(rid, step=0, tokens_seen=0, train_loss=None, wall_time=0.0, tokens_per_s=None, path="",
                         weights=client.mixture_at(0), domain_usage=usage)
    client.report_measurements(0, rows(client, 0.1))
    client.boundary(0)
    (p,) = store.proposals(rid)
    assert (p["decided_by"], p["status"], p["applied_step"]) == ("auto", "rejected", None)
    (event,) = store.events(rid, "rejected")
    assert re.search(r"its mixture cannot train from step 0: prose would reach \d\.\d\d epochs \(max_epochs 0\.5\)",
                     event["message"])
    assert [s["source"] for s in store.schedule(rid)] == ["initial"]
    with pytest.raises(EpochLimitError, match=r"mixture refused for steps 0-10: prose would reach"):
        client.stretch_weights(0)
    assert not store.checkpoint(rid, 0)["boundary_done"]
    fits = set_mixture(store, rid, dict.fromkeys(cfg.domain_names, 1.0) | {"prose": 0.0}, by="ana")
    client.boundary(0)  # the resumed worker
    assert store.proposal(fits)["applied_step"] == 0
    assert client.stretch_weights(0) == client.mixture_at(0) and client.mixture_at(0)["prose"] == 0.0


@pytest.mark.parametrize("value", [1.7, -0.5])
def test_a_steer_skill_off_its_range_at_the_first_checkpoint_is_not_guarded(store, value):
    """capability.estimate leaves out a skill with no estimate: the Goodhart
    guard skips it instead of failing every boundary (KeyError) for good."""
    client = RunClient.register(store, preset("tiny"))
    client.report_checkpoint(0, 0)
    bad = rows(client, 0.1)
    bad[0] = {**bad[0], "value": value}  # copy
    client.report_measurements(0, bad)
    client.boundary(0)
    assert store.checkpoint(client.run_id, 0)["boundary_done"]
    assert "copy" not in {c["skill"] for c in store.capability(client.run_id)}
    assert "copy" in client.history(client.estimate_and_guard(0)).unsteerable


@pytest.mark.parametrize("key, value, message", [
    ("value", "0.5", r"rows\[0\] \(skill copy\)\.value: expected a number, got '0\.5'"),
    ("value", float("nan"), r"rows\[0\] \(skill copy\)\.value: expected a finite number, got nan"),
    ("value", None, r"rows\[0\] \(skill copy\)\.value: expected a number, got None"),
    ("value", True, r"rows\[0\] \(skill copy\)\.value: expected a number, got True"),
    ("n", -5, r"rows\[0\] \(skill copy\)\.n: expected an integer >= 1, got -5"),
    ("n", 0, r"rows\[0\] \(skill copy\)\.n: expected an integer >= 1, got 0"),
    ("n", None, r"rows\[0\] \(skill copy\)\.n: expected an integer, got None"),
    ("n", "many", r"rows\[0\] \(skill copy\)\.n: expected an integer, got 'many'"),
    ("n", 2.5, r"rows\[0\] \(skill copy\)\.n: expected an integer, got 2\.5"),
    ("stderr", -0.1, r"rows\[0\] \(skill copy\)\.stderr: expected a number >= 0, got -0\.1"),
    ("stderr", float("nan"), r"rows\[0\] \(skill copy\)\.stderr: expected a finite number"),
    ("stderr", "x", r"rows\[0\] \(skill copy\)\.stderr: expected a number, got 'x'"),
    ("metric", None, r"rows\[0\] \(skill copy\)\.metric: expected a non-empty string, got None"),
    ("task", "", r"rows\[0\] \(skill copy\)\.task: expected a non-empty string, got ''"),
])
def test_measurement_values_are_checked_when_reported_and_nothing_is_written(store, key, value, message):
    client = RunClient.register(store, preset("tiny"))
    client.report_checkpoint(0, 0)
    bad = rows(client, 0.1)
    bad[0] = {**bad[0], key: value}
    with pytest.raises(StoreError, match=message):
        client.report_measurements(0, bad)
    assert store.measurements(client.run_id) == []
    assert not store.checkpoint(client.run_id, 0)["evaluated"]


def test_a_loss_row_needs_a_finite_value_and_may_leave_n_unknown(store):
    client = RunClient.register(store, preset("tiny"))
    client.report_checkpoint(0, 0)
    bad = rows(client, 0.1)
    bad[-1] = {**bad[-1], "value": float("inf")}
    with pytest.raises(StoreError, match=r"rows\[\d+\] \(domain \w+\)\.value: expected a finite number, got inf"):
        client.report_measurements(0, bad)
    missing = rows(client, 0.1)
    del missing[1]["task"]
    with pytest.raises(StoreError, match=r"rows\[1\] \(skill copy_holdout\)\.task: expected a non-empty string"):
        client.report_measurements(0, missing)
    twice = rows(client, 0.1)
    with pytest.raises(StoreError, match=r"rows\[\d+\]: the same task, metric and facets as rows\[0\]"):
        client.report_measurements(0, twice + [{**twice[0], "value": 0.9}])
    assert store.measurements(client.run_id) == []
    import numpy as np

    ok = rows(client, 0.1)
    ok[-1] = {**ok[-1], "n": None}
    ok[0] = {**ok[0], "n": np.int64(100), "value": np.float32(0.5)}
    client.report_measurements(0, ok)
    stored = {m["task"]: m for m in store.measurements(client.run_id)}
    assert stored[ok[-1]["task"]]["n"] is None and stored["ext_copy"]["n"] == 100


def test_a_refused_sample_leaves_the_measurements_unwritten(store):
    client = RunClient.register(store, preset("tiny"))
    client.report_checkpoint(0, 0)
    for sample, message in (({"task": "ext_copy", "doc_id": 0, "bogus": 1}, r"samples\[0\]\.bogus: unknown key"),
                            ({"task": "ext_copy"}, r"samples\[0\]\.doc_id: expected an integer, got None"),
                            ({"task": "ext_copy", "doc_id": "notint"}, r"samples\[0\]\.doc_id: expected an integer")):
        with pytest.raises(StoreError, match=message):
            client.report_measurements(0, rows(client, 0.1), samples=[sample])
    assert store.measurements(client.run_id) == [] and store.samples(client.run_id, 0) == []
    assert not store.checkpoint(client.run_id, 0)["evaluated"]


def test_measurements_of_a_checkpoint_whose_boundary_is_done_are_kept(store):
    """The boundary acted on them: a replayed call (same rows) changes nothing,
    other rows are refused, naming the step."""
    client = RunClient.register(store, preset("tiny").replace(policy="human"))
    checkpoint(client, 0, 0.2)
    before = store.measurements(client.run_id)
    client.report_measurements(0, rows(client, 0.2))  # replayed
    with pytest.raises(StoreError, match="the boundary of checkpoint 0 is done"):
        client.report_measurements(0, rows(client, 0.9))
    assert store.measurements(client.run_id) == before


@pytest.mark.parametrize("kwargs, message", [
    ({"step": -10}, r"step: expected an integer >= 0, got -10"),
    ({"step": 12.5}, r"step: expected an integer, got 12\.5"),
    ({"step": 500}, r"step: 500 is past the run's last step \(train\.steps 30\)"),
    ({"tokens_seen": "lots"}, r"tokens_seen: expected an integer, got 'lots'"),
    ({"tokens_seen": -100}, r"tokens_seen: expected an integer >= 0, got -100"),
    ({"tokens_seen": 5}, r"tokens_seen: 5 at step 20 goes backwards against checkpoint 10"),
    ({"train_loss": "low"}, r"train_loss: expected a number, got 'low'"),
    ({"weights": {"web": 1.0}}, r"weights: unknown domain 'web'"),
    ({"weights": "half"}, r"weights: expected an object"),
    ({"tokens_per_domain": {"web": 5}}, r"tokens_per_domain\.web: unknown domain"),
    ({"tokens_per_domain": {"strings": -3}}, r"tokens_per_domain\.strings: expected an integer >= 0, got -3"),
])
def test_a_checkpoint_is_checked_before_anything_is_written(store, kwargs, message):
    client = RunClient.register(store, preset("tiny").replace(policy="human"))
    client.report_checkpoint(10, 10 * TOKENS_PER_STEP)
    events = store.events(client.run_id)
    with pytest.raises(StoreError, match=message):
        client.report_checkpoint(**{"step": 20, "tokens_seen": 20 * TOKENS_PER_STEP, **kwargs})
    assert [c["step"] for c in store.checkpoints(client.run_id)] == [10]
    assert store.events(client.run_id) == events and store.run(client.run_id)["step"] == 10


def test_checkpoint_weights_must_sum_to_one_and_numpy_counts_are_taken(store):
    import numpy as np

    client = RunClient.register(store, preset("tiny"))
    doubled = {d: 2 * w for d, w in client.mixture_at(0).items()}
    with pytest.raises(StoreError, match="weights: sum to 2, not 1"):
        client.report_checkpoint(0, 0, weights=doubled)
    client.report_checkpoint(np.int64(0), np.int64(0), tokens_per_domain={"strings": np.int64(3)},
                             train_loss=np.float32(2.5))
    assert store.events(client.run_id, "tokens_per_domain")[-1]["after"] == {"strings": 3}
    assert store.checkpoint(client.run_id, 0)["train_loss"] == 2.5


def test_a_diverged_train_loss_is_stored_as_unknown_with_an_event(store):
    client = RunClient.register(store, preset("tiny"))
    client.report_checkpoint(0, 0, train_loss=float("nan"))
    assert store.checkpoint(client.run_id, 0)["train_loss"] is None
    (event,) = store.events(client.run_id, "train_loss")
    assert event["message"] == "training loss at step 0 is nan (diverged?); stored as unknown"


def test_a_stale_checkpoint_cannot_rewrite_the_schedule(store):
    """After the boundary at 20, a checkpoint at 10 is refused (it would add a
    segment at 10 holding the proposal approved for 20); repeating 20 (a
    resume) stays allowed and changes nothing."""
    client = RunClient.register(store, preset("tiny").replace(policy="human"))
    checkpoint(client, 0, 0.1)
    decide(store, store.proposals(client.run_id, "pending")[-1]["id"], "approve", by="alice")
    checkpoint(client, 20, 0.4)
    schedule = store.schedule(client.run_id)
    with pytest.raises(StoreError, match="step: 10 is before checkpoint 20, whose boundary is done"):
        client.report_checkpoint(10, 10 * TOKENS_PER_STEP)
    store.add_checkpoint(client.run_id, step=10, tokens_seen=10 * TOKENS_PER_STEP, train_loss=None, wall_time=0.0,
                         tokens_per_s=None, path="", weights=client.mixture_at(0))  # past the client's check
    with pytest.raises(StoreError, match="step: 10 is before checkpoint 20"):
        client.boundary(10)
    client.report_checkpoint(20, 20 * TOKENS_PER_STEP, path="again")
    client.boundary(20)
    assert store.schedule(client.run_id) == schedule


def test_no_boundary_after_the_run_finished(store):
    client = RunClient.register(store, preset("tiny"))
    checkpoint(client, 0, 0.1)
    client.finish(10)
    client.report_checkpoint(20, 20 * TOKENS_PER_STEP)
    client.report_measurements(20, rows(client, 0.3))
    schedule, proposals = store.schedule(client.run_id), store.proposals(client.run_id)
    with pytest.raises(StoreError, match=f"run {client.run_id} is finished: no boundary at step 20"):
        client.boundary(20)
    assert store.schedule(client.run_id) == schedule and store.proposals(client.run_id) == proposals
    assert store.run(client.run_id)["status"] == "finished"


def test_a_boundary_before_the_measurements_is_refused_and_writes_nothing(store):
    """An external trainer that calls boundary(k) before reporting checkpoint
    k's measurements is told which checkpoint lacks what; no estimate,
    proposal, decision or event is stored, and the boundary runs once they
    are reported."""
    client = RunClient.register(store, preset("tiny").replace(policy="auto"))
    rid = client.run_id
    client.report_checkpoint(0, 0)
    before = (store.events(rid), store.proposals(rid), store.schedule(rid), store.capability(rid),
              store.affinity(rid), store.checkpoint(rid, 0))
    stages = []
    with pytest.raises(StoreError, match=r"step: checkpoint 0 of run \d+ has no measurements; report them first "
                                         r"\(report_measurements\(0, rows\) or evaluate\(0, model, tokenizer\)\)"):
        client.boundary(0, on_stage=stages.append)
    assert (store.events(rid), store.proposals(rid), store.schedule(rid), store.capability(rid),
            store.affinity(rid), store.checkpoint(rid, 0)) == before
    assert stages == []
    client.report_measurements(0, rows(client, 0.1))
    client.boundary(0)
    assert store.checkpoint(rid, 0)["boundary_done"] and [p["status"] for p in store.proposals(rid)] == ["applied"]
