"""Run status for any UI (dashboard, CLI, report): what a run's row means
for a person reading it.

Pure arithmetic over a run row (`store.run`) and, for the checkpoint where
an approval applies, the store's checkpoint rows. The rules themselves (run
states, checkpoint boundaries) come from backend.vocab; this module only
words them.
"""

from __future__ import annotations

import time

from backend.vocab import LIVE_STATES, TERMINAL_STATES, WORKING_STATES, is_boundary, next_boundary

HEARTBEAT_MINUTES_AFTER = 120  # seconds: older heartbeats are shown in minutes


def status_text(run: dict) -> str:
    """The run's state (created / running / paused / stopped / failed /
    finished), flagged "(no worker)" when a running or paused run's worker
    has stopped beating."""
    from backend import worker  # the lease rule lives with the worker

    status = run["status"]
    if status in WORKING_STATES and not worker.worker_alive(run):
        return f"{status} (no worker)"
    return status


def is_live(run: dict) -> bool:
    """Whether the run is not over (a worker holds it, or will): its pages
    refresh and its controls act."""
    return run["status"] in LIVE_STATES


def human(n: float | None) -> str:
    """A count for a metric tile: 12,345 -> 12.3k, 102,297,600 -> 102.3M;
    None -> "-". Below 10,000 it is written out (9,999)."""
    if n is None:
        return "-"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= 10 * size if unit == "k" else abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:,.0f}"


def heartbeat_age(run: dict, now: float | None = None) -> str:
    """How long ago the worker last beat ("12 s ago", "3 min ago"), or "-"
    when it never did. `now` is Unix seconds (default: the clock)."""
    if not run["heartbeat"]:
        return "-"
    age = max(0.0, (time.time() if now is None else now) - run["heartbeat"])
    return f"{age:.0f} s ago" if age < HEARTBEAT_MINUTES_AFTER else f"{age / 60:.0f} min ago"


def next_checkpoint(store, run: dict) -> int:
    """The step of the checkpoint where an approved mixture applies.

    The worker applies approvals at each checkpoint's boundary, after its
    evaluation, so a checkpoint reached but not yet through its boundary
    still counts as next."""
    train = run["config"]["train"]
    every, total, step = train["checkpoint_every"], train["steps"], run["step"]
    if is_boundary(step, every, total):
        ck = store.checkpoint(run["id"], step)
        if ck is None or not ck["boundary_done"]:
            return step
    return next_boundary(step, every, total)


def applies_at(store, run: dict) -> int | None:
    """The step of the checkpoint where a mixture decided now would apply
    (for a stopped or failed run: once it is resumed); None when no
    checkpoint is left to apply one: the run finished, or only its last
    checkpoint is left, where nothing is steered (backend.decisions
    refuses a decision then)."""
    if run["status"] == "finished":
        return None
    step = next_checkpoint(store, run)
    return step if step < run["config"]["train"]["steps"] else None


def apply_note(store, run: dict) -> str:
    """When an approved mixture takes effect, as a clause to end a sentence
    ("Proposal #3 approved; <note>.")."""
    at = applies_at(store, run)
    if at is None:
        return "no checkpoint is left to apply it"
    where = f"it applies at the next checkpoint (step {at})"
    if run["status"] in TERMINAL_STATES:  # stopped or failed: resumable
        return f"{where} once the run is resumed"
    return where


def eta(store, run: dict, now: float | None = None) -> dict:
    """Elapsed wall time and the expected seconds to the next checkpoint
    and to the end (None while unknown), from the run's own pace: the mean
    wall time between its checkpoints, evaluation included (a checkpoint's
    `wall_time` is seconds of training since the run began, across
    workers). Keys: elapsed_s, eta_checkpoint_s, eta_end_s."""
    now = time.time() if now is None else now
    cks = store.checkpoints(run["id"])
    live = run["status"] in WORKING_STATES
    if not cks:
        return {"elapsed_s": 0.0, "eta_checkpoint_s": None, "eta_end_s": None}
    last = cks[-1]
    since = max(0.0, now - last["created_at"]) if live else 0.0
    elapsed = (last["wall_time"] or 0.0) + since
    if not live or len(cks) < 2:
        return {"elapsed_s": elapsed, "eta_checkpoint_s": None, "eta_end_s": None}
    train = run["config"]["train"]
    cycle = (last["wall_time"] - cks[0]["wall_time"]) / (len(cks) - 1)  # seconds per checkpoint stretch
    total, every = train["steps"], train["checkpoint_every"]
    left = max(0, -(-(total - last["step"]) // every))  # stretches still to train (ceil)
    to_next = max(0.0, cycle - since) if left else 0.0
    return {"elapsed_s": elapsed, "eta_checkpoint_s": to_next,
            "eta_end_s": to_next + max(0, left - 1) * cycle if left else 0.0}
