"""backend/store.py on a fresh on-disk database per test (WAL, several
connections, threads and processes): the data it keeps. The rules callers
obey before it writes are tested in test_decisions.py, test_guard.py and
test_forecast.py."""

import json
import re
import sqlite3
import subprocess
import sys
import threading

import pytest

from conftest import DOMAINS, PROPOSED, UNIFORM

from backend.config import preset
from backend.decisions import DecisionError, decide, send_command
from backend.store import NotFound, Store, StoreError



@pytest.fixture
def run_id(store):
    """A run with its initial mixture."""
    rid = store.create_run(preset("tiny").to_dict())
    store.add_segment(rid, from_step=0, tokens_at=0, weights=UNIFORM, source="initial")
    return rid


def propose(store, run_id, step, weights=PROPOSED, strategy="deficit"):
    return store.add_proposal(run_id, step=step, strategy=strategy, current_weights=store.current_weights(run_id),
                              weights=weights, rationale={d: f"{d} reason" for d in DOMAINS},
                              forecast={"copy": {"score": 0.1, "expected": 0.2}})


# -- runs --------------------------------------------------------------------


def test_run_lifecycle(store):
    cfg = preset("tiny").to_dict()
    rid = store.create_run(cfg)
    run = store.run(rid)
    assert run["status"] == "created" and run["name"] == "tiny" and run["policy"] == "auto"
    assert run["config"] == cfg and run["total_steps"] == 30 and run["step"] == 0
    store.update_run(rid, status="running", pid=1234)
    store.heartbeat(rid, step=10, tokens_seen=3840)
    run = store.run(rid)
    assert (run["status"], run["pid"], run["step"], run["tokens_seen"]) == ("running", 1234, 10, 3840)
    assert run["heartbeat"] > run["created_at"] - 1
    store.update_run(rid, status="finished")
    assert store.run(rid)["status"] == "finished"
    with pytest.raises(StoreError, match="unknown run status"):
        store.update_run(rid, status="exploded")
    assert store.run(rid)["status"] == "finished"
    assert [e["kind"] for e in store.events(rid)] == ["run_created"]


def test_runs_newest_first_with_pending_count(store):
    a = store.create_run(preset("tiny").to_dict())
    b = store.create_run({**preset("tiny").to_dict(), "name": "second"})
    store.add_segment(b, from_step=0, tokens_at=0, weights=UNIFORM, source="initial")
    propose(store, b, 0)
    rows = store.runs()
    assert [r["id"] for r in rows] == [b, a]
    assert [r["pending"] for r in rows] == [1, 0]


def test_unknown_run_lists_what_exists(store):
    rid = store.create_run(preset("tiny").to_dict())
    with pytest.raises(NotFound) as e:
        store.run(rid + 5)
    assert f"no run {rid + 5}" in str(e.value) and f"runs: {rid}" in str(e.value)
    with pytest.raises(NotFound):
        store.proposal(999)


def test_domains_skills_checkpoints_measurements_round_trip(store, run_id):
    store.set_domains(run_id, [{"name": "strings", "source": "synthetic", "skills": ["copy"], "size_tokens": 5},
                               {"name": "noise", "source": "random", "skills": [], "size_tokens": None}])
    assert [(d["name"], d["skills"]) for d in store.domains(run_id)] == [("strings", ["copy"]), ("noise", [])]
    store.set_skills(run_id, [{"name": "copy", "base": "copy", "kind": "steer", "domains": ["strings"],
                               "tasks": ["cl_copy"], "difficulty": 1}])
    assert store.skills(run_id)[0]["domains"] == ["strings"]
    store.add_checkpoint(run_id, step=10, tokens_seen=100, train_loss=2.5, wall_time=1.0, tokens_per_s=10.0,
                         path="/x/step-0000010", weights=UNIFORM)
    store.add_checkpoint(run_id, step=10, tokens_seen=100, train_loss=2.5, wall_time=1.0, tokens_per_s=10.0,
                         path="/y/step-0000010", weights=UNIFORM)  # idempotent: path updated
    store.mark_checkpoint(run_id, 10, evaluated=True)
    (ck,) = store.checkpoints(run_id)
    assert ck["path"] == "/y/step-0000010" and ck["evaluated"] == 1 and ck["boundary_done"] == 0
    assert ck["weights"] == UNIFORM
    row = {"step": 10, "tokens_seen": 100, "skill": "copy", "kind": "steer", "task": "cl_copy",
           "metric": "exact_match", "value": 0.5, "stderr": 0.1, "n": 12}
    store.add_measurements(run_id, [row])
    store.add_measurements(run_id, [{**row, "value": 0.75}])  # same key: replaced
    (m,) = store.measurements(run_id, kind="steer", skill="copy")
    assert m["value"] == 0.75 and m["prompt_variant"] == ""
    assert store.measurements(run_id, kind="holdout") == []


