"""examples/hf_trainer.py end to end: an HF Trainer steered through the
callback (backend.integrations.hf), policy human, with the approval made by
a second process (`python -m backend decide ID approve`) while it trains.
The preset tiny, 40 steps, a checkpoint every 10, 8 sequences per step."""

import json
import subprocess
import sys
import time

import pytest
from conftest import ROOT, cli

from backend.store import Store

STEPS, EVERY, BATCH = 40, 10, 8


@pytest.mark.slow
def test_an_approval_from_another_process_steers_the_hf_dataset_at_the_next_checkpoint(tmp_path, monkeypatch):
    db, segments_out = tmp_path / "hf.db", tmp_path / "segments.json"
    proc = subprocess.Popen(
        [sys.executable, "examples/hf_trainer.py", "--db", str(db), "--preset", "tiny", "--steps", str(STEPS),
         "--save-steps", str(EVERY), "--policy", "human", "--segments-out", str(segments_out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    approved = None
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:  # a person at the dashboard, here the CLI
        if approved is None and db.exists():
            pending = Store(db).proposals(1, "pending")
            if pending:
                p = cli("decide", pending[-1]["id"], "approve", "--by", "alice", db=db, check=False)
                if p.returncode == 0:  # else superseded by a newer proposal meanwhile: try that one
                    approved = pending[-1]["id"]
        time.sleep(0.2)
    out = proc.communicate(timeout=max(1, deadline - time.time()))[0]
    assert proc.returncode == 0, out[-3000:]
    assert approved is not None

    store = Store(db)
    p = store.proposal(approved)
    k = p["applied_step"]
    assert p["status"] == "applied" and p["decided_by"] == "alice" and p["step"] < k < STEPS
    # applied at the first checkpoint after the approval: every boundary
    # between the proposal's and k had proposed before the person approved
    approved_at = next(e["id"] for e in store.events(1, "approved") if e["proposal_id"] == approved)
    proposed = {e["proposal_id"]: e["id"] for e in store.events(1, "proposed")}
    for q in store.proposals(1):
        if p["step"] < q["step"] < k:
            assert proposed[q["id"]] < approved_at
    assert [e["proposal_id"] for e in store.events(1, "applied")] == [approved]  # exactly once
    assert store.weights_at(1, k) == p["final_weights"] != store.weights_at(1, k - 1)

    # the weights each sequence was drawn with: the new ones from the
    # boundary at k on (HF draws one batch ahead), none before it
    segs = json.loads(segments_out.read_text())
    new = [s for s in segs if s["weights"] == pytest.approx(p["final_weights"], abs=1e-12)]
    assert len(new) == 1 and new[0]["step"] == k
    assert k * BATCH <= new[0]["from_sequence"] <= (k + 2) * BATCH
    before = [s for s in segs if s["from_sequence"] < new[0]["from_sequence"]]
    assert before and all(s["weights"] != pytest.approx(p["final_weights"], abs=1e-12) for s in before)

    # the dashboard's rows, like a built-in run's
    run = store.run(1)
    assert run["status"] == "finished" and run["step"] == STEPS
    steps = list(range(0, STEPS + 1, EVERY))
    assert [(c["step"], c["evaluated"], c["boundary_done"]) for c in store.checkpoints(1)] == [
        (s, 1, 1) for s in steps]
    skills = [s["name"] for s in store.skills(1)]
    assert skills == ["copy", "copy_holdout", "add2", "add2_holdout"]
    assert {(c["step"], c["skill"]) for c in store.capability(1)} == {(s, k_) for s in steps for k_ in skills}
    kinds = {m["kind"] for m in store.measurements(1)}
    assert kinds == {"steer", "holdout", "domain_loss"}
    assert all(c["train_loss"] is not None for c in store.checkpoints(1)[1:])

    # and the dashboard shows it like a built-in run: trajectories, proposals
    from conftest_dashboard import APP
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CLOSED_LOOP_DB", str(db))
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception, at.exception
    for page in ("pages/mixture.py", "pages/capabilities.py"):
        at.switch_page(page).run()
        assert not at.exception, at.exception
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {"copy", "add2"} <= {t.get("name") for t in spec["data"]}
