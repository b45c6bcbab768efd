"""backend/loop.py in-process: the real ClosedLoop, store, estimator, guard
and strategies with the fakes of backend.testing (no torch, no lm-eval).
The preset tiny's cadence: 30 steps, a checkpoint every 10."""

import pytest

from backend.config import preset
from backend.decisions import DecisionError, decide, set_mixture
from backend.loop import PHASES, Checkpointer, ClosedLoop, Evaluator, Sampler, Trainer
from backend.store import Store
from backend.testing import Crash, crash_at, fake_components

EDITED = {"strings": 0.3, "arithmetic": 0.3, "logic": 0.1, "recall": 0.1, "noise": 0.1, "code": 0.1}


def new_run(store: Store, **changes) -> int:
    return store.create_run(preset("tiny").replace(**changes).to_dict())


def run_loop(store: Store, run_id: int, on_phase=None, **evaluator_options) -> str:
    return ClosedLoop(store, run_id, components=fake_components(**evaluator_options), progress=False,
                      on_phase=on_phase).run()


def decide_at(phase: str, step: int, act):
    """An on_phase hook: a person acts (act(step)) after `phase` at `step`,
    while the model trains the next stretch."""

    def hook(p, s):
        if (p, s) == (phase, step):
            act(s)

    return hook


def outcome(store: Store, run_id: int) -> dict:
    """What a resumed run must reproduce exactly."""
    return {
        "schedule": [(s["from_step"], s["weights"], s["source"]) for s in store.schedule(run_id)],
        "proposals": [(p["step"], p["weights"], p["rationale"], p["forecast"], p["status"], p["applied_step"])
                      for p in store.proposals(run_id)],
        "checkpoints": [(c["step"], c["weights"], c["boundary_done"]) for c in store.checkpoints(run_id)],
        "measurements": sorted((m["step"], m["task"] or "", m["value"]) for m in store.measurements(run_id)),
        "capability": [(c["step"], c["skill"], c["score"]) for c in store.capability(run_id)],
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("ref") / "cl.db")
    rid = new_run(store)
    assert run_loop(store, rid) == "finished"
    return outcome(store, rid)


def test_the_fakes_implement_the_loops_protocols(tmp_path):
    c = fake_components()(preset("tiny"), tmp_path)
    assert isinstance(c.trainer, Trainer) and isinstance(c.sampler, Sampler)
    assert isinstance(c.evaluator, Evaluator) and isinstance(c.checkpointer, Checkpointer)
    # the fake scores follow the data the trainer received
    before = c.evaluator.score("copy")
    c.trainer.train_step(c.sampler.batch({"strings": 1.0}, 8))
    assert c.evaluator.score("copy") > before
    assert c.evaluator.score("copy_holdout") == c.evaluator.score("copy")  # learnt, not taught to the test
    assert c.evaluator.score("add2") == before  # arithmetic got nothing


def test_auto_run_proposes_and_applies_at_every_checkpoint(store, uninterrupted):
    rid = new_run(store)
    assert run_loop(store, rid) == "finished"
    ps = store.proposals(rid)
    assert [(p["step"], p["status"], p["applied_step"]) for p in ps] == [(0, "applied", 0), (10, "applied", 10),
                                                                         (20, "applied", 20)]
    assert [s["from_step"] for s in store.schedule(rid)] == [0, 10, 20]
    # each stretch trained the mixture applied at its start
    for p in ps:
        assert store.checkpoint(rid, p["step"] + 10)["weights"] == p["final_weights"]
    # the fake scores follow the data: the domain that feeds no steer skill loses weight
    assert store.schedule(rid)[-1]["weights"]["noise"] < 1 / 6
    assert outcome(store, rid) == uninterrupted  # deterministic