# -- proposals ----------------------------------------------------------------------


def test_proposal_lifecycle_pending_approved_applied(store, run_id):
    pid = propose(store, run_id, 10)
    p = store.proposal(pid)
    assert p["status"] == "pending" and p["weights"] == PROPOSED and p["current_weights"] == UNIFORM
    assert store.proposals(run_id, "pending") == [p]
    p = decide(store, pid, "approve", by="alice", reason="looks right")
    assert (p["status"], p["decision"], p["decided_by"], p["decision_reason"]) == \
        ("approved", "approved", "alice", "looks right")
    assert p["final_weights"] == PROPOSED and p["version"] == 2
    applied = store.apply_approved(run_id, step=20, tokens_at=7680)
    assert applied["id"] == pid and applied["status"] == "applied" and applied["applied_step"] == 20
    assert applied["decision"] == "approved"  # kept after applied
    assert store.current_weights(run_id) == PROPOSED
    seg = store.schedule(run_id)[-1]
    assert (seg["from_step"], seg["tokens_at"], seg["source"], seg["proposal_id"], seg["decided_by"]) == \
        (20, 7680, "proposal", pid, "alice")
    kinds = [e["kind"] for e in store.events(run_id)]
    assert kinds == ["run_created", "proposed", "approved", "applied"]
    (ev,) = store.events(run_id, "approved")
    assert ev["actor"] == "alice" and ev["before"] == UNIFORM and ev["after"] == PROPOSED
    # nothing left to apply
    assert store.apply_approved(run_id, step=30, tokens_at=0) is None


def test_edit_applies_the_edited_weights(store, run_id):
    pid = propose(store, run_id, 10)
    edited = {d: 1.0 for d in DOMAINS} | {"noise": 0.0}
    p = decide(store, pid, "edit", weights=edited, by="bob")
    assert p["status"] == "edited" and p["final_weights"] == {d: (0.2 if d != "noise" else 0.0) for d in DOMAINS}
    store.apply_approved(run_id, step=10, tokens_at=0)
    assert store.current_weights(run_id)["noise"] == 0.0


def test_reject_is_never_applied(store, run_id):
    pid = propose(store, run_id, 10)
    assert decide(store, pid, "reject", by="carol")["status"] == "rejected"
    assert store.proposal(pid)["final_weights"] is None
    assert store.apply_approved(run_id, step=10, tokens_at=0) is None
    assert store.current_weights(run_id) == UNIFORM


def test_new_proposal_supersedes_older_pending(store, run_id):
    first = propose(store, run_id, 10)
    second = propose(store, run_id, 20)
    assert store.proposal(first)["status"] == "superseded"
    assert store.proposal(second)["status"] == "pending"
    assert [e["proposal_id"] for e in store.events(run_id, "superseded")] == [first]
    with pytest.raises(DecisionError, match="superseded"):
        decide(store, first, "approve", by="cli")


