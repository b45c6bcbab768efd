"""What every page shares: the store, the selected run, cached frames,
live refresh, flash messages, starting a worker.

Streamlit glue only. Numbers and figures come from backend/ (the store,
backend.charts); nothing here writes SQL.
"""

from __future__ import annotations

import os
import time

import pandas as pd
import streamlit as st

from backend import charts, guard, worker
from backend.store import DEFAULT_DB, Store

DB_ENV = "CLOSED_LOOP_DB"
REFRESH_ENV = "CLOSED_LOOP_REFRESH_S"
LIVE_STATES = ("created", "running", "paused")
PAGES = {
    "capabilities": "pages/capabilities.py",
    "mixture": "pages/mixture.py",
    "compare": "pages/compare.py",
    "schedules": "pages/schedules.py",
    "new_run": "pages/new_run.py",
}


def db_path() -> str:
    """The run database: $CLOSED_LOOP_DB, else runs/closed_loop.db."""
    return os.environ.get(DB_ENV) or DEFAULT_DB


@st.cache_resource(show_spinner=False)
def _open_store(path: str) -> Store:
    return Store(path)


def _ensure_navigation() -> None:
    """Streamlit runs a `pages/` folder next to the entry script as a v1
    multipage app until the first st.navigation call of the server process:
    a first visit straight to /mixture would run the page without app.py
    (no sidebar, no selected run). Such a page run flips the flag, as
    st.navigation does, and reruns, which goes through app.py."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def get_store() -> Store:
    """The one Store of this server process (each thread gets its own
    SQLite connection inside it)."""
    _ensure_navigation()
    return _open_store(db_path())


def user() -> str:
    """Who decides, for the audit log (the sidebar's name field)."""
    return (st.session_state.get("user_name") or "").strip() or "dashboard"


# -- the selected run ----------------------------------------------------------


def selected_run(store: Store) -> dict | None:
    run_id = st.session_state.get("run_id")
    if run_id is None:
        return None
    try:
        return store.run(run_id)
    except KeyError:
        return None


def require_run(store: Store) -> dict:
    """Guard clause for pages that show one run."""
    run = selected_run(store)
    if run is None:
        st.info("No run yet. Start one on the **New run** page, or the demo run from **Home**.")
        st.page_link(PAGES["new_run"], label="New run", icon=":material/add:")
        st.stop()
    return run


def select_run_later(run_id: int) -> None:
    """Make `run_id` the selected run from the next rerun on (the picker
    widget cannot be changed after it was drawn in this run)."""
    st.session_state["pending_run_id"] = run_id


def refresh_every(run: dict) -> float | None:
    """Seconds between live refreshes, or None when the run is not live
    or live refresh is switched off in the sidebar."""
    if not st.session_state.get("live", True) or run["status"] not in LIVE_STATES:
        return None
    return float(os.environ.get(REFRESH_ENV) or 5)


def stop_refresh_when_done(drawn: dict, now: dict) -> None:
    """Inside a live fragment: once the run drawn live has stopped being
    live, redraw the page once so that the fragments stop polling."""
    if refresh_every(drawn) and now["status"] not in LIVE_STATES:
        st.rerun()


def status_text(run: dict) -> str:
    """running / paused / stopped / failed / finished, flagged when the
    worker has stopped beating."""
    status = run["status"]
    if status in ("running", "paused") and not worker.worker_alive(run):
        return f"{status} (no worker)"
    return status


def human(n: float | None) -> str:
    """12,345 -> 12.3k, 102,297,600 -> 102.3M: fits a metric tile."""
    if n is None:
        return "-"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= 10 * size if unit == "k" else abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:,.0f}"


def heartbeat_age(run: dict) -> str:
    if not run["heartbeat"]:
        return "-"
    age = max(0.0, time.time() - run["heartbeat"])
    return f"{age:.0f} s ago" if age < 120 else f"{age / 60:.0f} min ago"