def test_approval_applies_at_the_next_checkpoint_not_before(store):
    rid = new_run(store, policy="human")
    approve = decide_at("propose", 0, lambda s: decide(store, store.proposals(rid)[0]["id"], "approve", by="alice"))
    run_loop(store, rid, on_phase=approve)
    p0 = store.proposals(rid)[0]
    assert p0["status"] == "applied" and p0["applied_step"] == 10
    segs = store.schedule(rid)
    assert [(s["from_step"], s["source"], s["proposal_id"], s["decided_by"]) for s in segs] == \
           [(0, "initial", None, None), (10, "proposal", p0["id"], "alice")]
    assert store.checkpoint(rid, 10)["weights"] == segs[0]["weights"]  # the old mixture until step 10
    assert store.checkpoint(rid, 20)["weights"] == p0["final_weights"]


def test_a_newer_proposal_supersedes_a_pending_one(store):
    rid = new_run(store, policy="human")
    run_loop(store, rid)
    # the last one waited until the run finished, then expired: a finished
    # run shows no proposal waiting for a person
    assert [(p["step"], p["status"]) for p in store.proposals(rid)] == \
           [(0, "superseded"), (10, "superseded"), (20, "expired")]
    assert [s["source"] for s in store.schedule(rid)] == ["initial"]  # nothing decided, nothing applied
    assert "the run finished at step 30" in store.events(rid, "expired")[0]["message"]
    superseded = store.events(rid, "superseded")
    assert len(superseded) == 2 and all("a newer proposal arrived" in e["message"] for e in superseded)


def test_edited_weights_are_applied_at_the_next_checkpoint(store):
    rid = new_run(store, policy="human")
    edit = decide_at("propose", 10, lambda s: decide(store, store.proposals(rid)[-1]["id"], "edit",
                                                           weights=EDITED, by="bob"))
    run_loop(store, rid, on_phase=edit)
    p1 = store.proposals(rid)[1]
    assert (p1["step"], p1["status"], p1["applied_step"]) == (10, "applied", 20)
    assert p1["final_weights"] == pytest.approx(EDITED) and p1["final_weights"] != p1["weights"]
    assert [(s["from_step"], s["decided_by"]) for s in store.schedule(rid)] == [(0, None), (20, "bob")]
    assert store.checkpoint(rid, 30)["weights"] == pytest.approx(EDITED)


def test_manual_mixture_is_applied_at_the_next_checkpoint(store):
    rid = new_run(store, policy="human")
    manual = decide_at("estimate", 10, lambda s: set_mixture(store, rid, EDITED, step=s, by="carol"))
    run_loop(store, rid, on_phase=manual)
    # set after the estimate at step 10, before that checkpoint applies: it trains from 10 on
    segs = store.schedule(rid)
    assert [(s["from_step"], s["source"], s["decided_by"]) for s in segs] == \
           [(0, "initial", None), (10, "manual", "carol")]
    assert segs[1]["weights"] == pytest.approx(EDITED)
    assert store.checkpoint(rid, 20)["weights"] == pytest.approx(EDITED)
    # the strategy's proposals around it waited for a person; the last one
    # expired when the run finished (no checkpoint was left to apply it)
    assert [p["status"] for p in store.proposals(rid) if p["strategy"] != "manual"] == \
           ["superseded", "superseded", "expired"]


@pytest.mark.parametrize("step", [0, 10])
@pytest.mark.parametrize("phase", PHASES)
def test_resume_after_a_crash_at_each_phase_matches_an_uninterrupted_run(store, uninterrupted, phase, step):
    rid = new_run(store)
    with pytest.raises(Crash):
        run_loop(store, rid, on_phase=crash_at(phase, step))
    assert not store.checkpoint(rid, step)["boundary_done"]  # cut short inside the boundary
    assert run_loop(store, rid) == "finished"  # a fresh loop, as a restarted worker
    assert outcome(store, rid) == uninterrupted
    assert [e["message"] for e in store.events(rid, "resumed")] == [f"resumed from checkpoint at step {step}"]


