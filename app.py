"""Closed Loop dashboard: `CLOSED_LOOP_DB=runs/closed_loop.db streamlit run app.py`.

The entry script: navigation, the sidebar (run picker, who decides, live
refresh) and the home view (status, controls, headline charts). Each other
page is one file in pages/. The dashboard only reads the store and writes
decisions and commands into it; the worker process trains.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
import streamlit as st
from PIL import Image

from backend import charts, frames
from backend.config import preset
from backend.decisions import CommandError, send_command
from backend.guard import open_alerts
from backend.status import eta, heartbeat_age, human, is_live, status_text
from backend.store import StoreError
from backend.vocab import WORKING_STATES
from pages._common import (
    PAGES,
    USER_HEADER_ENV,
    capability,
    db_path,
    flash,
    get_store,
    md,
    refresh_every,
    proxy_user,
    require_run,
    run_label,
    select_run_later,
    show_flash,
    start_run,
    stop_refresh_when_done,
    user,
)



def favicon(size: int = 32) -> Image.Image:
    """A blue ring on transparent ground (size x size RGBA), drawn
    here: a :material/...: page icon is fetched from fonts.gstatic.com, and
    the dashboard makes no request outside its own server."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx, yy) / (size / 2)  # 0 at the centre, 1 at the edge
    img = np.zeros((size, size, 4), dtype=np.uint8)
    img[..., :3] = (46, 145, 229)  # the charts' first colour, #2E91E5
    img[..., 3] = np.where((r > 0.55) & (r < 0.95), 255, 0)
    return Image.fromarray(img)  # RGBA: 4 channels of uint8


st.set_page_config(page_title="Closed Loop", page_icon=favicon(), layout="wide")


def phase_line(store, run: dict) -> str:
    """The worker's phase with elapsed time and ETAs, in one line."""
    t = eta(store, run)
    if run["status"] not in WORKING_STATES:
        return f"{run['status']} · {t['elapsed_s']:.0f} s of training in all"
    phase = "paused" if run["status"] == "paused" else (run["phase"] or "starting")
    since = f" for {max(0.0, time.time() - run['phase_started']):.0f} s" if run["phase_started"] else ""
    line = f"Phase: **{phase}**{since} · elapsed {t['elapsed_s']:.0f} s"
    if t["eta_end_s"] is not None:
        line += f" · next checkpoint in ~{t['eta_checkpoint_s']:.0f} s · end in ~{t['eta_end_s']:.0f} s"
    return line


def home() -> None:
    """Home: the demo button on an empty database; else the run's status,
    controls, alerts, headline chart and current mixture."""
    store = get_store()
    show_flash()
    if not store.runs():
        st.title("Closed Loop")
        st.info(f"No runs in `{db_path()}` yet. The demo run trains a small model on the synthetic "
                "skill suite and asks you to approve each new mixture.")
        if st.button("Start the demo run", key="start_demo", type="primary", icon=":material/play_arrow:"):
            cfg = preset("demo").replace(policy="human")
            run_id = start_run(store, cfg)
            select_run_later(run_id)
            flash(f"Demo run #{run_id} started: Home shows what it is doing and when the first checkpoint is due.")
            st.rerun()
        st.stop()

    run = require_run(store)
    run_id = run["id"]
    st.title(f"Run #{run_id} · {md(run['name'])}")

    @st.fragment(run_every=refresh_every(run))
    def live() -> None:
        now = store.run(run_id)
        stop_refresh_when_done(run, now)
        status, pending = status_text(now), len(store.proposals(run_id, status="pending"))
        cols = st.columns(5)
        cols[0].metric("Status", status)
        cols[1].metric("Step", f"{human(now['step'])} / {human(now['total_steps'])}",
                       help=f"{now['step']:,} of {now['total_steps']:,} optimizer steps")
        cols[2].metric("Tokens seen", human(now["tokens_seen"]), help=f"{now['tokens_seen']:,} training tokens")
        working = now["status"] in WORKING_STATES
        cols[3].metric("Heartbeat", heartbeat_age(now) if working else "-", help="the worker's last sign of life")
        cols[4].metric("Throughput", f"{human(now['tokens_per_s'])} tok/s" if working and now["tokens_per_s"]
                       else "-")
        if now["error"]:
            st.error(f"The worker failed: {md(now['error'])}")
        st.caption(phase_line(store, now), help="what the worker is doing; times from the run's own pace")

        left, right = st.columns([3, 2], vertical_alignment="center")
        with left:
            alerts = len(open_alerts(store, run_id))
            if alerts:
                st.badge(f"{alerts} Goodhart alert{'s' if alerts > 1 else ''}: a steer skill outruns its held-out "
                         "variant", icon=":material/warning:", color="red")
            if pending:
                st.badge(f"{pending} proposal{'s' if pending > 1 else ''} waiting for you",
                         icon=":material/inbox:", color="orange")
            else:
                st.badge(f"no pending proposal · policy {now['policy']}", color="gray")
            if pending or alerts:
                st.page_link(PAGES["mixture"], label="Decide on the Mixture & proposals page",
                             icon=":material/arrow_forward:")
        with right:
            controls(now)

        chart, mix = st.columns([3, 2])
        chart.plotly_chart(charts.headline_figure(capability(store, run_id)), key="home_headline")
        try:
            table = frames.weights_table(store.current_weights(run_id))
            mix.plotly_chart(charts.weights_figure(table, title="Current mixture"), key="home_mixture")
        except StoreError:
            mix.info("No mixture yet: the worker is starting.")

    live()


