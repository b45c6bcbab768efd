"""backend/distributed.py: each rank's rows of the global batches, and a real
tiny run under torchrun with 2 CPU processes (gloo, one torch thread each)
against the same run in one process."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from backend.config import ConfigError, DomainConfig
from backend.data import tokenizer as tokenizer_mod
from backend.decisions import send_command
from backend.data.domains import build_domains
from backend.data.sampler import MixtureSampler
from backend.distributed import Dist, rank_batches
from backend.loop import run_dir_for
from backend.schedule import export_schedule
from backend.store import Store
from conftest import ROOT, cli, cli_json

WEIGHTS = {"strings": 0.5, "arithmetic": 0.3, "noise": 0.2}


@pytest.fixture(scope="module")
def make_sampler(tmp_path_factory):
    domains = build_domains([DomainConfig(name="strings", source="synthetic", skills=["copy"]),
                             DomainConfig(name="arithmetic", source="synthetic", skills=["add2"]),
                             DomainConfig(name="noise", source="random")])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokenizer_mod, "CHARS_PER_DOMAIN", 20_000)
        tok = tokenizer_mod.train_tokenizer(domains, vocab_size=300, seed=0, out_dir=tmp_path_factory.mktemp("tok"))
    return lambda: MixtureSampler(domains, tok, 16, seed=3)


@pytest.mark.parametrize("background", [False, True])
def test_the_ranks_rows_make_up_the_global_batches_of_one_process(make_sampler, background):
    one = make_sampler()
    one.sequences_drawn = 40  # mid-run, as after a resume
    expected = [one.batch(WEIGHTS, 8)[0] for _ in range(3)]  # (8, 17) each
    per_rank = []
    for rank in range(2):
        s = make_sampler()
        s.sequences_drawn = 40
        per_rank.append([b.numpy() for b in rank_batches(s, WEIGHTS, 8, 3, Dist(rank=rank, world_size=2),
                                                           background=background)])
        assert s.sequences_drawn == one.sequences_drawn == 64  # every rank's state: the next global index
    for k in range(3):
        assert per_rank[0][k].shape == (4, 17)
        np.testing.assert_array_equal(np.concatenate([per_rank[0][k], per_rank[1][k]]), expected[k])


def test_a_batch_that_does_not_split_over_the_ranks_names_the_field():
    Dist(world_size=2).check_batch(8, grad_accum=2)
    with pytest.raises(ConfigError, match=r"^train\.batch_size: 6 sequences cannot be split into 4 processes x 1"):
        Dist(world_size=4).check_batch(6, grad_accum=1)


def test_nproc_with_detach_is_refused_before_a_run_is_stored(tmp_path):
    p = cli("run", "--preset", "tiny", "--nproc", "2", "--detach", db=tmp_path / "cl.db", check=False)
    assert p.returncode == 2 and "--nproc" in p.stderr
    assert Store(tmp_path / "cl.db").runs() == []


# -- a real run under torchrun -------------------------------------------------------

CONFIG = """preset = "tiny"
[train]
steps = 30
checkpoint_every = 10
threads = 1
"""


def train_log(db, run_id, rank) -> list[dict]:
    path = run_dir_for(Store(db), run_id) / f"train-log-rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def losses_by_step(log: list[dict]) -> dict[int, float]:
    """step -> the global batch's loss, the last stretch written winning (a
    resume trains a stretch again)."""
    return {s["from_step"] + i: loss for s in log for i, loss in enumerate(s["losses"])}


@pytest.mark.slow
def test_two_processes_train_as_one_and_resume_in_one(tmp_path):
    (tmp_path / "run.toml").write_text(CONFIG)
    ref_db, ddp_db = tmp_path / "one" / "cl.db", tmp_path / "ddp" / "cl.db"
    ref = cli_json("run", "--config", tmp_path / "run.toml", "--policy", "auto", db=ref_db)
    assert ref["status"] == "finished"

    # 2 ranks (gloo); a stop sent once checkpoint 20 is written is obeyed at
    # that checkpoint: rank 0 sends it to rank 1, both exit
    cmd = [sys.executable, "-m", "backend", "run", "--config", str(tmp_path / "run.toml"), "--policy", "auto",
           "--nproc", "2", "--db", str(ddp_db), "--json"]
    store = Store(ddp_db)  # the schema, before the command opens it
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        runs = store.runs()
        if runs and store.checkpoint(runs[0]["id"], 20):  # written; its evaluation takes seconds
            send_command(store, runs[0]["id"], "stop", by="test")
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    res = json.loads(out)
    rid = res["run"]
    assert res["status"] == "stopped" and res["nproc"] == 2
    assert [c["step"] for c in store.checkpoints(rid)] == [0, 10, 20]

    rank0, rank1 = train_log(ddp_db, rid, 0), train_log(ddp_db, rid, 1)
    # the same stretches with the same weights on both ranks: the proposal
    # applied at step 10 reached rank 1 at step 10; the store's schedule agrees
    assert [(s["from_step"], s["to_step"], s["weights"]) for s in rank0] == \
           [(s["from_step"], s["to_step"], s["weights"]) for s in rank1] != []
    assert [s["from_step"] for s in rank0] == [0, 10]
    assert rank0[1]["weights"] != rank0[0]["weights"]
    for s in rank0:
        assert s["world_size"] == 2 and s["weights"] == store.weights_at(rid, s["from_step"])
    # one owner: rank 0's pid wrote the heartbeat and owned the run, rank 1's never
    assert {s["pid"] for s in rank0} == {store.run(rid)["pid"]} != {s["pid"] for s in rank1}
    # the export holds the stretches the ranks trained: to step 20 (the mixture applied there
    # has trained nothing yet), not to the run's 30
    stretches = lambda segs: [(s["from_step"], s["to_step"], s["weights"]) for s in segs]  # noqa: E731
    assert stretches(export_schedule(store, rid)["segments"]) == stretches(rank0)

    # resume in one process from the 2-process checkpoint at step 20
    assert cli_json("run", "--resume", rid, db=ddp_db)["status"] == "finished"
    resumed = train_log(ddp_db, rid, 0)[-1]
    assert (resumed["from_step"], resumed["world_size"]) == (20, 1)
    assert stretches(export_schedule(store, rid)["segments"]) == stretches(train_log(ddp_db, rid, 0))

    # every step's loss as in one process, to float rounding; the same schedule
    ddp_losses, ref_losses = losses_by_step(train_log(ddp_db, rid, 0)), losses_by_step(
        train_log(ref_db, ref["run"], 0))
    assert sorted(ddp_losses) == sorted(ref_losses) == list(range(30))
    for step, loss in ref_losses.items():
        assert ddp_losses[step] == pytest.approx(loss, abs=1e-4), step
    ref_store = Store(ref_db)
    schedule = [(s["from_step"], s["weights"]) for s in store.schedule(rid)]
    ref_schedule = [(s["from_step"], s["weights"]) for s in ref_store.schedule(ref["run"])]
    assert [f for f, _ in schedule] == [f for f, _ in ref_schedule]
    for (_, w), (_, rw) in zip(schedule, ref_schedule):
        assert w == pytest.approx(rw, abs=1e-6)
