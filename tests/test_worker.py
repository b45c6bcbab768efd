"""backend/worker.py: one worker owns a run (an OS lock in the run folder),
its heartbeat thread beats through every phase, and a stop reaches it.

Other processes play the other worker here: a real lock is only real
between processes."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, cli, cli_json

from backend import worker
from backend.config import preset
from backend.decisions import send_command
from backend.loop import run_dir_for
from backend.store import Store
from backend.worker import LOCK_NAME, RunLock, WorkerError, beating, owner, worker_alive

# a process that owns a run the way a worker does: the lock, then the heartbeat
HOLDER = """
import sys, time
from backend.loop import run_dir_for
from backend.store import Store
from backend.worker import LOCK_NAME, RunLock, beating

store, run_id = Store(sys.argv[1]), int(sys.argv[2])
run_dir = run_dir_for(store, run_id)
RunLock(run_dir / LOCK_NAME).acquire()
store.update_run(run_id, status="running", run_dir=str(run_dir))
with beating(store, run_id, every=0.05):
    print("owner", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def run_id(store):
    return store.create_run(preset("tiny").to_dict())


@pytest.fixture
def holder(db, store, run_id):
    """Another process that owns the run; killed after the test."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(run_id)], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "owner"
    yield p
    if p.poll() is None:
        p.send_signal(signal.SIGCONT)
        p.kill()
    p.wait(30)


def test_a_second_worker_is_refused_naming_the_owner(db, store, run_id, holder):
    run = store.run(run_id)
    assert worker_alive(run) and owner(run)["pid"] == holder.pid
    with pytest.raises(WorkerError, match=f"run {run_id} is owned by worker pid {holder.pid} on host"):
        worker.work(str(db), run_id)
    with pytest.raises(WorkerError, match=f"pid {holder.pid}"):
        worker.spawn(str(db), run_id)
    p = cli("run", "--resume", run_id, db=db, check=False)
    assert p.returncode == 2 and f"owned by worker pid {holder.pid}" in p.stderr
    assert store.run(run_id)["status"] == "running" and store.events(run_id, "resumed") == []


def test_a_frozen_owner_still_owns_the_run(db, store, run_id, holder):
    os.kill(holder.pid, signal.SIGSTOP)
    time.sleep(1.5)  # 30 heartbeats missed: any heartbeat-age rule would call it dead by now
    run = store.run(run_id)
    assert time.time() - run["heartbeat"] >= 1.4
    assert worker_alive(run)
    with pytest.raises(WorkerError, match=f"pid {holder.pid}"):
        worker.work(str(db), run_id)
    frozen_beat = run["heartbeat"]
    os.kill(holder.pid, signal.SIGCONT)
    _wait_for(lambda: store.run(run_id)["heartbeat"] > frozen_beat)  # it beats again


def test_a_killed_owner_lets_go_of_the_run(db, store, run_id, holder):
    holder.kill()
    holder.wait(30)
    run = store.run(run_id)
    assert not worker_alive(run) and owner(run) is None
    lock = RunLock(run_dir_for(store, run_id) / LOCK_NAME)
    lock.acquire()  # what `run --resume` does first
    try:
        assert owner(run)["pid"] == os.getpid()
    finally:
        lock.release()
    assert owner(run) is None and worker.read_owner(lock.path) is None


def test_the_lock_conflicts_within_one_process_too(tmp_path):
    first, second = RunLock(tmp_path / LOCK_NAME), RunLock(tmp_path / LOCK_NAME)
    first.acquire()
    try:
        with pytest.raises(WorkerError, match=f"owned by worker pid {os.getpid()}"):
            second.acquire()
    finally:
        first.release()
    second.acquire()
    second.release()


def test_a_run_no_worker_ever_held_has_no_owner(store, run_id):
    run = store.run(run_id)
    assert run["run_dir"] is None and not worker_alive(run)


def test_the_heartbeat_beats_while_the_main_thread_is_busy(store, run_id):
    with beating(store, run_id, every=0.05):
        entry = store.run(run_id)["heartbeat"]
        end = time.time() + 10  # generous: a loaded CI machine may delay a beat, never stop it
        beats = set()
        while time.time() < end and len(beats) < 3:  # a long evaluation: pure Python, no sleeping
            sum(range(10_000))
            beats.add(store.run(run_id)["heartbeat"])
        assert len(beats - {entry}) >= 2, "the heartbeat did not advance while the main thread was busy"
    last = store.run(run_id)["heartbeat"]
    time.sleep(0.2)
    assert store.run(run_id)["heartbeat"] == last  # the thread ended with the block


def test_an_untaken_stop_signals_the_owner_once(store, run_id, monkeypatch):
    monkeypatch.setattr(worker, "STOP_GRACE_SECONDS", 0.2)
    calls = []
    with beating(store, run_id, every=0.05, on_stop=lambda: calls.append(time.time())):
        send_command(store, run_id, "pause", by="ana")
        time.sleep(0.5)
        assert calls == []  # only a stop escalates
        sent = time.time()
        send_command(store, run_id, "stop", by="ana")
        time.sleep(0.6)
    assert len(calls) == 1 and calls[0] - sent >= 0.2


def _dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait_for(predicate, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


@pytest.mark.slow
def test_a_frozen_real_worker_keeps_its_run_and_a_stop_reaches_it(db):
    env = {**os.environ, "CLOSED_LOOP_POLL_S": "0.05"}
    res = cli_json("run", "--preset", "tiny", "--policy", "auto", "--detach", db=db, env=env)
    store, run_id, pid = Store(db), res["run"], res["pid"]
    _wait_for(lambda: store.checkpoint(run_id, 0) is not None)  # evaluating the untrained model
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(3)  # 60 heartbeats missed
        run = store.run(run_id)
        assert time.time() - run["heartbeat"] >= 2.9
        assert worker_alive(run) and owner(run)["pid"] == pid
        p = cli("run", "--resume", run_id, db=db, check=False)
        assert p.returncode == 2 and f"owned by worker pid {pid}" in p.stderr
    finally:
        os.kill(pid, signal.SIGCONT)
    cli("stop", run_id, db=db)
    _wait_for(lambda: _dead(pid))
    run = store.run(run_id)
    assert run["status"] == "stopped" and not worker_alive(run)
    assert store.pending_commands(run_id) == []
    assert cli_json("run", "--resume", run_id, db=db)["status"] == "finished"


def test_a_run_that_would_fail_in_its_worker_is_refused_before_it_is_stored(store, tmp_path):
    """Accepted configs run cleanly: a missing folder domain, a GPU that is
    not there and a task that cannot load are refused naming the field, and
    no run row is written."""
    import torch

    from backend.config import ConfigError, preset
    from backend.worker import create_run

    before = len(store.runs())
    d = preset("tiny").to_dict()
    d["data"]["domains"].append({"name": "mine", "source": "folder", "path": str(tmp_path / "gone")})
    with pytest.raises(ConfigError, match=r"data.domains\[6\].path: no such folder"):
        create_run(store, preset("tiny").replace(data=d["data"]))
    if not torch.cuda.is_available():
        train = {**preset("tiny").to_dict()["train"], "device": "cuda"}
        with pytest.raises(ConfigError, match="train.device: cuda"):
            create_run(store, preset("tiny").replace(train=train))
    ev = {**preset("tiny").to_dict()["evaluation"], "tasks": [{"skill": "x", "task": "ex_nope",
                                                               "include_path": "examples/tasks"}]}
    with pytest.raises(ConfigError, match=r"evaluation.tasks\[0\].task: unknown"):
        create_run(store, preset("tiny").replace(evaluation=ev))
    assert len(store.runs()) == before


def test_your_own_model_with_a_tokenizer_it_cannot_embed_is_refused_before_it_is_stored(store, tmp_path):
    """model.pretrained whose tokenizer has ids the model cannot embed: a
    ConfigError naming the field before any run row is written (not a
    failed run and a traceback from its worker)."""
    from test_model import _own_model_folder

    from backend.config import ConfigError, preset
    from backend.worker import create_run

    folder, n_tokens = _own_model_folder(tmp_path, spare_ids=-10)
    model = {**preset("tiny").to_dict()["model"], "pretrained": str(folder)}
    with pytest.raises(ConfigError, match=f"model.pretrained: the tokenizer has {n_tokens} tokens but the model "
                                          f"embeds only {n_tokens - 10}"):
        create_run(store, preset("tiny").replace(model=model))
    assert store.runs() == []