def controls(run: dict) -> None:
    """Pause / resume / stop, enabled as the run's state allows."""
    store, status = get_store(), run["status"]
    cols = st.columns(3)
    wanted = None
    if cols[0].button("Pause", key="cmd_pause", icon=":material/pause:", disabled=status != "running",
                      width="stretch"):
        wanted = "pause"
    if cols[1].button("Resume", key="cmd_resume", icon=":material/play_arrow:", disabled=status != "paused",
                      width="stretch"):
        wanted = "resume"
    if cols[2].button("Stop", key="cmd_stop", icon=":material/stop:",
                      disabled=not is_live(run), width="stretch"):
        wanted = "stop"
    if wanted:
        try:
            send_command(store, run["id"], wanted, by=user())
            st.toast(f"{wanted} sent to run #{run['id']}; the worker obeys within seconds")
        except CommandError as e:
            st.error(str(e))


pages = [
    st.Page(home, title="Home", icon=":material/home:", default=True),
    st.Page(PAGES["capabilities"], title="Capabilities", icon=":material/monitoring:"),
    st.Page(PAGES["training"], title="Training", icon=":material/show_chart:"),
    st.Page(PAGES["mixture"], title="Mixture & proposals", icon=":material/tune:"),
    st.Page(PAGES["affinity"], title="Affinity & objective", icon=":material/hub:"),
    st.Page(PAGES["compare"], title="Compare runs", icon=":material/compare_arrows:"),
    st.Page(PAGES["schedules"], title="Schedules", icon=":material/schedule:"),
    st.Page(PAGES["new_run"], title="New run", icon=":material/add_circle:"),
]
page = st.navigation(pages)

# -- sidebar: run picker, who decides, live refresh ------------------------------
ss = st.session_state
runs = get_store().runs()
identity = proxy_user()  # None: single user, who types a name; else the proxy's signed-in user
if identity is not None:
    ss["user_name"] = identity
if "pending_run_id" in ss:
    ss["run_id"] = ss.pop("pending_run_id")
linked = st.query_params.get("run")  # a shared link (?run=ID) selects its run, once
if linked is not None and linked != ss.get("run_linked"):
    ss["run_linked"] = linked
    if re.fullmatch(r"[0-9]{1,18}", linked) and any(r["id"] == int(linked) for r in runs):  # else ignored
        ss["run_id"] = int(linked)
with st.sidebar:
    if runs:
        labels = {r["id"]: run_label(r) for r in runs}
        if ss.get("run_id") not in labels:
            ss["run_id"] = runs[0]["id"]  # the newest
        st.selectbox("Run", list(labels), format_func=labels.get, key="run_id")
    ss.setdefault("user_name", os.environ.get("USER") or "dashboard")
    st.text_input("Your name (kept with each decision)", key="user_name", disabled=identity is not None,
                  help=f"Set by the proxy's `{os.environ.get(USER_HEADER_ENV)}` header" if identity else None)
    ss.setdefault("live", True)
    st.toggle("Live refresh", key="live", help="Redraw running data every few seconds")
    st.caption(f"Database: `{db_path()}`")
if identity == "":  # the header is configured, but this request did not come through the proxy
    st.error(f"This dashboard takes its user from the `{os.environ.get(USER_HEADER_ENV)}` request header, "
             "which this request lacks: open it through the authenticating proxy.")
    st.stop()

page.run()
