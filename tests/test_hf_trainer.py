"""examples/hf_trainer.py end to end: an HF Trainer steered through the
callback (backend.integrations.hf), policy human, with the approval made by
a second process (one that watches the store and approves, as a person at
the dashboard or `python -m backend decide` would) while it trains.
The preset tiny, 40 steps, a checkpoint every 10, 8 sequences per step."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from backend.store import Store

STEPS, EVERY, BATCH = 40, 10, 8

DECIDER = """
import sys, time
from backend.decisions import DecisionError, decide
from backend.store import Store
store = Store(sys.argv[1])
deadline = time.time() + 200
while time.time() < deadline:
    try:
        pending = store.proposals(1, "pending")
    except Exception:  # the run is not registered yet
        pending = []
    for p in pending:
        try:
            decide(store, p["id"], "approve", by="alice")
        except DecisionError:
            continue  # superseded meanwhile: the next one
        print(p["id"])
        sys.exit(0)
    time.sleep(0.01)
sys.exit("no proposal to approve")
"""


@pytest.mark.slow
def test_an_approval_from_another_process_steers_the_hf_dataset_at_the_next_checkpoint(tmp_path, monkeypatch):
    db, segments_out = tmp_path / "hf.db", tmp_path / "segments.json"
    # the second process: a person's decision from another process, here one
    # that watches the store and approves the first proposal it sees (its
    # imports done before, so it decides within milliseconds: the proposal
    # waits only one short stretch before a newer one supersedes it)
    decider = subprocess.Popen([sys.executable, "-c", DECIDER, str(db)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    with open(tmp_path / "trainer.log", "w") as log:  # a file, not a pipe nobody drains while it trains
        proc = subprocess.run(
            [sys.executable, "examples/hf_trainer.py", "--db", str(db), "--preset", "tiny", "--steps", str(STEPS),
             "--save-steps", str(EVERY), "--policy", "human", "--segments-out", str(segments_out)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, timeout=240)
    out = (tmp_path / "trainer.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    decided, err = decider.communicate(timeout=60)
    assert decider.returncode == 0, err[-3000:]
    approved = int(decided.split()[-1])

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


def test_a_trainer_resumed_at_a_done_checkpoint_draws_from_the_mixture_set_there(tmp_path):
    """HF's resume_from_checkpoint reaches the callback at a checkpoint whose
    boundary ran before the crash: the fresh dataset (built at the step-0
    mixture) must draw from the mixture applied there, as the schedule says."""
    from backend.client import RunClient
    from backend.config import preset
    from backend.data.domains import build_domains
    from backend.data.tokenizer import train_tokenizer
    from backend.decisions import set_mixture
    from backend.integrations.hf import ClosedLoopCallback, MixtureDataset

    store = Store(tmp_path / "hf.db")
    client = RunClient.register(store, preset("tiny").replace(policy="human"))
    names = client.cfg.domain_names
    for step in (0, 10):
        client.report_checkpoint(step, step * client.tokens_per_step, train_loss=3.0,
                                 tokens_per_domain=dict.fromkeys(names, step))
        client.report_measurements(step, [{"domain": d, "task": f"heldout_loss/{d}", "metric": "loss", "value": 3.0,
                                           "stderr": 0.01, "n": 4} for d in names])
        client.boundary(step)
        if step == 0:
            set_mixture(store, client.run_id, {**dict.fromkeys(names, 0.0), names[0]: 1.0}, by="ana")
    assert client.mixture_at(10) != client.mixture_at(0)
    tok = train_tokenizer(build_domains(client.cfg.data.domains), client.cfg.data.tokenizer_vocab, client.cfg.seed,
                          tmp_path / "tok")
    resumed = RunClient(store, client.run_id)
    dataset = MixtureDataset.for_run(resumed, tok)
    ClosedLoopCallback(resumed, dataset, tok)._boundary(10, model=None, path="")
    assert dataset.weights == resumed.mixture_at(10)
