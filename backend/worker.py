"""Process entry for one run: ownership, heartbeat, commands, resume, failure record.

`spawn` starts a worker as a detached background process (its own session,
output to worker.log in the run folder) and returns at once; `work` is what
that process (or a foreground `run`) executes.

A run is owned by one worker at a time, through an OS lock: an exclusive
`flock` on RUN_DIR/worker.lock, whose text names the owner (pid, host, start
time). The kernel releases it when the owner exits, however it dies (kill
-9 included), and never while it lives, however long it is frozen or busy
evaluating; so a second worker is refused while the first lives, and `run
--resume` works as soon as it is gone. `worker_alive` answers from the lock.

The heartbeat is for people (the dashboard shows its age): a thread of the
owner writes it every poll interval (backend.loop.POLL_SECONDS) through
every phase (start-up, training, evaluation, proposing). `stop` reaches the owner through the commands table:
the loop takes commands at every poll while training and at every checkpoint;
when a stop stays untaken for STOP_GRACE_SECONDS (a long evaluation) the
heartbeat thread sends SIGTERM to its own process, which stops like the
command. By hand, `kill -TERM PID` with the pid from worker.lock does the same.

Under torchrun (`torchrun --nproc_per_node N -m backend worker RUN`, or
`run --nproc N`) rank 0 is the owner above, alone; the other ranks take no
lock, open no store and train what rank 0 sends them (backend.distributed).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from backend.config import RunConfig
from backend.store import Store, StoreError

LOCK_NAME = "worker.lock"
# how long a stop command may wait untaken before the owner signals itself
STOP_GRACE_SECONDS = float(os.environ.get("CLOSED_LOOP_STOP_GRACE_S", "10"))
# a dashboard probing the lock holds it for microseconds: a worker starting
# at that instant retries this long (seconds) before it counts as refused
_ACQUIRE_RETRY_S = 0.5


class WorkerError(RuntimeError):
    """The run cannot be worked on now (e.g. another live worker owns it)."""


def create_run(store: Store, cfg: RunConfig, *, replay_schedule: dict | None = None,
               parent_run: int | None = None) -> int:
    """Store a new run from a validated config; returns its id. What only
    this machine can answer is checked first (check_runnable), so a run that
    would fail in its worker is refused naming the field before anything is
    written."""
    check_runnable(cfg, store.path)
    return store.create_run(cfg.to_dict(), parent_run=parent_run, replay_schedule=replay_schedule)


def check_runnable(cfg: RunConfig, db_path: str | os.PathLike) -> None:
    """What a config cannot say about the machine it runs on: a GPU where
    train.device asks for one, every folder domain's folder, every domain's
    source and the files of each text domain (their preflight: formats and
    a bounded prefix, backend.data.sources.Shard.preflight; files that a
    token cache of the runs of the database at `db_path` was built from are
    not read again), your own model's tokenizer fitting it
    (backend.loop.check_pretrained), and every lm-eval task loading offline
    (backend.loop.check_tasks). ConfigError names the field, and the file,
    line and JSON field. Nothing is written."""
    from backend.config import ConfigError
    from backend.data.cache import cache_root
    from backend.data.domains import DataError, build_domain
    from backend.loop import check_pretrained, check_tasks, run_dir_for

    for i, d in enumerate(cfg.data.domains):
        if d.path is not None and not Path(d.path).is_dir():
            raise ConfigError(f"data.domains[{i}].path: no such folder {d.path!r} on this machine")
    caches = cache_root(cfg.data.cache_dir, run_dir_for(db_path, 0))  # every run of the database shares this root
    for i, d in enumerate(cfg.data.domains):
        try:
            domain = build_domain(d)
            if hasattr(domain, "preflight"):
                domain.preflight(caches)
        except DataError as e:
            raise ConfigError(f"data.domains[{i}]: {e}") from None
    if cfg.train.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("train.device: cuda, but torch sees no GPU on this machine (use auto or cpu)")
    check_pretrained(cfg)
    check_tasks(cfg)


# -- ownership: the run lock ---------------------------------------------------

_held_fds: set[int] = set()
_fork_hook_set = False


def _close_held_in_child() -> None:
    # a forked helper (lm-eval, datasets) must not keep the run locked after
    # the worker dies: closing its copy of the descriptor drops its reference
    # without unlocking (flock locks belong to the open file, not the fd)
    for fd in list(_held_fds):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_fds.clear()


class RunLock:
    """The exclusive lock that makes a process the owner of a run."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, *, inherited_fd: int | None = None) -> None:
        """Take the lock (or adopt one a parent took and passed down, see
        `spawn`) and write the owner's pid, host and start time into the file.
        WorkerError names the owner when another process holds it."""
        global _fork_hook_set
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = inherited_fd if inherited_fd is not None else os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + _ACQUIRE_RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise WorkerError(f"{describe_owner(read_owner(self.path))} ({self.path})") from None
                time.sleep(0.02)
        self.fd = fd
        _held_fds.add(fd)
        if not _fork_hook_set:
            os.register_at_fork(after_in_child=_close_held_in_child)
            _fork_hook_set = True
        os.set_inheritable(fd, False)
        _write_owner(fd, os.getpid())

    def release(self) -> None:
        """Clear the owner and unlock (the kernel does the same if we die)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        _held_fds.discard(self.fd)
        os.close(self.fd)  # the last reference: the lock goes with it
        self.fd = None


def _write_owner(fd: int, pid: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": pid, "host": socket.gethostname(), "started": time.time()}).encode(), 0)


def read_owner(path: str | os.PathLike) -> dict | None:
    """The owner a lock file names ({pid, host, started}), or None."""
    try:
        return json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None


def describe_owner(owner: dict | None) -> str:
    """'owned by worker pid 123 on host h since 2026-01-01 10:00:00 UTC'."""
    if not owner:
        return "owned by another worker (pid not yet written)"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(owner.get("started", 0)))
    return f"owned by worker pid {owner.get('pid')} on host {owner.get('host')} since {since}"


def lock_held(path: str | os.PathLike) -> bool:
    """Whether some process holds the lock file (a shared probe, released at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def owner(run: dict) -> dict | None:
    """The live owner of a run ({pid, host, started}; {} when it has not
    written itself yet), or None when no process holds the run's lock."""
    if not run.get("run_dir"):
        return None  # no worker of this code ever started on it
    path = Path(run["run_dir"]) / LOCK_NAME
    if not lock_held(path):
        return None
    return read_owner(path) or {}


def worker_alive(run: dict) -> bool:
    """True while a worker process owns the run (holds its lock), whatever
    the age of its heartbeat."""
    return owner(run) is not None


def _own(store: Store, run_id: int, *, inherited_fd: int | None = None) -> tuple[Path, "RunLock"]:
    """Take the lock of a run that is not finished (or adopt the one a
    parent took); returns (run folder, lock). WorkerError names the owner."""
    if store.run(run_id)["status"] == "finished":
        raise WorkerError(f"run {run_id} is finished")
    run_dir = _run_dir(store, run_id)
    lock = RunLock(run_dir / LOCK_NAME)
    try:
        lock.acquire(inherited_fd=inherited_fd)
    except WorkerError as e:
        raise WorkerError(f"run {run_id} is {e}") from None
    return run_dir, lock


def _run_dir(store: Store, run_id: int) -> Path:
    from backend.loop import run_dir_for

    return run_dir_for(store, run_id)


# -- heartbeat ---------------------------------------------------------------------


@contextlib.contextmanager
def beating(store: Store, run_id: int, *, every: float, on_stop=None):
    """While inside: the run's heartbeat is written on entry, then by a
    daemon thread every `every` seconds, whatever the main thread does; the
    thread calls `on_stop()` once (by default: SIGTERM to this process) when
    a stop command has waited untaken for STOP_GRACE_SECONDS."""
    done = threading.Event()
    on_stop = on_stop or (lambda: os.kill(os.getpid(), signal.SIGTERM))

    def beat():
        signalled = False
        while not done.wait(every):
            try:
                store.heartbeat(run_id)
                stale = [c for c in store.pending_commands(run_id)
                         if c["command"] == "stop" and time.time() - c["created_at"] >= STOP_GRACE_SECONDS]
            except (StoreError, sqlite3.Error):
                stale = []  # a busy or closing database: the next beat tries again
            if stale and not signalled:
                signalled = True
                on_stop()
        store.close()

    store.heartbeat(run_id)  # on entry, so the run shows alive before the first interval
    t = threading.Thread(target=beat, name=f"heartbeat-run-{run_id}", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join(timeout=5 * every + 5)


# -- start and work -----------------------------------------------------------------


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
    """Start `python -m backend worker RUN` detached; returns its pid.

    The run's lock is taken here and handed to the child (an inherited
    descriptor), so the run is owned from this moment on and two spawns can
    never both start a worker. WorkerError names the owner if there is one."""
    store = Store(db_path)
    run_dir, lock = _own(store, run_id)
    try:
        # before the child exists: a child that fails at once records `failed` after this
        store.update_run(run_id, status="running", heartbeat=time.time(), run_dir=str(run_dir),
                         phase="starting", phase_started=time.time())  # not the phase it stopped in
        with open(run_dir / "worker.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "backend", "worker", str(run_id), "--db", str(db_path),
                 "--lock-fd", str(lock.fd)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(lock.fd,),
                start_new_session=True, cwd=os.getcwd(),
            )
        _write_owner(lock.fd, proc.pid)
    finally:
        # the child holds its own reference now: closing ours keeps it locked
        _held_fds.discard(lock.fd)
        os.close(lock.fd)
    # reap the child when it exits, so a long-lived caller (the dashboard)
    # collects no zombies
    threading.Thread(target=proc.wait, daemon=True).start()
    store.update_run(run_id, pid=proc.pid)
    return proc.pid


def work(db_path: str, run_id: int, *, progress: bool = False, lock_fd: int | None = None) -> str:
    """Run (or resume) the loop of run_id in this process until it finishes
    or is stopped; a crash is recorded as status `failed` with its error.

    Takes the run's lock before writing anything (or adopts `lock_fd`, the
    one `spawn` took); WorkerError names the owner when another worker has
    the run. Under torchrun (backend.distributed) rank 0 does all of that and
    the other ranks train what it sends them."""
    from backend import distributed

    d = distributed.init()
    try:
        if not d.is_main:
            return _follow(d)
        told = []  # the other ranks got the run's config (or must hear why not)
        try:
            return _lead(db_path, run_id, d, progress=progress, lock_fd=lock_fd, ready=told.append)
        except BaseException as e:
            if d.world_size > 1 and not told:
                d.send({"error": f"{type(e).__name__}: {e}"})
            raise
    finally:
        distributed.shutdown(d)


def _lead(db_path: str, run_id: int, d, *, progress: bool, lock_fd: int | None, ready) -> str:
    """Rank 0 (or the only process): own the run and run its ClosedLoop;
    ready(message) once the other ranks have been sent the config."""
    from functools import partial

    from backend.loop import POLL_SECONDS, ClosedLoop, Stopped, build_components

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # offline: backend/__init__.py
    store = Store(db_path)
    run_dir, lock = _own(store, run_id, inherited_fd=lock_fd)
    worker_pid = os.getpid()
    loop = None

    def on_term(signum, frame):  # SIGTERM: stop like the stop command
        if os.getpid() != worker_pid:
            # a forked helper process (lm-eval, datasets) inherited this
            # handler: it must simply exit, not unwind the worker's loop
            os._exit(128 + signum)
        if loop is None:
            raise Stopped()
        loop.request_stop()

    previous = signal.getsignal(signal.SIGTERM)
    try:
        store.update_run(run_id, status="running", pid=worker_pid, heartbeat=time.time(), error=None,
                         run_dir=str(run_dir))
        signal.signal(signal.SIGTERM, on_term)
        with beating(store, run_id, every=POLL_SECONDS):
            try:
                components = partial(build_components, dist=d) if d.world_size > 1 else build_components
                loop = ClosedLoop(store, run_id, progress=progress, dist=d, components=components)
                # the tokenizer is in the run folder now: the other ranks build theirs
                ready(d.send({"config": loop.cfg.to_dict(), "run_dir": str(run_dir)}))
                return loop.run()
            except (Stopped, KeyboardInterrupt):
                store.update_run(run_id, status="stopped")
                store.log_event(run_id, "stopped", "worker interrupted; resumes from the last checkpoint")
                return "stopped"
            except BaseException as e:
                store.update_run(run_id, status="failed", error=f"{type(e).__name__}: {e}")
                with contextlib.suppress(StoreError):
                    store.log_event(run_id, "failed", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
                raise
    finally:
        # commands sent to this worker die with it (a stop it obeyed by signal
        # must not stop the next worker)
        with contextlib.suppress(StoreError, sqlite3.Error):
            store.take_commands(run_id)
        signal.signal(signal.SIGTERM, previous)
        lock.release()


def _follow(d) -> str:
    """A rank other than 0: the config and run folder from rank 0, then
    backend.loop.follow. SIGTERM is ignored: torchrun sends it to every
    rank, and rank 0 stops them all at one step."""
    from backend.config import from_dict
    from backend.loop import follow

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    setup = d.send()
    if "error" in setup:
        raise WorkerError(f"rank {d.rank}: rank 0 did not start the run: {setup['error']}")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return follow(from_dict(setup["config"]), Path(setup["run_dir"]), d)
