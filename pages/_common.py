"""What every page shares: the store, the selected run, cached frames,
live refresh, flash messages, starting a worker.

Streamlit glue only. Numbers, words and figures come from backend/ (the
store, backend.frames, backend.charts, backend.status); nothing here writes
SQL.
"""

from __future__ import annotations

import os
import re
import sqlite3

import pandas as pd
import streamlit as st

from backend import charts, frames, guard, worker
from backend.explain import decision_sentence
from backend.status import is_live
from backend.store import DEFAULT_DB, Store

DB_ENV = "CLOSED_LOOP_DB"
REFRESH_ENV = "CLOSED_LOOP_REFRESH_S"
USER_HEADER_ENV = "CLOSED_LOOP_USER_HEADER"
"""Names the request header that carries the signed-in user when the
dashboard runs behind an authenticating reverse proxy (e.g. X-Forwarded-User
from oauth2-proxy); unset, the sidebar's name field says who decides."""
PAGES = {
    "capabilities": "pages/capabilities.py",
    "training": "pages/training.py",
    "mixture": "pages/mixture.py",
    "affinity": "pages/affinity.py",
    "compare": "pages/compare.py",
    "schedules": "pages/schedules.py",
    "new_run": "pages/new_run.py",
}


def db_path() -> str:
    """The run database: $CLOSED_LOOP_DB, else runs/closed_loop.db."""
    return os.environ.get(DB_ENV) or DEFAULT_DB


@st.cache_resource(show_spinner=False)
def _open_store(path: str) -> Store:
    store = Store(path)
    store.runs()  # an SQLite file of another schema opens, then fails its first query: here, once
    return store


def leave_pages_folder_mode() -> bool:
    """Switch Streamlit out of its v1 multipage mode; True if it was in it.

    Targets Streamlit 1.67 (checked against 1.67.0), and is the one place
    that touches its internals: Streamlit runs a `pages/` folder next to
    the entry script as a v1 multipage app (`PagesManager.
    uses_pages_directory`) until the first st.navigation call of the server
    process, so a first visit straight to /mixture runs the page without
    app.py (no sidebar, no selected run). st.navigation clears the flag;
    this clears it the same way. The dashboard tests call it too
    (conftest_dashboard.navigation_only), because AppTest sets the flag
    again before every run. Remove it when Streamlit drops v1 pages."""
    from streamlit.runtime.pages_manager import PagesManager

    if not PagesManager.uses_pages_directory:
        return False
    PagesManager.uses_pages_directory = False
    return True


def get_store() -> Store:
    """The one Store of this server process (each thread gets its own
    SQLite connection inside it). A database that cannot be opened as one
    (not SQLite, another schema, a folder) stops the page with an error
    naming the file and what is wrong."""
    if leave_pages_folder_mode():
        st.rerun()  # the rerun goes through app.py's st.navigation
    path = db_path()
    try:
        return _open_store(path)
    except sqlite3.Error as e:  # not SQLite, another schema, a folder, unreadable: no page can run
        st.error(f"The run database `{path}` cannot be used: {md(e)}. Point ${DB_ENV} at a Closed Loop database, "
                 "or at a path where a new one can be made.")
        st.stop()


def header_user(headers, header: str | None) -> str | None:
    """The identity a trusted reverse proxy sent in request header `header`
    (None when no header is configured; "" when the request lacks it)."""
    if not header:
        return None
    return (headers.get(header) or "").strip()


def proxy_user() -> str | None:
    """This session's identity from the header named by
    $CLOSED_LOOP_USER_HEADER, or None when that is unset (single user)."""
    return header_user(st.context.headers, os.environ.get(USER_HEADER_ENV, "").strip())


def user() -> str:
    """Who decides, for the audit log: the proxy's identity when configured,
    else the sidebar's name field."""
    identity = proxy_user()
    if identity is not None:
        return identity or "unidentified"  # app.py refuses such a request before any page runs
    return (st.session_state.get("user_name") or "").strip() or "dashboard"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]()<>!|~:$&#])")  # what marks up inline text (links, images, code,
# emphasis, HTML, :directives:, math, entities, headings); CommonMark takes each backslash-escaped literally
_MD_LINE_START = re.compile(r"(?m)^([ \t]*(?:\d+)?)([-+=.)])")  # what starts a list item, a setext heading
# underline or a thematic break at a line's start ("- a", "1. a", "==="); the sign is escaped, not the digits


