"""Process entry for one run: heartbeat, commands, resume, failure record.

`spawn` starts a worker as a detached background process (its own session,
output to worker.log in the run folder) and returns the run id at once; `work` is what
that process (or a foreground `run`) executes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback

from backend.config import RunConfig
from backend.store import Store, StoreError

STALE_SECONDS = 120  # a heartbeat older than this means the worker is gone


class WorkerError(RuntimeError):
    """The run cannot be worked on now (e.g. another live worker holds it)."""


def create_run(store: Store, cfg: RunConfig, *, replay_schedule: dict | None = None,
               parent_run: int | None = None) -> int:
    return store.create_run(cfg.to_dict(), parent_run=parent_run, replay_schedule=replay_schedule)


def worker_alive(run: dict) -> bool:
    """True while a worker process holds the run and beats."""
    if run["status"] not in ("running", "paused") or not run["pid"]:
        return False
    try:
        os.kill(run["pid"], 0)
    except (ProcessLookupError, PermissionError):
        return False
    return run["heartbeat"] is not None and time.time() - run["heartbeat"] < STALE_SECONDS


def start_replay(db_path: str, schedule: dict, *, source: str, detach: bool = True) -> int:
    """Create a run that follows a parsed schedule (backend.schedule.parse_schedule)
    and start it (detached, or in this process); returns the run id."""
    store = Store(db_path)
    origin = schedule.get("run") if isinstance(schedule.get("run"), dict) else {}
    from backend.schedule import replay_record

    sched = replay_record(schedule)  # segments only: the config is stored with the run, the size capped by parse
    cfg = schedule["run_config"].replace(name=f"replay-{origin.get('name') or schedule['run_config'].name}")
    run_id = create_run(store, cfg, replay_schedule=sched)
    store.log_event(run_id, "replay", f"replays schedule of run {origin.get('id', '?')} from {source}")
    if detach:
        spawn(db_path, run_id)
    return run_id


def spawn(db_path: str, run_id: int) -> int:
    """Start `python -m backend worker RUN` detached; returns its pid."""
    from backend.loop import run_dir_for

    store = Store(db_path)
    if worker_alive(store.run(run_id)):
        raise WorkerError(f"run {run_id} already has a live worker (pid {store.run(run_id)['pid']})")
    log_dir = run_dir_for(store, run_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "worker.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend", "worker", str(run_id), "--db", str(db_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=os.getcwd(),
        )
    # reap the child when it exits, so a long-lived caller (the dashboard)
    # collects no zombies
    threading.Thread(target=proc.wait, daemon=True).start()
    store.update_run(run_id, pid=proc.pid, heartbeat=time.time(), status="running")
    return proc.pid


def work(db_path: str, run_id: int, *, progress: bool = False) -> str:
    """Run (or resume) the loop of run_id in this process until it finishes
    or is stopped; a crash is recorded as status `failed` with its error."""
    from backend.loop import ClosedLoop, Stopped

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    store = Store(db_path)
    run = store.run(run_id)
    if run["pid"] != os.getpid() and worker_alive(run):
        raise WorkerError(f"run {run_id} already has a live worker (pid {run['pid']})")
    if run["status"] == "finished":
        raise WorkerError(f"run {run_id} is finished")
    store.update_run(run_id, status="running", pid=os.getpid(), heartbeat=time.time(), error=None)

    worker_pid = os.getpid()

    def on_term(signum, frame):  # SIGTERM: stop like the stop command
        if os.getpid() != worker_pid:
            # a forked helper process (lm-eval, datasets) inherited this
            # handler: it must simply exit, not unwind the worker's loop
            os._exit(128 + signum)
        raise Stopped()

    signal.signal(signal.SIGTERM, on_term)
    try:
        return ClosedLoop(store, run_id, progress=progress).run()
    except (Stopped, KeyboardInterrupt):
        store.update_run(run_id, status="stopped")
        store.log_event(run_id, "stopped", "worker interrupted; resumes from the last checkpoint")
        return "stopped"
    except BaseException as e:
        store.update_run(run_id, status="failed", error=f"{type(e).__name__}: {e}")
        try:
            store.log_event(run_id, "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
        except StoreError:
            pass
        raise