def next_checkpoint(store: Store, run: dict) -> int:
    """The step of the checkpoint where an approved mixture applies: the
    worker applies approvals at each checkpoint's boundary, after its
    evaluation, so a checkpoint reached but not yet through its boundary
    still counts as next."""
    train = run["config"]["train"]
    every, total, step = train["checkpoint_every"], train["steps"], run["step"]
    if step % every == 0 and step < total:
        ck = store.checkpoint(run["id"], step)
        if ck is None or not ck["boundary_done"]:
            return step
    return min(total, (step // every + 1) * every)


def apply_note(store: Store, run: dict) -> str:
    """When an approved mixture takes effect, as a clause."""
    if run["status"] == "finished" or run["step"] >= run["config"]["train"]["steps"]:
        return "the run has finished, so no checkpoint is left to apply it"
    where = f"it applies at the next checkpoint (step {next_checkpoint(store, run)})"
    if run["status"] in ("stopped", "failed"):
        return f"{where} once the run is resumed"
    return where


# -- cached frames ----------------------------------------------------------------


def data_version(store: Store, run_id: int) -> tuple:
    """Changes whenever a checkpoint is added or evaluated: the cache key
    of the measurement frames."""
    cks = store.checkpoints(run_id)
    # the latent estimate is written between `evaluated` and `boundary_done`
    return (len(cks), cks[-1]["step"] if cks else -1, sum(c["evaluated"] for c in cks),
            sum(c["boundary_done"] for c in cks))


@st.cache_data(max_entries=64, show_spinner=False)
def _scores(path: str, run_id: int, version: tuple) -> pd.DataFrame:
    return charts.skill_scores(_open_store(path), run_id)


@st.cache_data(max_entries=64, show_spinner=False)
def _latent(path: str, run_id: int, version: tuple) -> pd.DataFrame:
    return charts.capability_scores(_open_store(path), run_id)


@st.cache_data(max_entries=64, show_spinner=False)
def _losses(path: str, run_id: int, version: tuple) -> pd.DataFrame:
    return charts.domain_losses(_open_store(path), run_id)


def scores(store: Store, run_id: int) -> pd.DataFrame:
    """The raw measured scores (charts.skill_scores), cached per (run, data version)."""
    return _scores(store.path, run_id, data_version(store, run_id))


def latent(store: Store, run_id: int) -> pd.DataFrame:
    """The latent capability estimate (charts.capability_scores), cached."""
    return _latent(store.path, run_id, data_version(store, run_id))


def capability(store: Store, run_id: int) -> pd.DataFrame:
    """What the charts show by default: the latent estimate, or the raw
    scores for a run that has none."""
    frame = latent(store, run_id)
    return frame if not frame.empty else scores(store, run_id)


def losses(store: Store, run_id: int) -> pd.DataFrame:
    return _losses(store.path, run_id, data_version(store, run_id))


# -- messages and actions -----------------------------------------------------------


def flash(message: str, kind: str = "success") -> None:
    """A message shown once, after the rerun that follows an action."""
    st.session_state.setdefault("flash", []).append((kind, message))


def show_flash() -> None:
    for kind, message in st.session_state.pop("flash", []):
        getattr(st, kind)(message)


def start_run(store: Store, cfg, *, replay_schedule: dict | None = None) -> int:
    """Create the run and start its background worker; returns the run id."""
    run_id = worker.create_run(store, cfg, replay_schedule=replay_schedule)
    worker.spawn(store.path, run_id)
    return run_id


def alert_lines(store: Store, run_id: int) -> list[tuple[str, dict]]:
    """Open Goodhart alerts as (skill, alert event), oldest first."""
    return sorted(guard.open_alerts(store, run_id).items(), key=lambda kv: kv[1]["id"])


def run_label(run: dict) -> str:
    # id and name only: they never change, so the picker never shows stale text
    return f"#{run['id']} {run['name']}"


def rerun_when(check, run: dict) -> None:
    """While the run is live, poll `check()` and rerun the page once it is
    true (for guard clauses that wait for the first data)."""
    every = refresh_every(run)
    if not every:
        return

    @st.fragment(run_every=every)
    def _poll():
        if check():
            st.rerun()

    _poll()