def test_goodhart_hold_keeps_a_blocked_skills_domains_from_gaining(store):
    # copy rises on its steer tasks while its held-out twin stays flat: the guard fires
    rid = new_run(store, train={**preset("tiny").to_dict()["train"], "steps": 60})
    run_loop(store, rid, items=400, teach_to_test=("copy",))
    alerts = store.events(rid, "goodhart_alert")
    assert [e["after"]["skill"] for e in alerts] == ["copy"]
    blocked_from = alerts[0]["after"]["step"]
    held = [p for p in store.proposals(rid) if p["step"] >= blocked_from]
    assert held, "the guard fired after the last proposal"
    for p in held:
        assert p["weights"]["strings"] <= p["current_weights"]["strings"] + 1e-12
        assert "held back by the Goodhart guard: copy" in p["rationale"]["strings"]
    # before it fired, the deficit strategy pushed copy's domain
    before = [p for p in store.proposals(rid) if p["step"] < blocked_from]
    assert any(p["weights"]["strings"] > p["current_weights"]["strings"] for p in before)


def test_resume_falls_back_past_a_corrupt_last_checkpoint(store, uninterrupted, tmp_path):
    """A truncated last checkpoint does not block the resume: the loop skips
    it (with an event), resumes from the one before, retrains the stretch on
    the segment in force there, and ends exactly like a run never broken."""
    from pathlib import Path

    rid = new_run(store)
    with pytest.raises(Crash):
        run_loop(store, rid, on_phase=crash_at("apply", 20))
    last = Path(store.checkpoint(rid, 20)["path"]) / "state.json"
    last.write_text(last.read_text()[:5])  # truncated mid-write by a full disk
    assert run_loop(store, rid) == "finished"
    assert outcome(store, rid) == uninterrupted
    skipped = [e["message"] for e in store.events(rid, "checkpoint_skipped")]
    assert len(skipped) == 1 and "step 20" in skipped[0]


# -- a mixture that breaks a domain's max_epochs ----------------------------------

ALL_PROSE = {"strings": 0.0, "arithmetic": 0.0, "logic": 0.0, "recall": 0.0, "noise": 0.0, "code": 0.0, "prose": 1.0}
NO_PROSE = dict.fromkeys(ALL_PROSE, 1.0) | {"prose": 0.0}


def prose_run(store: Store) -> int:
    """The audit's repro: the tiny preset plus a folder domain prose of 10,000
    training tokens (the fakes' size_tokens) that may be trained 0.4 epochs,
    policy human. A stretch trains 3,840 tokens: all of them on prose pass
    4,000 once the uniform mixture has given prose its ~550 of the first."""
    from backend.config import from_dict

    cfg = preset("tiny").replace(policy="human").to_dict()
    cfg["data"]["domains"].append({"name": "prose", "source": "folder", "path": "examples/prose",
                                   "size_tokens": 10_000, "max_epochs": 0.4})
    return store.create_run(from_dict(cfg).to_dict())


def person(store: Store, rid: int, crash: tuple[str, int] | None = None):
    """Ana types all-prose at checkpoint 0 once it has applied what waited (it
    fits the data counted at step 0, so it is taken; it applies at 10); at
    checkpoint 10 she types it again (refused at once), then a mixture
    without prose. `crash`: the worker dies there, once."""
    made: dict = {}

    def hook(phase: str, step: int) -> None:
        if (phase, step) == ("propose", 0):
            made["all_prose"] = set_mixture(store, rid, ALL_PROSE, by="ana")
        if (phase, step) == ("propose", 10) and "no_prose" not in made:
            with pytest.raises(DecisionError, match=r"prose would reach 0\.\d\d epochs \(max_epochs 0\.4\)"):
                set_mixture(store, rid, ALL_PROSE, by="ana")
            made["no_prose"] = set_mixture(store, rid, NO_PROSE, by="ana")
        if (phase, step) == crash and "crashed" not in made:
            made["crashed"] = True
            raise Crash(f"injected crash after {phase} at step {step}")

    return hook, made