def test_add_proposal_is_idempotent_per_run_step_strategy(store, run_id):
    pid = propose(store, run_id, 10)
    assert propose(store, run_id, 10, weights=UNIFORM) == pid
    assert store.proposal(pid)["weights"] == PROPOSED and store.proposal(pid)["status"] == "pending"
    assert len(store.proposals(run_id)) == 1 and len(store.events(run_id, "proposed")) == 1
    # another strategy at the same step is a new proposal
    other = propose(store, run_id, 10, strategy="static")
    assert other != pid and store.proposal(pid)["status"] == "superseded"


def test_apply_approved_picks_the_newest_and_supersedes_older(store, run_id):
    old = propose(store, run_id, 10)
    decide(store, old, "approve", by="cli")
    newer_weights = dict(UNIFORM)
    new = propose(store, run_id, 20, weights=newer_weights)
    decide(store, new, "approve", by="cli")
    applied = store.apply_approved(run_id, step=20, tokens_at=0)
    assert applied["id"] == new
    assert store.proposal(old)["status"] == "superseded"
    assert [s["proposal_id"] for s in store.schedule(run_id)] == [None, new]


# -- the schedule --------------------------------------------------------------------


def test_add_segment_is_idempotent_and_never_replaces_a_segment(store, run_id):
    store.add_segment(run_id, from_step=0, tokens_at=0, weights=UNIFORM, source="initial")  # a resume
    with pytest.raises(StoreError, match="already has a initial segment at step 0"):
        store.add_segment(run_id, from_step=0, tokens_at=0, weights=PROPOSED, source="replay")
    with pytest.raises(StoreError, match="unknown segment source 'magic'"):
        store.add_segment(run_id, from_step=10, tokens_at=0, weights=PROPOSED, source="magic")
    assert [(s["from_step"], s["weights"]) for s in store.schedule(run_id)] == [(0, UNIFORM)]


def test_unknown_fields_are_refused_naming_them(store, run_id):
    with pytest.raises(StoreError, match="unknown run field 'colour'"):
        store.update_run(run_id, status="running", colour="red")
    assert store.run(run_id)["status"] == "created"
    store.add_checkpoint(run_id, step=0, tokens_seen=0, train_loss=None, wall_time=0.0, tokens_per_s=None,
                         path="/x", weights=UNIFORM)
    with pytest.raises(StoreError, match="unknown checkpoint field 'done'"):
        store.mark_checkpoint(run_id, 0, done=True)
    with pytest.raises(StoreError, match="unknown proposal field 'weights'"):
        store.update_proposal(propose(store, run_id, 0), weights=UNIFORM)
    assert store.checkpoint(run_id, 0)["evaluated"] == 0


def test_the_store_imports_no_policy():
    code = ("import json, sys, backend.store; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('backend'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == ["backend", "backend.store", "backend.vocab"]


def test_each_thread_gets_its_own_connection(store):
    mine = store.db
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(store.db))
    t.start()
    t.join()
    assert mine is store.db and theirs[0] is not mine


# -- the file -------------------------------------------------------------------------


def test_file_is_plain_sqlite_in_wal_mode_with_json_text(db, store, run_id):
    pid = propose(store, run_id, 10)
    decide(store, pid, "edit", weights=PROPOSED, by="x")
    store.apply_approved(run_id, step=10, tokens_at=0)
    store.set_domains(run_id, [{"name": "strings", "source": "synthetic", "skills": ["copy"]}])
    store.log_event(run_id, "note", "hello", before={"a": 1})
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        checks = {
            "runs": ["config"],
            "proposals": ["current_weights", "weights", "rationale", "forecast", "final_weights"],
            "schedule": ["weights"],
            "domains": ["skills"],
            "events": ["before", "after"],
        }
        seen = 0
        for table, cols in checks.items():
            for col in cols:
                for (value,) in con.execute(f"SELECT {col} FROM {table}"):
                    if value is None:
                        continue
                    assert isinstance(value, str), (table, col, value)
                    json.loads(value)
                    seen += 1
        assert seen >= 12
        (config_text,) = con.execute("SELECT config FROM runs").fetchone()
        assert json.loads(config_text) == preset("tiny").to_dict()
    finally:
        con.close()


