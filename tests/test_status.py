"""backend.status: what a run row means for a person (status words, ages,
counts, and where an approved mixture applies), against a real Store."""

from __future__ import annotations

import os
import time

import pytest

from backend import status
from backend.store import Store


@pytest.fixture
def run(tmp_path) -> tuple[Store, int]:
    """A run of 30 steps with a checkpoint every 10 (at 0, 10, 20, 30)."""
    store = Store(tmp_path / "cl.db")
    run_id = store.create_run({"name": "t", "policy": "human", "train": {"steps": 30, "checkpoint_every": 10}})
    yield store, run_id
    store.close()


def checkpoint(store: Store, run_id: int, step: int, *, boundary_done: bool) -> None:
    store.add_checkpoint(run_id, step=step, tokens_seen=step * 64, train_loss=None, wall_time=0.0,
                         tokens_per_s=None, path="", weights={"a": 1.0})
    store.mark_checkpoint(run_id, step, evaluated=True, boundary_done=boundary_done)


@pytest.mark.parametrize("n, text", [(None, "-"), (0, "0"), (9_999, "9,999"), (12_345, "12.3k"),
                                     (102_297_600, "102.3M"), (3.2e9, "3.2B"), (-20_000, "-20.0k")])
def test_human_fits_a_metric_tile(n, text):
    assert status.human(n) == text


def test_heartbeat_age_in_seconds_then_minutes():
    assert status.heartbeat_age({"heartbeat": None}) == "-"
    assert status.heartbeat_age({"heartbeat": 1000.0}, now=1012.4) == "12 s ago"
    assert status.heartbeat_age({"heartbeat": 1000.0}, now=1000.0 + 300) == "5 min ago"
    assert status.heartbeat_age({"heartbeat": 1000.0}, now=990.0) == "0 s ago"  # clocks a little apart
    assert status.heartbeat_age({"heartbeat": time.time() - 3}).endswith("s ago")


def test_status_text_flags_a_running_run_whose_worker_is_gone(run, tmp_path):
    """Ownership is the run lock (backend.worker), not the heartbeat's age."""
    from backend.loop import run_dir_for
    from backend.worker import LOCK_NAME, RunLock

    store, run_id = run
    assert status.status_text(store.run(run_id)) == "created"
    run_dir = run_dir_for(store, run_id)
    store.update_run(run_id, status="running", pid=os.getpid(), heartbeat=time.time() - 3600,
                     run_dir=str(run_dir))
    lock = RunLock(run_dir / LOCK_NAME)
    lock.acquire()
    try:
        assert status.status_text(store.run(run_id)) == "running"  # this process owns it, however old its beat
    finally:
        lock.release()
    assert status.status_text(store.run(run_id)) == "running (no worker)"
    store.update_run(run_id, status="finished")
    assert status.status_text(store.run(run_id)) == "finished"


def test_is_live():
    assert [s for s in ("created", "running", "paused", "stopped", "failed", "finished")
            if status.is_live({"status": s})] == ["created", "running", "paused"]


def test_next_checkpoint_counts_one_reached_but_not_through_its_boundary(run):
    store, run_id = run
    checkpoint(store, run_id, 20, boundary_done=True)
    at20 = {**store.run(run_id), "step": 20}
    assert status.next_checkpoint(store, at20) == 30  # checkpoint 20 has applied what was approved before it
    store.mark_checkpoint(run_id, 20, boundary_done=False)  # evaluating: it applies at this one
    assert status.next_checkpoint(store, at20) == 20
    assert status.next_checkpoint(store, {**at20, "step": 25}) == 30
    assert status.next_checkpoint(store, {**at20, "step": 10}) == 10  # reached, no checkpoint row yet


def test_apply_note_says_where_and_when(run):
    store, run_id = run
    store.update_run(run_id, status="running", step=14)
    assert status.apply_note(store, store.run(run_id)) == "it applies at the next checkpoint (step 20)"
    store.update_run(run_id, status="stopped")
    assert status.apply_note(store, store.run(run_id)).endswith("(step 20) once the run is resumed")
    store.update_run(run_id, status="finished", step=30)
    assert "no checkpoint is left" in status.apply_note(store, store.run(run_id))


def test_eta_from_the_runs_own_pace(run):
    """Checkpoints 0 and 10 saved 60 s of training apart: a stretch takes
    60 s, so 15 s after checkpoint 10 the next is ~45 s away and the end
    (2 stretches left, to 20 and to 30) ~105 s."""
    store, run_id = run
    assert status.eta(store, store.run(run_id)) == {"elapsed_s": 0.0, "eta_checkpoint_s": None, "eta_end_s": None}
    for step, wall in ((0, 0.0), (10, 60.0)):
        store.add_checkpoint(run_id, step=step, tokens_seen=step * 64, train_loss=None, wall_time=wall,
                             tokens_per_s=None, path="", weights={"a": 1.0})
    store.update_run(run_id, status="running", step=12)
    created = store.checkpoint(run_id, 10)["created_at"]
    out = status.eta(store, store.run(run_id), now=created + 15)
    assert out == pytest.approx({"elapsed_s": 75.0, "eta_checkpoint_s": 45.0, "eta_end_s": 105.0})
    # overdue: the next is due now, not in negative time
    assert status.eta(store, store.run(run_id), now=created + 90)["eta_checkpoint_s"] == 0.0
    # a run that is not working has an elapsed time and no ETA
    store.update_run(run_id, status="stopped")
    assert status.eta(store, store.run(run_id), now=created + 15) == \
        {"elapsed_s": 60.0, "eta_checkpoint_s": None, "eta_end_s": None}