@pytest.mark.parametrize("crash", [None, ("estimate", 10), ("apply", 10)])
def test_a_mixture_past_max_epochs_is_rejected_at_its_checkpoint_and_the_run_trains_on(store, crash):
    rid = prose_run(store)
    hook, made = person(store, rid, crash)
    if crash:
        with pytest.raises(Crash):
            run_loop(store, rid, on_phase=hook)
        assert run_loop(store, rid, on_phase=hook) == "finished"  # resumed: the refusal holds
    else:
        assert run_loop(store, rid, on_phase=hook) == "finished"
    assert store.run(rid)["status"] == "finished"
    refused = store.proposal(made["all_prose"])
    assert (refused["status"], refused["decided_by"], refused["applied_step"]) == ("rejected", "ana", None)
    assert "its mixture cannot train from step 10: prose would reach" in refused["decision_reason"]
    (event,) = [e for e in store.events(rid, "rejected") if e["proposal_id"] == refused["id"]]
    assert event["actor"] == "worker" and "(max_epochs 0.4) (data.on_max_epochs = refuse)" in event["message"]
    # the schedule holds what trained: the first mixture to step 20, then the one without prose
    segs = store.schedule(rid)
    assert [(s["from_step"], s["source"], s["proposal_id"]) for s in segs] == \
        [(0, "initial", None), (20, "manual", made["no_prose"])]
    assert [c["weights"]["prose"] for c in store.checkpoints(rid)] == pytest.approx([1 / 7] * 3 + [0.0])
    assert store.checkpoints(rid)[-1]["domain_usage"]["prose"]["epochs"] <= 0.4
    assert store.events(rid, "max_epochs") == [] and store.events(rid, "failed") == []


# -- replay: an export in, the same schedule out ----------------------------------------


def test_a_replayed_export_exports_the_same_schedule_and_approvers(store, db):
    import json

    from backend.schedule import export_schedule, parse_schedule
    from backend.worker import start_replay

    rid = new_run(store)
    run_loop(store, rid)
    original = export_schedule(store, rid)
    replay_id = start_replay(str(db), parse_schedule(json.dumps(original)), source="schedule.json", detach=False)
    assert run_loop(store, replay_id) == "finished"
    keep = ("from_step", "to_step", "from_tokens", "to_tokens", "weights", "approved_by")
    replayed = export_schedule(store, replay_id)["segments"]
    assert [{k: s[k] for k in keep} for s in replayed] == [{k: s[k] for k in keep} for s in original["segments"]]
    # the first segment too keeps who approved it (the policy's auto-approval at step 0)
    assert [s["approved_by"] for s in replayed] == ["auto"] * 3 and {s["source"] for s in replayed} == {"replay"}


def test_a_stopped_run_exports_the_steps_it_trained_and_its_replay_trains_on(store, db):
    import json

    from backend.decisions import send_command
    from backend.schedule import export_schedule, parse_schedule
    from backend.worker import start_replay

    rid = new_run(store)
    stop = decide_at("propose", 10, lambda s: send_command(store, rid, "stop", by="ana"))
    assert run_loop(store, rid, on_phase=stop) == "stopped"
    assert [s["from_step"] for s in store.schedule(rid)] == [0, 10]  # applied at 10, never trained
    out = export_schedule(store, rid)
    assert [(s["from_step"], s["to_step"], s["to_tokens"]) for s in out["segments"]] == [(0, 10, 10 * 384)]
    replay_id = start_replay(str(db), parse_schedule(json.dumps(out)), source="schedule.json", detach=False)
    assert run_loop(store, replay_id) == "finished"
    (seg,) = export_schedule(store, replay_id)["segments"]  # as far as the file goes, then its last mixture
    assert (seg["from_step"], seg["to_step"], seg["weights"]) == (0, 30, out["segments"][0]["weights"])
