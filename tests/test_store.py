"""backend/store.py on a fresh on-disk database per test (WAL, several
connections, threads and processes)."""

import json
import math
import multiprocessing
import sqlite3
import threading

import pytest

from backend.config import preset
from backend.store import CommandError, DecisionError, NotFound, Store, StoreError

DOMAINS = ["strings", "arithmetic", "logic", "recall", "noise", "code"]
UNIFORM = {d: 1 / 6 for d in DOMAINS}
PROPOSED = {"strings": 0.3, "arithmetic": 0.3, "logic": 0.1, "recall": 0.1, "noise": 0.05, "code": 0.15}


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


def raw_row(db, table, key, value):
    """A row as plain sqlite3 sees it (no decoding)."""
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        row = con.execute(f"SELECT * FROM {table} WHERE {key} = ?", (value,)).fetchone()
        return dict(row) if row else None
    finally:
        con.close()


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


def test_set_policy_is_audited(store, run_id):
    store.set_policy(run_id, "human", by="alice")
    assert store.run(run_id)["policy"] == "human"
    (ev,) = store.events(run_id, "policy")
    assert ev["actor"] == "alice" and ev["before"] == {"policy": "auto"} and ev["after"] == {"policy": "human"}
    with pytest.raises(StoreError):
        store.set_policy(run_id, "sometimes")
    assert store.run(run_id)["policy"] == "human"


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
    p = store.decide(pid, "approve", by="alice", reason="looks right")
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
    p = store.decide(pid, "edit", weights=edited, by="bob")
    assert p["status"] == "edited" and p["final_weights"] == {d: (0.2 if d != "noise" else 0.0) for d in DOMAINS}
    store.apply_approved(run_id, step=10, tokens_at=0)
    assert store.current_weights(run_id)["noise"] == 0.0


def test_reject_is_never_applied(store, run_id):
    pid = propose(store, run_id, 10)
    assert store.decide(pid, "reject", by="carol")["status"] == "rejected"
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
        store.decide(first, "approve")


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
    store.decide(old, "approve")
    newer_weights = dict(UNIFORM)
    new = propose(store, run_id, 20, weights=newer_weights)
    store.decide(new, "approve")
    applied = store.apply_approved(run_id, step=20, tokens_at=0)
    assert applied["id"] == new
    assert store.proposal(old)["status"] == "superseded"
    assert [s["proposal_id"] for s in store.schedule(run_id)] == [None, new]


def test_manual_mixture_is_an_approved_proposal(store, run_id):
    pid = propose(store, run_id, 10)
    store.decide(pid, "approve")
    manual = store.set_mixture(run_id, {d: 1 for d in DOMAINS} | {"code": 5}, step=12, by="dana", reason="more code")
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
        store.set_mixture(run_id, weights, step=5)
    for w in words:
        assert w in str(e.value)
    assert store.proposals(run_id) == [] and store.events(run_id, "manual") == []


def test_set_mixture_needs_a_mixture(store):
    rid = store.create_run(preset("tiny").to_dict())
    with pytest.raises(StoreError, match="no mixture"):
        store.set_mixture(rid, UNIFORM, step=0)


@pytest.mark.parametrize("first", ["approve", "reject", "edit"])
@pytest.mark.parametrize("second", ["approve", "reject", "edit"])
def test_decision_on_a_decided_proposal_is_refused_and_changes_nothing(db, store, run_id, first, second):
    pid = propose(store, run_id, 10)
    store.decide(pid, first, weights=UNIFORM if first == "edit" else None, by="alice")
    row_before = raw_row(db, "proposals", "id", pid)
    events_before = len(store.events(run_id))
    with pytest.raises(DecisionError) as e:
        store.decide(pid, second, weights=UNIFORM if second == "edit" else None, by="bob")
    assert "not pending" in str(e.value) and "alice" in str(e.value)
    assert raw_row(db, "proposals", "id", pid) == row_before
    assert len(store.events(run_id)) == events_before


def test_decision_on_an_applied_proposal_is_refused(db, store, run_id):
    pid = propose(store, run_id, 10)
    store.decide(pid, "approve")
    store.apply_approved(run_id, step=10, tokens_at=0)
    before = raw_row(db, "proposals", "id", pid)
    with pytest.raises(DecisionError, match="applied"):
        store.decide(pid, "reject")
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
        store.decide(pid, "edit", weights=weights)
    assert raw_row(db, "proposals", "id", pid) == before
    assert store.proposal(pid)["status"] == "pending"
    assert store.decide(pid, "approve")["status"] == "approved"  # still decidable