def md(text) -> str:
    """`text` that a person or a file chose (a run's name, a reason, who
    decided, a skill or domain name, an error quoting them) escaped for the
    st.* calls that render markdown, so that it shows literally: no image,
    link, emphasis, :directive[...], list or heading of its own."""
    return _MD_LINE_START.sub(r"\1\\\2", _MD_SPECIAL.sub(r"\\\1", str(text)))


def check_untrusted(cfg) -> None:
    """Refuse a config that came from the browser (an upload, typed
    folders or step counts, a replayed schedule) when it reaches outside
    the data roots or past the size limits: raises ConfigError naming the
    field. The rule is backend.config.limits.check_untrusted, imported here
    so that the pages call it in one way."""
    from backend.config.limits import check_untrusted as check

    check(cfg)


# -- the selected run ----------------------------------------------------------


def selected_run(store: Store) -> dict | None:
    """The run picked in the sidebar, or None (none picked, or deleted)."""
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
    if not st.session_state.get("live", True) or not is_live(run):
        return None
    return float(os.environ.get(REFRESH_ENV) or 5)


def stop_refresh_when_done(drawn: dict, now: dict) -> None:
    """Inside a live fragment: once the run drawn live has stopped being
    live, redraw the page once so that the fragments stop polling."""
    if refresh_every(drawn) and not is_live(now):
        st.rerun()


# -- cached frames ----------------------------------------------------------------


@st.cache_data(max_entries=64, show_spinner=False)
def _scores(path: str, run_id: int, version: tuple) -> pd.DataFrame:
    return frames.skill_scores(_open_store(path), run_id)


@st.cache_data(max_entries=64, show_spinner=False)
def _latent(path: str, run_id: int, version: tuple) -> pd.DataFrame:
    return frames.capability_scores(_open_store(path), run_id)


@st.cache_data(max_entries=64, show_spinner=False)
def _losses(path: str, run_id: int, version: tuple) -> pd.DataFrame:
    return frames.domain_losses(_open_store(path), run_id)


@st.cache_data(max_entries=64, show_spinner=False)
def _curves(path: str, run_id: int, version: tuple) -> pd.DataFrame:
    return frames.train_curves(_open_store(path), run_id)


def curves(store: Store, run_id: int) -> pd.DataFrame:
    """The training curves (frames.train_curves), cached until the run's
    step moves (the worker logs them as it trains)."""
    run = store.run(run_id)
    return _curves(store.path, run_id, (run["step"], run["status"], run["heartbeat"]))


def scores(store: Store, run_id: int) -> pd.DataFrame:
    """The raw measured scores (frames.skill_scores), cached per (run, data version)."""
    return _scores(store.path, run_id, frames.data_version(store, run_id))


def latent(store: Store, run_id: int) -> pd.DataFrame:
    """The latent capability estimate (frames.capability_scores), cached."""
    return _latent(store.path, run_id, frames.data_version(store, run_id))


def capability(store: Store, run_id: int) -> pd.DataFrame:
    """What the charts show by default: the latent estimate, or the raw
    scores for a run that has none."""
    frame = latent(store, run_id)
    return frame if not frame.empty else scores(store, run_id)


def losses(store: Store, run_id: int) -> pd.DataFrame:
    """Held-out loss per domain (frames.domain_losses), cached."""
    return _losses(store.path, run_id, frames.data_version(store, run_id))


# -- settings that survive navigation ---------------------------------------------------


def _remember(key: str) -> None:
    st.session_state[f"kept:{key}"] = st.session_state[key]


def kept(key: str, default) -> dict:
    """Keyword arguments for a widget whose value survives a visit to
    another page: Streamlit forgets a widget's state once a run does not
    draw it, so its value is copied to a plain key on change and given back
    when the page is drawn again. `st.radio("x", opts, **kept("cap_x", "step"))`."""
    ss = st.session_state
    if key not in ss:
        ss[key] = ss.get(f"kept:{key}", default)
    return {"key": key, "on_change": _remember, "args": (key,)}


# -- messages and actions -----------------------------------------------------------


def flash(message: str, kind: str = "success") -> None:
    """A message shown once, after the rerun that follows an action."""
    st.session_state.setdefault("flash", []).append((kind, message))


def show_flash() -> None:
    """Show (once) the messages `flash` queued before the last rerun."""
    for kind, message in st.session_state.pop("flash", []):  # markdown: user text in it went through md()
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
    """How the run picker names a run: `#3 demo`."""
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


# -- the decision card ------------------------------------------------------------------