CHILD_TABLES = {
    "domains": {"runs"}, "skills": {"runs"}, "checkpoints": {"runs"}, "measurements": {"runs"},
    "capability": {"runs"}, "samples": {"runs"}, "proposals": {"runs"}, "schedule": {"runs", "proposals"},
    "events": {"runs", "proposals"}, "commands": {"runs"}, "forecast_errors": {"runs", "proposals"},
}


def test_child_tables_name_their_parents_and_the_links_hold(store, run_id):
    for table, parents in CHILD_TABLES.items():
        assert {fk.other_table for fk in store.db[table].foreign_keys} == parents, table
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        store.add_checkpoint(run_id + 1, step=0, tokens_seen=0, train_loss=None, wall_time=0.0,
                             tokens_per_s=None, path="/x", weights=UNIFORM)
    assert store.checkpoints(run_id + 1) == []


def test_a_database_of_the_schema_without_foreign_keys_still_opens(db):
    from backend.store import SCHEMA

    old = re.sub(r" REFERENCES \w+ \(id\)", "", SCHEMA)
    con = sqlite3.connect(db)
    con.executescript(old)
    con.close()
    store = Store(db)
    try:
        rid = store.create_run(preset("tiny").to_dict())
        store.add_segment(rid, from_step=0, tokens_at=0, weights=UNIFORM, source="initial")
        assert store.current_weights(rid) == UNIFORM and store.db["schedule"].foreign_keys == []
    finally:
        store.close()


def test_a_second_store_on_the_same_file_sees_the_writes(db, store, run_id):
    pid = propose(store, run_id, 10)
    other = Store(db)
    try:
        assert other.proposal(pid)["status"] == "pending"
        decide(other, pid, "approve", by="elsewhere")
    finally:
        other.close()
    assert store.proposal(pid)["decided_by"] == "elsewhere"


def _write_from_another_thread_during(store, sql_prefix, write):
    """Start `write` (another thread, so another connection) right when
    `store`'s connection starts a statement beginning with sql_prefix, and
    give it a moment to commit: a dashboard write landing inside the
    worker's transaction, made exact. Returns the list that will hold the
    thread and, if it failed, its error."""
    fired: list = []

    def run():
        try:
            write()
        except Exception as e:  # noqa: BLE001 - reported by the test
            fired.append(e)
        finally:
            dashboard_store = getattr(write, "store", None)
            if dashboard_store is not None:
                dashboard_store.close()

    def trace(sql):
        if sql.lstrip().lower().startswith(sql_prefix.lower()) and not fired:
            t = threading.Thread(target=run)
            fired.append(t)
            t.start()
            t.join(0.5)  # a correct store makes it wait for our commit instead

    store.db.conn.set_trace_callback(trace)
    return fired


@pytest.mark.parametrize("worker_call", ["take_commands", "apply_approved"])
def test_worker_write_survives_a_concurrent_dashboard_write(db, store, run_id, worker_call):
    dashboard = Store(db)
    if worker_call == "take_commands":
        send_command(store, run_id, "pause", by="cli")

        def write():
            send_command(dashboard, run_id, "stop", by="cli")
        write.store = dashboard
        fired = _write_from_another_thread_during(store, 'UPDATE "commands"', write)
        try:
            taken = store.take_commands(run_id)
        finally:
            store.db.conn.set_trace_callback(None)
            fired[0].join(30)
        assert fired[1:] == []
        assert taken + store.take_commands(run_id) == ["pause", "stop"]
    else:
        approved = propose(store, run_id, 10)
        decide(store, approved, "approve", by="cli")
        pending = propose(store, run_id, 20, strategy="static")

        def write():
            decide(dashboard, pending, "reject", by="dash")
        write.store = dashboard
        fired = _write_from_another_thread_during(store, 'UPDATE "proposals"', write)
        try:
            applied = store.apply_approved(run_id, step=20, tokens_at=0)
        finally:
            store.db.conn.set_trace_callback(None)
            fired[0].join(30)
        assert fired[1:] == []
        assert applied["id"] == approved and store.proposal(pending)["status"] == "rejected"
