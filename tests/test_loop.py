"""End-to-end: the real loop (torch, transformers, lm-eval, SQLite) on the
tiny preset, driven through the command line in fresh processes."""

import json
import os
import signal
import time

import pytest
from conftest import cli, cli_json

from backend.decisions import send_command
from backend.store import Store


def scores_by_checkpoint(store: Store, run_id: int) -> dict:
    return {(m["step"], m["task"], m["metric"]): m["value"] for m in store.measurements(run_id)
            if m["skill"] is not None}


def test_run_measures_every_skill_at_every_checkpoint(tiny_run):
    db, run_id = tiny_run
    store = Store(db)
    run = store.run(run_id)
    assert run["status"] == "finished" and run["step"] == 30
    steps = [c["step"] for c in store.checkpoints(run_id)]
    assert steps == [0, 10, 20, 30]
    skills = store.skills(run_id)
    assert {s["kind"] for s in skills} == {"steer", "holdout"}
    ms = store.measurements(run_id)
    for s in skills:
        rows = [m for m in ms if m["skill"] == s["name"]]
        # facets: steer skills under 3 prompt templates, held-out under its own;
        # greedy exact match, plus the loglikelihood scorers under one template
        templates = {"steer": ["template0", "template2", "template3"], "holdout": ["template1"]}[s["kind"]]
        for step in steps:
            em = [m for m in rows if m["step"] == step and m["metric"] == "exact_match"]
            assert sorted(m["prompt_variant"] for m in em) == templates, (s["name"], step)
            assert all(m["decoding"] == "greedy" and m["scorer"] == "exact_match" for m in em)
            ll = {m["metric"]: m for m in rows if m["step"] == step and m["decoding"] == "teacher_forced"}
            assert set(ll) == {"ll_acc", "answer_nll"} and ll["answer_nll"]["value"] > 0
        assert all(m["stderr"] is not None and m["n"] == 12 for m in rows)
        # the latent capability, with an interval, at every checkpoint
        cap = store.capability(run_id, s["name"])
        assert [c["step"] for c in cap] == steps
        assert all(0 <= c["lo"] <= c["score"] <= c["hi"] <= 1 for c in cap)
    losses = [m for m in ms if m["kind"] == "domain_loss"]
    assert len(losses) == len(steps) * len(store.domains(run_id))
    # the held-out loss of the most trained domain falls as the model trains
    strings = {m["step"]: m["value"] for m in losses if m["domain"] == "strings"}
    assert strings[30] < strings[0] - 0.5
    # per-item results are kept: 4 tasks per steer skill, 2 per held-out one
    assert len(store.samples(run_id, 30)) == 12 * 6 * 2
    # the gradient alignment of every domain with every steer skill (never a held-out one), every checkpoint
    aligned = store.alignment(run_id)
    steer = {s["name"] for s in skills if s["kind"] == "steer"}
    assert {(r["step"], r["skill"], r["domain"]) for r in aligned} == {
        (step, s, d["name"]) for step in steps for s in steer for d in store.domains(run_id)}
    # probed on the distinct items just evaluated: 12 under each of 3 templates (a repeat counts once)
    assert all(-1 <= r["value"] <= 1 and r["stderr"] >= 0 and 24 < r["n"] <= 36 for r in aligned)


def test_auto_policy_applies_proposals_with_reasons(tiny_run):
    db, run_id = tiny_run
    store = Store(db)
    proposals = store.proposals(run_id)
    # one per checkpoint that can still steer (0, 10, 20)
    assert [p["step"] for p in proposals] == [0, 10, 20]
    assert all(p["status"] == "applied" and p["decided_by"] == "auto" for p in proposals)
    assert all(p["applied_step"] == p["step"] for p in proposals)
    domains = [d["name"] for d in store.domains(run_id)]
    for p in proposals:
        assert set(p["rationale"]) == set(domains)
        assert abs(sum(p["final_weights"].values()) - 1) < 1e-9
        assert set(p["forecast"]) == {"copy", "add2"}  # steer skills only
    schedule = store.schedule(run_id)
    assert [s["from_step"] for s in schedule] == [0, 10, 20]
    # the domain that streams no steer skill loses weight
    assert schedule[-1]["weights"]["noise"] < 1 / len(domains) - 0.05


def test_forecast_errors_are_recorded_after_each_checkpoint(tiny_run):
    db, run_id = tiny_run
    store = Store(db)
    rows = store.forecast_errors(run_id)
    # each proposal (0, 10, 20) is scored at the next checkpoint, per steer skill
    assert [(r["step"], r["skill"]) for r in rows] == [(s, k) for s in (10, 20, 30) for k in ("add2", "copy")]
    latent = {(c["step"], c["skill"]): c["score"] for c in store.capability(run_id)}
    for r in rows:
        p = store.proposal(r["proposal_id"])
        assert p["step"] == r["applied_step"] == r["step"] - 10
        assert r["forecast"] == p["forecast"][r["skill"]]["expected"]
        assert r["actual"] == latent[(r["step"], r["skill"])]
        assert r["error"] == pytest.approx(r["actual"] - r["forecast"])