FORECAST_CHECKPOINTS = 20  # the decision card scores forecasts over this many recent checkpoints

TERMS = {
    "current": "The weight each domain trains with now: its share of training tokens (weights sum to 1).",
    "proposed": "The weight the proposal would train with from the next checkpoint on.",
    "change": "proposed - current: a share of training tokens moved to (+) or from (-) the domain.",
    "reason": "The strategy's numbers per domain. gain: how much the domain's steer skills need data and can use "
              "it (deficit: distance below the top score; learnable: 1 when the skill has risen beyond noise "
              "above chance, less when it has not), averaged over the skills the domain feeds; mean: that gain "
              "averaged over the current mixture, so a domain above the mean grows. Each skill is given as score "
              "[95% interval] and slope (latent score change per checkpoint).",
    "score now": "The latent capability estimate at the proposal's checkpoint (exact match, 0 to 1).",
    "expected next": "What the strategy forecasts at the next checkpoint if the proposal is applied.",
    "lo": "Lower end of the forecast's 95% interval (see `interval`).",
    "hi": "Upper end of the forecast's 95% interval.",
    "interval": "Where the interval comes from: the forecast's own sd, or the root mean square of this run's recent "
                "forecast errors (outcome - forecast, scored one checkpoint after each proposal applied).",
    "basis": "How the strategy forecast it.",
}
"""Every column of the decision card, defined (shown as tooltips)."""


def _columns(names, formats: dict[str, str]) -> dict:
    return {c: st.column_config.Column(help=TERMS[c]) if c not in formats else
            st.column_config.NumberColumn(format=formats[c], help=TERMS[c]) for c in names if c in TERMS}


def decision_card(store: Store, p: dict) -> None:
    """A proposal's decision, read top to bottom: one sentence that states
    it (explain.decision_sentence), the per-domain detail with every term
    defined in a tooltip, the forecasts with 95% intervals, and how the
    run's past forecasts compared with what followed."""
    pid, run_id = p["id"], p["run_id"]
    skills = store.skills(run_id)
    # the estimates the proposal was made from: written at its checkpoint
    st.markdown(f"**{md(decision_sentence(p, skills, store.capability(run_id, since_step=p['step'])))}**",
                help="Built from the proposal's weight changes and the latest latent estimate of each steer skill "
                     "the domains feed: learning = its 95% interval lies above its chance level.")
    table = frames.weights_table(p["current_weights"], p["weights"])
    left, right = st.columns([2, 3])
    left.dataframe(table, hide_index=True, key=f"table_{pid}",
                   column_config=_columns(table.columns, {"current": "%.3f", "proposed": "%.3f", "change": "%+.3f"}))
    right.plotly_chart(charts.weights_figure(table), key=f"bars_{pid}")
    st.markdown("**Why, per domain**", help=TERMS["reason"])
    st.markdown("\n".join(f"- **{md(d)}**: {md(p['rationale'].get(d, ''))}" for d in p["current_weights"]))
    if not p["forecast"]:
        return
    # the recent forecasts: how the strategy forecasts now, and a chart that stays readable
    every = store.run(run_id)["config"]["train"]["checkpoint_every"]
    errors = store.forecast_errors(run_id, since_step=p["step"] - FORECAST_CHECKPOINTS * every)
    fc = frames.forecast_intervals(p["forecast"], errors)
    if fc["lo"].isna().all():
        fc = fc.drop(columns=["lo", "hi", "interval"])
    left, right = st.columns([3, 2]) if errors else (st.container(), None)
    with left:
        st.caption("Forecast per steer skill, with its 95% interval")
        st.dataframe(fc, hide_index=True, key=f"forecast_{pid}",
                     column_config=_columns(fc.columns, {c: "%.3f" for c in ("score now", "expected next", "lo", "hi")}))
        if not any(f.get("sd") is not None for f in p["forecast"].values()):
            st.caption(f"The strategy gives no sd: each interval is ± 1.96 x the root mean square of past forecast "
                       f"errors ({len(errors)} scored over the last {FORECAST_CHECKPOINTS} checkpoints)." if errors else
                       "No interval yet: the strategy gives no sd, and no forecast of this run has been scored "
                       "(one is scored a checkpoint after its mixture applies).")
    if right is not None:
        right.plotly_chart(charts.forecast_check_figure(
            pd.DataFrame.from_records(errors, columns=["skill", "step", "forecast", "actual"])),
            key=f"forecast_check_{pid}")