def test_unknown_action_is_refused(store, run_id):
    pid = propose(store, run_id, 10)
    with pytest.raises(DecisionError, match="unknown action"):
        store.decide(pid, "maybe")
    assert store.proposal(pid)["status"] == "pending"


# -- concurrency -------------------------------------------------------------------


DECISION_KINDS = ("approved", "rejected", "edited")


def test_threads_deciding_at_once_exactly_one_wins(store, run_id):
    pid = propose(store, run_id, 10)
    n = 8
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def decide(i):
        barrier.wait()
        action = ("approve", "reject", "edit")[i % 3]
        try:
            store.decide(pid, action, weights=UNIFORM if action == "edit" else None, by=f"user{i}")
            results[i] = "ok"
        except DecisionError as e:
            results[i] = e
        finally:
            store.close()

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(n)]
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
        s.decide(pid, "approve" if i % 2 else "reject", by=f"proc{i}")
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
    ctx.set_forkserver_preload(["backend.store"])
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


def test_each_thread_gets_its_own_connection(store):
    mine = store.db
    theirs = []
    t = threading.Thread(target=lambda: theirs.append(store.db))
    t.start()
    t.join()
    assert mine is store.db and theirs[0] is not mine


# -- commands -----------------------------------------------------------------------


def test_commands_queue_oldest_first_and_are_taken_once(store, run_id):
    store.send_command(run_id, "pause", by="alice")
    store.send_command(run_id, "resume")
    store.send_command(run_id, "stop")
    assert store.take_commands(run_id) == ["pause", "resume", "stop"]
    assert store.take_commands(run_id) == []
    assert [e["actor"] for e in store.events(run_id, "command")] == ["alice", "cli", "cli"]


def test_unknown_command_is_refused(store, run_id):
    with pytest.raises(CommandError) as e:
        store.send_command(run_id, "explode")
    assert "'explode'" in str(e.value) and "pause" in str(e.value) and "stop" in str(e.value)
    assert store.take_commands(run_id) == []


def test_commands_to_a_finished_run(store, run_id):
    store.update_run(run_id, status="finished")
    with pytest.raises(CommandError, match="finished"):
        store.send_command(run_id, "pause")
    store.send_command(run_id, "stop")
    assert store.take_commands(run_id) == ["stop"]
    with pytest.raises(NotFound):
        store.send_command(run_id + 1, "pause")


def test_commands_belong_to_their_run(store, run_id):
    other = store.create_run(preset("tiny").to_dict())
    store.send_command(other, "pause")
    assert store.take_commands(run_id) == []
    assert store.take_commands(other) == ["pause"]


# -- the file -------------------------------------------------------------------------


def test_file_is_plain_sqlite_in_wal_mode_with_json_text(db, store, run_id):
    pid = propose(store, run_id, 10)
    store.decide(pid, "edit", weights=PROPOSED, by="x")
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


def test_a_second_store_on_the_same_file_sees_the_writes(db, store, run_id):
    pid = propose(store, run_id, 10)
    other = Store(db)
    try:
        assert other.proposal(pid)["status"] == "pending"
        other.decide(pid, "approve", by="elsewhere")
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
        if sql.lstrip().startswith(sql_prefix) and not fired:
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
        store.send_command(run_id, "pause")

        def write():
            dashboard.send_command(run_id, "stop")
        write.store = dashboard
        fired = _write_from_another_thread_during(store, "UPDATE commands", write)
        try:
            taken = store.take_commands(run_id)
        finally:
            store.db.conn.set_trace_callback(None)
            fired[0].join(30)
        assert fired[1:] == []
        assert taken + store.take_commands(run_id) == ["pause", "stop"]
    else:
        approved = propose(store, run_id, 10)
        store.decide(approved, "approve")
        pending = propose(store, run_id, 20, strategy="static")

        def write():
            dashboard.decide(pending, "reject", by="dash")
        write.store = dashboard
        fired = _write_from_another_thread_during(store, "UPDATE proposals", write)
        try:
            applied = store.apply_approved(run_id, step=20, tokens_at=0)
        finally:
            store.db.conn.set_trace_callback(None)
            fired[0].join(30)
        assert fired[1:] == []
        assert applied["id"] == approved and store.proposal(pending)["status"] == "rejected"