def test_show_reports_the_run(tiny_run):
    db, run_id = tiny_run
    out = cli_json("show", run_id, db=db)
    assert out["run"]["status"] == "finished"
    assert len(out["checkpoints"]) == 4 and len(out["schedule"]) == 3
    assert set(out["skills"]) == {"copy", "copy_holdout", "add2", "add2_holdout"}
    assert cli_json("runs", db=db)[0]["id"] == run_id


@pytest.mark.slow
def test_replay_reproduces_scores(tiny_run, tmp_path):
    db, run_id = tiny_run
    sched = tmp_path / "schedule.json"
    cli("export-schedule", run_id, "-o", sched, db=db)
    data = json.loads(sched.read_text())
    assert data["format"] == "closed-loop-schedule" and data["version"] == 1
    assert data["segments"][-1]["to_step"] == 30 and data["segments"][0]["approved_by"] == "auto"
    replay_db = tmp_path / "replay.db"
    res = cli_json("replay", sched, db=replay_db)
    assert res["status"] == "finished"
    original, replay = Store(db), Store(replay_db)
    assert scores_by_checkpoint(replay, res["run"]) == scores_by_checkpoint(original, run_id)
    assert [s["weights"] for s in replay.schedule(res["run"])] == [s["weights"] for s in original.schedule(run_id)]
    assert {s["source"] for s in replay.schedule(res["run"])} == {"replay"}


def wait_for(predicate, timeout=300, every=0.2):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


@pytest.mark.slow
def test_sigkill_mid_stretch_then_resume_matches_uninterrupted(tiny_run, tmp_path):
    db, run_id = tiny_run
    kdb = tmp_path / "killed.db"
    # a heartbeat (with the step) every 20 ms, so the test sees the worker mid-stretch
    env = {**os.environ, "CLOSED_LOOP_POLL_S": "0.02"}
    res = cli_json("run", "--preset", "tiny", "--policy", "auto", "--detach", db=kdb, env=env)
    store = Store(kdb)
    rid = res["run"]
    # past the checkpoint at step 10, inside the next stretch
    wait_for(lambda: store.checkpoint(rid, 10) and store.checkpoint(rid, 10)["boundary_done"]
             and 10 < store.run(rid)["step"] < 20, every=0.005)
    os.kill(store.run(rid)["pid"], signal.SIGKILL)
    wait_for(lambda: _dead(res["pid"]))
    assert store.run(rid)["status"] == "running"  # a crash leaves no tidy status
    out = cli_json("run", "--resume", rid, db=kdb)
    assert out["status"] == "finished"
    original = Store(db)
    assert [(s["from_step"], s["weights"]) for s in store.schedule(rid)] == \
           [(s["from_step"], s["weights"]) for s in original.schedule(run_id)]
    assert scores_by_checkpoint(store, rid) == scores_by_checkpoint(original, run_id)
    assert [p["step"] for p in store.proposals(rid)] == [0, 10, 20]  # none twice
    assert any(e["kind"] == "resumed" for e in store.events(rid))


def _dead(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow
def test_human_approval_applies_at_next_checkpoint_and_no_earlier(tmp_path):
    from backend.config import preset
    from backend.worker import create_run, spawn

    db = tmp_path / "human.db"
    store = Store(db)
    rid = create_run(store, preset("tiny").replace(policy="human", train={**preset("tiny").to_dict()["train"],
                                                                          "steps": 40}))
    # queued before the worker starts: it holds at its first checkpoint, so the
    # test knows exactly where training stands when the person decides
    send_command(store, rid, "pause", by="test")
    spawn(str(db), rid)
    wait_for(lambda: store.run(rid)["status"] == "paused")
    paused_at = store.run(rid)["step"]
    assert paused_at == 0
    p0 = store.proposals(rid)[0]
    assert p0["step"] == 0 and p0["status"] == "pending"
    out = cli_json("decide", p0["id"], "approve", "--by", "alice", db=db)
    assert out["status"] == "approved"
    # a second decision on it is refused and changes nothing
    again = cli("decide", p0["id"], "reject", db=db, check=False)
    assert again.returncode == 2 and "not pending" in again.stderr
    assert store.proposal(p0["id"])["status"] == "approved"
    cli("resume", rid, db=db)
    wait_for(lambda: store.run(rid)["status"] == "finished")
    p0 = store.proposal(p0["id"])
    # approved while the model stood at step 0: applied at the next checkpoint, 10
    assert p0["status"] == "applied" and p0["applied_step"] == 10
    segs = store.schedule(rid)
    assert [(s["from_step"], s["source"], s["proposal_id"]) for s in segs] == \
           [(0, "initial", None), (10, "proposal", p0["id"])]
    assert segs[1]["decided_by"] == "alice"
    # trained on the old mixture until step 10 (checkpoint rows record it)
    assert store.checkpoint(rid, 10)["weights"] == segs[0]["weights"]
    assert store.checkpoint(rid, 20)["weights"] == p0["final_weights"]
    # the proposals nobody decided were superseded by newer ones, never
    # applied; the last expired when the run finished
    assert [p["status"] for p in store.proposals(rid)[1:]] == ["superseded", "superseded", "expired"]
    assert store.run(rid)["phase"] == "finished" and store.run(rid)["tokens_per_s"] is None
