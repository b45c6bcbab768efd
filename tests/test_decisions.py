"""backend/decisions.py: decisions, manual mixtures, the policy and commands,
as the CLI, the pages and the loop make them, on a fresh on-disk database
per test (threads and processes decide at once)."""

import math
import multiprocessing
import re
import sqlite3
import threading

import pytest

from backend.config import preset
from backend.decisions import (
    CommandError,
    DecisionError,
    auto_approve,
    decide,
    pin_link,
    send_command,
    set_mixture,
    set_objective,
    set_policy,
)
from backend.schedule import export_schedule
from backend.store import NotFound, Store, StoreError

DOMAINS = ["strings", "arithmetic", "logic", "recall", "noise", "code"]
UNIFORM = dict.fromkeys(DOMAINS, 1 / 6)
PROPOSED = {"strings": 0.3, "arithmetic": 0.3, "logic": 0.1, "recall": 0.1, "noise": 0.05, "code": 0.15}
MORE_CODE = {d: 1 for d in DOMAINS} | {"code": 5}


@pytest.fixture
def run_id(store):
    """A tiny run whose mixture starts uniform."""
    return _started(store, preset("tiny").to_dict())


def _started(store, config):
    rid = store.create_run(config)
    store.add_segment(rid, from_step=0, tokens_at=0, weights=UNIFORM, source="initial")
    return rid


def propose(store, run_id, step, weights=PROPOSED, strategy="deficit"):
    """A strategy's pending proposal at checkpoint `step`."""
    return store.add_proposal(run_id, step=step, strategy=strategy, current_weights=store.current_weights(run_id),
                              weights=weights, rationale=dict.fromkeys(DOMAINS, "why"), forecast={})


def raw_row(db, table, key, value):
    """A row as plain sqlite3 sees it (no decoding)."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        row = con.execute(f"SELECT * FROM {table} WHERE {key} = ?", (value,)).fetchone()
        return dict(row) if row else None
    finally:
        con.close()


def test_set_policy_is_audited(store, run_id):
    set_policy(store, run_id, "human", by="alice")
    assert store.run(run_id)["policy"] == "human"
    (ev,) = store.events(run_id, "policy")
    assert ev["actor"] == "alice" and ev["before"] == {"policy": "auto"} and ev["after"] == {"policy": "human"}
    with pytest.raises(StoreError):
        set_policy(store, run_id, "sometimes", by="cli")
    assert store.run(run_id)["policy"] == "human"
    set_policy(store, run_id, "human", by="bo")  # the policy in force: nothing to audit
    assert len(store.events(run_id, "policy")) == 1


def test_manual_mixture_is_an_approved_proposal(store, run_id):
    pid = propose(store, run_id, 10)
    decide(store, pid, "approve", by="cli")
    manual = set_mixture(store, run_id, {d: 1 for d in DOMAINS} | {"code": 5}, step=12, by="dana", reason="more code")
    p = store.proposal(manual)
    assert p["strategy"] == "manual" and p["status"] == "approved" and p["decided_by"] == "dana"
    assert p["final_weights"]["code"] == pytest.approx(0.5)
    applied = store.apply_approved(run_id, step=20, tokens_at=0)
    assert applied["id"] == manual  # decided last
    assert store.schedule(run_id)[-1]["source"] == "manual"
    assert store.proposal(pid)["status"] == "superseded"


@pytest.mark.parametrize("weights, words", [
    ({d: 1 for d in DOMAINS} | {"noise": math.nan}, ["'noise'", "not finite"]),
    ({d: 1 for d in DOMAINS} | {"logic": -1}, ["'logic'", "negative"]),
    (dict.fromkeys(DOMAINS, 0), ["zero"]),
    ({d: 1 for d in DOMAINS} | {"web": 1}, ["'web'", "unknown"]),
    ({d: 1 for d in DOMAINS[:-1]}, ["'code'", "missing"]),
    ([1] * 6, ["expected an object"]),
])
def test_set_mixture_refuses_invalid_weights(store, run_id, weights, words):
    with pytest.raises(DecisionError) as e:
        set_mixture(store, run_id, weights, step=5, by="cli")
    for w in words:
        assert w in str(e.value)
    assert store.proposals(run_id) == [] and store.events(run_id, "manual") == []


def test_set_mixture_needs_a_mixture(store):
    rid = store.create_run(preset("tiny").to_dict())
    with pytest.raises(StoreError, match="no mixture"):
        set_mixture(store, rid, UNIFORM, step=0, by="cli")


@pytest.mark.parametrize("first", ["approve", "reject", "edit"])
@pytest.mark.parametrize("second", ["approve", "reject", "edit"])
def test_decision_on_a_decided_proposal_is_refused_and_changes_nothing(db, store, run_id, first, second):
    pid = propose(store, run_id, 10)
    decide(store, pid, first, weights=UNIFORM if first == "edit" else None, by="alice")
    row_before = raw_row(db, "proposals", "id", pid)
    events_before = len(store.events(run_id))
    with pytest.raises(DecisionError) as e:
        decide(store, pid, second, weights=UNIFORM if second == "edit" else None, by="bob")
    assert "not pending" in str(e.value) and "alice" in str(e.value)
    assert raw_row(db, "proposals", "id", pid) == row_before
    assert len(store.events(run_id)) == events_before


def test_decision_on_an_applied_proposal_is_refused(db, store, run_id):
    pid = propose(store, run_id, 10)
    decide(store, pid, "approve", by="cli")
    store.apply_approved(run_id, step=10, tokens_at=0)
    before = raw_row(db, "proposals", "id", pid)
    with pytest.raises(DecisionError, match="applied"):
        decide(store, pid, "reject", by="cli")
    assert raw_row(db, "proposals", "id", pid) == before


@pytest.mark.parametrize("weights", [
    {d: 1 for d in DOMAINS} | {"noise": math.nan},
    {d: 1 for d in DOMAINS} | {"noise": -0.5},
    dict.fromkeys(DOMAINS, 0.0),
    {d: 1 for d in DOMAINS} | {"web": 1},
    {d: 1 for d in DOMAINS} | {"code": "lots"},
    None,
])
def test_edit_with_invalid_weights_leaves_it_pending(db, store, run_id, weights):
    pid = propose(store, run_id, 10)
    before = raw_row(db, "proposals", "id", pid)
    with pytest.raises(DecisionError):
        decide(store, pid, "edit", weights=weights, by="cli")
    assert raw_row(db, "proposals", "id", pid) == before
    assert store.proposal(pid)["status"] == "pending"
    assert decide(store, pid, "approve", by="cli")["status"] == "approved"  # still decidable


def test_unknown_action_is_refused(store, run_id):
    pid = propose(store, run_id, 10)
    with pytest.raises(DecisionError, match="unknown action"):
        decide(store, pid, "maybe", by="cli")
    assert store.proposal(pid)["status"] == "pending"


# -- a mixture must have a checkpoint left to apply at, and fit max_epochs ------------


def at_checkpoint(store, run_id, step, *, boundary_done=False, status="running", usage=None):
    """The run as its worker leaves it at checkpoint `step` (its boundary done or not)."""
    store.add_checkpoint(run_id, step=step, tokens_seen=step * 384, train_loss=None, wall_time=0.0,
                         tokens_per_s=None, path="", weights=store.current_weights(run_id), domain_usage=usage)
    store.mark_checkpoint(run_id, step, boundary_done=boundary_done)
    store.update_run(run_id, status=status, step=step)


@pytest.mark.parametrize("status, step, boundary_done", [
    ("finished", 30, True),
    ("running", 20, True),  # training its last stretch: the checkpoint at step 30 steers nothing
    ("stopped", 20, True),  # resumes from 20 into the last stretch
])
def test_a_mixture_with_no_checkpoint_left_to_apply_it_is_refused(db, store, run_id, status, step, boundary_done):
    pid = propose(store, run_id, step)
    at_checkpoint(store, run_id, step, boundary_done=boundary_done, status=status)
    before = raw_row(db, "proposals", "id", pid), len(store.events(run_id))
    said = f"run {run_id} is {status} at step {step} of 30; no checkpoint is left to apply a mixture"
    with pytest.raises(DecisionError, match=f"manual mixture refused: {said}"):
        set_mixture(store, run_id, MORE_CODE, by="ana")
    for action in ("approve", "edit"):
        with pytest.raises(DecisionError, match=f"proposal {pid} .* refused: {said}"):
            decide(store, pid, action, weights=MORE_CODE if action == "edit" else None, by="ana")
    steer = said.replace("to apply a mixture", "to steer")
    with pytest.raises(DecisionError, match=f"policy human refused: {steer}"):  # nothing left for a policy
        set_policy(store, run_id, "human", by="ana")
    with pytest.raises(DecisionError, match=f"pin refused: {steer}"):  # nor for a link to steer by
        pin_link(store, run_id, "copy", "code", True, by="ana")
    assert store.run(run_id)["policy"] == "auto" and store.pins(run_id) == {}
    assert (raw_row(db, "proposals", "id", pid), len(store.events(run_id))) == before
    assert [p["id"] for p in store.proposals(run_id)] == [pid]
    assert decide(store, pid, "reject", by="ana")["status"] == "rejected"  # a rejection applies nothing


@pytest.mark.parametrize("status", ["stopped", "failed", "running"])
def test_a_run_that_can_go_on_takes_a_mixture_at_its_next_checkpoint(store, run_id, status):
    at_checkpoint(store, run_id, 20, boundary_done=False, status=status)  # stopped before its boundary was done
    pid = set_mixture(store, run_id, MORE_CODE, by="ana")
    assert store.apply_approved(run_id, step=20, tokens_at=0)["id"] == pid


PROSE_USAGE = {d: {"tokens": 1000, "epochs": None, "train_tokens": None} for d in DOMAINS} | {
    "prose": {"tokens": 1000, "epochs": 0.1, "train_tokens": 10_000}}


def prose_run(store, on_max_epochs):
    """The tiny preset plus a folder domain prose (max_epochs 0.2, 10,000 training tokens, 1,000 trained)
    at its checkpoint at step 10: the stretch to 20 trains 3,840 tokens."""
    from backend.config import from_dict

    cfg = preset("tiny").to_dict()
    cfg["data"]["domains"].append({"name": "prose", "source": "folder", "path": "examples/prose", "max_epochs": 0.2})
    cfg["data"]["on_max_epochs"] = on_max_epochs
    rid = store.create_run(from_dict(cfg).to_dict())
    store.add_segment(rid, from_step=0, tokens_at=0, weights=dict.fromkeys(DOMAINS + ["prose"], 1 / 7),
                      source="initial")
    at_checkpoint(store, rid, 10, usage=PROSE_USAGE)
    return rid


ALL_PROSE = dict.fromkeys(DOMAINS, 0.0) | {"prose": 1.0}


def test_a_mixture_past_max_epochs_is_refused_naming_the_domain_its_epochs_and_limit(db, store):
    rid = prose_run(store, "refuse")
    said = r"from step 10 to 20, prose would reach 0\.48 epochs \(max_epochs 0\.2\) \(data\.on_max_epochs = refuse\)"
    with pytest.raises(DecisionError, match="manual mixture refused: " + said):
        set_mixture(store, rid, ALL_PROSE, by="ana")
    assert store.proposals(rid) == [] and store.events(rid, "manual") == []
    pid = store.add_proposal(rid, step=10, strategy="deficit", current_weights=store.current_weights(rid),
                             weights=ALL_PROSE, rationale={}, forecast={})
    before = raw_row(db, "proposals", "id", pid)
    with pytest.raises(DecisionError, match=f"proposal {pid} approved refused: " + said):
        decide(store, pid, "approve", by="ana")
    with pytest.raises(DecisionError, match=f"proposal {pid} edited refused: from step 10 to 20, prose would reach"):
        decide(store, pid, "edit", weights=ALL_PROSE | {"code": 1.0}, by="ana")
    assert raw_row(db, "proposals", "id", pid) == before
    # a mixture that fits is taken; so is one typed before the checkpoint it applies at, judged on the data
    # counted so far (at least that much will have trained)
    decide(store, pid, "edit", weights=dict.fromkeys(DOMAINS, 1.0) | {"prose": 0.5}, by="ana")
    store.mark_checkpoint(rid, 10, boundary_done=True)
    with pytest.raises(DecisionError, match=r"from step 20 to 30, prose would reach at least 0\.48 epochs"):
        set_mixture(store, rid, ALL_PROSE, by="ana")


def test_under_cap_a_mixture_past_max_epochs_is_taken_unless_nothing_can_take_the_rest(store):
    rid = prose_run(store, "cap")
    set_mixture(store, rid, ALL_PROSE | {"code": 1.0}, by="ana")  # capped at the checkpoint
    with pytest.raises(DecisionError, match=r"prose would reach 0\.48 epochs .*\(no other domain can take the rest\)"):
        set_mixture(store, rid, ALL_PROSE, by="ana")


# -- concurrency -------------------------------------------------------------------


DECISION_KINDS = ("approved", "rejected", "edited")


def test_threads_deciding_at_once_exactly_one_wins(store, run_id):
    pid = propose(store, run_id, 10)
    n = 8
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def decide_as(i):
        barrier.wait()
        action = ("approve", "reject", "edit")[i % 3]
        try:
            decide(store, pid, action, weights=UNIFORM if action == "edit" else None, by=f"user{i}")
            results[i] = "ok"
        except DecisionError as e:
            results[i] = e
        finally:
            store.close()

    threads = [threading.Thread(target=decide_as, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count("ok") == 1, results
    assert all(isinstance(r, DecisionError) for r in results if r != "ok"), results
    winner = f"user{results.index('ok')}"
    p = store.proposal(pid)
    assert p["decided_by"] == winner and p["version"] == 2
    decisions = [e for e in store.events(run_id) if e["kind"] in DECISION_KINDS]
    assert len(decisions) == 1 and decisions[0]["actor"] == winner


def _decide_in_process(db, pid, i, barrier, out):
    s = Store(db)
    barrier.wait()
    try:
        decide(s, pid, "approve" if i % 2 else "reject", by=f"proc{i}")
        out.put((i, "ok"))
    except DecisionError as e:
        out.put((i, f"refused: {e}"))
    except Exception as e:  # noqa: BLE001 - anything else is a failure the parent reports
        out.put((i, f"error: {type(e).__name__}: {e}"))


def test_processes_deciding_at_once_exactly_one_wins(db, store, run_id):
    pid = propose(store, run_id, 10)
    n = 4
    # forkserver: children start from a clean process that has imported the
    # store once (no SQLite connection inherited, unlike fork; faster than spawn)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["backend.decisions"])
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_decide_in_process, args=(str(db), pid, i, barrier, out)) for i in range(n)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=60) for _ in range(n))
    for p in procs:
        p.join(30)
    assert list(results.values()).count("ok") == 1, results
    assert all(r == "ok" or r.startswith("refused: ") for r in results.values()), results
    winner = next(i for i, r in results.items() if r == "ok")
    assert store.proposal(pid)["decided_by"] == f"proc{winner}"
    decisions = [e for e in store.events(run_id) if e["kind"] in DECISION_KINDS]
    assert len(decisions) == 1 and decisions[0]["actor"] == f"proc{winner}"


# -- commands -----------------------------------------------------------------------


def test_commands_queue_oldest_first_and_are_taken_once(store, run_id):
    send_command(store, run_id, "pause", by="alice")
    send_command(store, run_id, "resume", by="cli")
    send_command(store, run_id, "stop", by="cli")
    assert store.take_commands(run_id) == ["pause", "resume", "stop"]
    assert store.take_commands(run_id) == []
    assert [e["actor"] for e in store.events(run_id, "command")] == ["alice", "cli", "cli"]


def test_unknown_command_is_refused(store, run_id):
    with pytest.raises(CommandError) as e:
        send_command(store, run_id, "explode", by="cli")
    assert "'explode'" in str(e.value) and "pause" in str(e.value) and "stop" in str(e.value)
    assert store.take_commands(run_id) == []


def test_commands_to_a_finished_run(store, run_id):
    store.update_run(run_id, status="finished")
    with pytest.raises(CommandError, match="finished"):
        send_command(store, run_id, "pause", by="cli")
    send_command(store, run_id, "stop", by="cli")
    assert store.take_commands(run_id) == ["stop"]
    with pytest.raises(NotFound):
        send_command(store, run_id + 1, "pause", by="cli")


def test_commands_belong_to_their_run(store, run_id):
    other = store.create_run(preset("tiny").to_dict())
    send_command(store, other, "pause", by="cli")
    assert store.take_commands(run_id) == []
    assert store.take_commands(other) == ["pause"]


# -- what trains at a checkpoint boundary ------------------------------------------


def boundary(store, run_id, step, weights=PROPOSED):
    """What the loop does, policy auto, at a checkpoint that can still steer:
    apply what was approved, propose, approve it as the policy, apply again."""
    store.apply_approved(run_id, step=step, tokens_at=step * 100)
    pid = propose(store, run_id, step, weights)
    auto_approve(store, pid)
    store.apply_approved(run_id, step=step, tokens_at=step * 100)
    return pid


def assert_audit_matches_schedule(store, run_id):
    """Every proposal reported applied is the one segment that trains from its
    applied_step, with its weights, and no segment names another."""
    applied = {p["id"]: (p["applied_step"], p["final_weights"]) for p in store.proposals(run_id, "applied")}
    trained = {s["proposal_id"]: (s["from_step"], s["weights"]) for s in store.schedule(run_id) if s["proposal_id"]}
    assert applied == trained
    for pid in applied:  # the audit log's last word on it
        assert [e["kind"] for e in store.events(run_id) if e["proposal_id"] == pid][-1] == "applied"


def test_a_manual_mixture_set_during_an_auto_run_is_what_trains(store):
    cfg = preset("tiny").to_dict()
    cfg["train"]["steps"] = 40
    rid = _started(store, cfg)
    first = boundary(store, rid, 0)
    manual, auto = [], []
    for step in (10, 20, 30):
        manual.append(set_mixture(store, rid, MORE_CODE | {"logic": step}, by="ana", step=step - 5))
        auto.append(boundary(store, rid, step))
    store.update_run(rid, status="finished", step=40)  # the export holds the steps a run trained
    segments = export_schedule(store, rid)["segments"]
    assert [(s["from_step"], s["source"], s["proposal_id"], s["approved_by"]) for s in segments] == \
        [(0, "proposal", first, "auto")] + [(s, "manual", m, "ana") for s, m in zip((10, 20, 30), manual)]
    assert [s["weights"]["logic"] for s in segments[1:]] == pytest.approx([10 / 19, 20 / 29, 30 / 39])
    # the auto proposals of those checkpoints lost, and the log says why
    for pid, m in zip(auto, manual):
        assert store.proposal(pid)["status"] == "superseded" and store.proposal(pid)["applied_step"] is None
        (why,) = [e for e in store.events(rid, "superseded") if e["proposal_id"] == pid]
        assert f"a person's decision (proposal {m})" in why["message"]
    assert [store.proposal(m)["status"] for m in manual] == ["applied"] * 3
    assert_audit_matches_schedule(store, rid)


def test_an_edit_made_before_the_boundary_beats_the_auto_approval(store, run_id):
    waiting = propose(store, run_id, 0)  # policy human then: it waits
    decide(store, waiting, "edit", weights=MORE_CODE, by="bob")  # the policy is auto again by checkpoint 10
    auto = boundary(store, run_id, 10)
    (seg,) = store.schedule(run_id)[1:]
    assert (seg["from_step"], seg["proposal_id"], seg["decided_by"]) == (10, waiting, "bob")
    assert seg["weights"]["code"] == pytest.approx(0.5)
    assert store.proposal(auto)["status"] == "superseded"
    assert_audit_matches_schedule(store, run_id)


def test_a_boundary_redone_after_a_crash_moves_applied_back_to_superseded(store, run_id):
    auto = boundary(store, run_id, 10)
    assert store.proposal(auto)["status"] == "applied"
    # the worker died before the boundary was done, and a person set a mixture meanwhile
    manual = set_mixture(store, run_id, MORE_CODE, by="ana")
    assert boundary(store, run_id, 10) == auto  # the resumed worker redoes checkpoint 10
    assert [(s["from_step"], s["proposal_id"]) for s in store.schedule(run_id)] == [(0, None), (10, manual)]
    p = store.proposal(auto)
    assert p["status"] == "superseded" and p["applied_step"] is None
    assert "trained nothing" in store.events(run_id, "superseded")[-1]["message"]
    assert_audit_matches_schedule(store, run_id)


def test_a_later_boundary_keeps_what_trained_before(store, run_id):
    auto_10 = boundary(store, run_id, 10)
    manual = set_mixture(store, run_id, MORE_CODE, by="ana")
    auto_20 = boundary(store, run_id, 20)
    auto_30 = boundary(store, run_id, 30)  # nothing waits from a person: the policy's proposal applies
    assert [s["proposal_id"] for s in store.schedule(run_id)] == [None, auto_10, manual, auto_30]
    assert [store.proposal(p)["status"] for p in (auto_10, auto_20, auto_30)] == ["applied", "superseded", "applied"]
    assert_audit_matches_schedule(store, run_id)


# -- the auto policy and a person at the same moment -------------------------------


@pytest.mark.parametrize("action, status", [("approve", "approved"), ("reject", "rejected"), ("edit", "edited")])
def test_a_person_who_decides_first_keeps_the_decision(store, run_id, action, status):
    pid = propose(store, run_id, 10)
    decide(store, pid, action, weights=MORE_CODE if action == "edit" else None, by="ana")
    p = auto_approve(store, pid)
    assert (p["status"], p["decided_by"]) == (status, "ana")
    assert [e["actor"] for e in store.events(run_id) if e["kind"] == status] == ["ana"]


def test_a_person_deciding_inside_the_auto_approval_wins_and_nothing_fails(db, store, run_id):
    pid = propose(store, run_id, 10)
    person = Store(db)
    threads: list = []

    def trace(sql):  # the person decides right as the policy's write begins
        if sql.startswith("BEGIN IMMEDIATE") and not threads:
            t = threading.Thread(target=decide, args=(person, pid, "reject"), kwargs={"by": "ana"})
            threads.append(t)
            t.start()
            t.join(10)

    store.db.conn.set_trace_callback(trace)
    try:
        p = auto_approve(store, pid)
    finally:
        store.db.conn.set_trace_callback(None)
        person.close()
    assert threads and (p["status"], p["decided_by"]) == ("rejected", "ana")
    assert store.apply_approved(run_id, step=10, tokens_at=1000) is None


def test_auto_approval_of_a_pending_proposal(store, run_id):
    pid = propose(store, run_id, 10)
    p = auto_approve(store, pid)
    assert (p["status"], p["decided_by"], p["final_weights"]) == ("approved", "auto", PROPOSED)
    with pytest.raises(NotFound):
        auto_approve(store, pid + 1)


# -- affinity pins and the objective ---------------------------------------------------


@pytest.fixture
def linked_run(store, run_id):
    """run_id with its domains and steer skills written (what pins name)."""
    store.set_domains(run_id, [{"name": d, "source": "synthetic", "skills": []} for d in DOMAINS])
    store.set_skills(run_id, [{"name": s, "base": s, "kind": k, "domains": ["strings"], "tasks": []}
                              for s, k in (("copy", "steer"), ("copy_holdout", "holdout"))])
    return run_id


def test_a_pin_is_set_turned_off_and_cleared_each_with_an_audit_event(store, linked_run):
    pin_link(store, linked_run, "copy", "code", True, by="ana", reason="code has copying tasks")
    assert store.pins(linked_run) == {("copy", "code"): True}
    (row,) = store.pin_rows(linked_run)
    assert (row["by"], row["reason"]) == ("ana", "code has copying tasks")
    pin_link(store, linked_run, "copy", "code", False, by="bo")
    assert store.pins(linked_run) == {("copy", "code"): False}
    pin_link(store, linked_run, "copy", "code", None, by="ana", reason="let the data say")
    assert store.pins(linked_run) == {}
    events = store.events(linked_run, "pin")
    assert [(e["actor"], e["before"]["pinned"], e["after"]["pinned"]) for e in events] == [
        ("ana", None, True), ("bo", True, False), ("ana", False, None)]
    assert events[0]["message"] == "link copy <- code pinned on: code has copying tasks"
    assert events[2]["message"] == "link copy <- code pinned cleared: let the data say"


@pytest.mark.parametrize("skill, domain, named", [
    ("kopy", "code", "unknown skill 'kopy' (steer skills of run 1: copy)"),
    ("copy_holdout", "code", "unknown skill 'copy_holdout'"),  # held out: never steered, so never linked
    ("copy", "web", "unknown domain 'web' (domains of run 1: strings, arithmetic"),
])
def test_a_pin_naming_an_unknown_skill_or_domain_is_refused_and_changes_nothing(store, linked_run, skill,
                                                                                domain, named):
    with pytest.raises(DecisionError, match=re.escape(named)):
        pin_link(store, linked_run, skill, domain, True, by="ana")
    assert store.pins(linked_run) == {} and store.events(linked_run, "pin") == []


def test_a_failed_event_write_leaves_no_pin_behind(store, linked_run, monkeypatch):
    def broken(*a, **kw):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "log_event", broken)
    with pytest.raises(sqlite3.OperationalError):
        pin_link(store, linked_run, "copy", "code", True, by="ana")
    monkeypatch.undo()
    assert store.pins(linked_run) == {}


def test_an_objective_is_validated_stored_resolved_and_audited(store, run_id):
    oid = set_objective(store, run_id, {"skills": {"copy": {"priority": 2.0}}, "domains": {"code": {"min": 0.1}}},
                        by="ana", reason="code matters")
    saved = store.objective(run_id)
    assert saved["skills"]["copy"] == {"priority": 2.0, "target": None, "at_least": None, "by_tokens": None}
    assert saved["domains"]["code"] == {"min": 0.1, "max": 1.0} and saved["heldout_mean_nondecreasing"] is False
    (event,) = store.events(run_id, "objective")
    assert (event["actor"], event["before"], event["after"]) == ("ana", None, saved)
    assert event["message"] == f"objective {oid} set: code matters"
    set_objective(store, run_id, {"heldout_mean_nondecreasing": True}, by="bo")
    assert store.objective(run_id)["skills"] == {}  # the newest replaces it whole
    assert store.events(run_id, "objective")[-1]["before"] == saved


@pytest.mark.parametrize("objective, field", [
    ({"skills": {"kopy": {}}}, "objective.skills.kopy: unknown skill 'kopy'"),
    ({"skills": {"copy": {"priority": -1}}}, "objective.skills.copy.priority: must be within [0, 1000]"),
    ({"domains": {"web": {"min": 0.1}}}, "objective.domains.web: unknown domain 'web'"),
    ({"domains": {"code": {"min": "a lot"}}}, "objective.domains.code.min: expected a number"),
    ({"weights": {}}, "objective.weights: unknown key"),
])
def test_a_bad_objective_is_refused_naming_the_field_and_changes_nothing(store, run_id, objective, field):
    with pytest.raises(DecisionError, match=re.escape(f"objective refused: {field}")):
        set_objective(store, run_id, objective, by="ana")
    assert store.objective(run_id) is None and store.events(run_id, "objective") == []


def test_a_finished_runs_objective_is_not_edited(store, run_id):
    store.update_run(run_id, status="finished")
    with pytest.raises(DecisionError, match="run 1 is finished"):
        set_objective(store, run_id, {}, by="ana")
