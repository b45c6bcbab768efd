"""Compare runs: per-skill trajectories of several runs on one token axis,
and the tokens each run needed to reach a chosen score."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend import charts, frames
from backend.status import is_live
from backend.vocab import is_holdout
from pages._common import capability, get_store, refresh_every, run_label

DEFAULT_SKILLS = 4

ss = st.session_state
store = get_store()
runs = store.runs()
st.title("Compare runs")
if not runs:
    st.info("No runs yet.")
    st.stop()
if len(runs) < 2:
    st.info("Comparing needs a second run: start one (for example with the `static` strategy, or a replay) "
            "on the **New run** or **Schedules** page.")

labels = {r["id"]: run_label(r) for r in runs}
if "cmp_runs" not in ss:
    first = ss.get("run_id", runs[0]["id"])
    ss["cmp_runs"] = [first] + [r["id"] for r in runs if r["id"] != first][:1]
chosen = st.multiselect("Runs", list(labels), key="cmp_runs", format_func=labels.get)
if not chosen:
    st.info("Choose at least one run.")
    st.stop()

per_run = [capability(store, rid).assign(run=labels[rid]) for rid in chosen]
frame = pd.concat(per_run, ignore_index=True) if per_run else pd.DataFrame()
if frame.empty:
    st.info("None of these runs has an evaluated checkpoint yet.")
    st.stop()

names = sorted(frame["skill"].unique(), key=lambda s: (is_holdout(s), s))
if "cmp_skills" not in ss or not set(ss["cmp_skills"]) <= set(names):
    ss["cmp_skills"] = [s for s in names if not is_holdout(s)][:DEFAULT_SKILLS]
c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
picked = c1.multiselect("Skills", names, key="cmp_skills")
threshold = c2.slider("Score to reach", 0.0, 1.0, 0.5, 0.05, key="cmp_threshold")

live_runs = [store.run(rid) for rid in chosen if is_live(store.run(rid))]


@st.fragment(run_every=refresh_every(live_runs[0]) if live_runs else None)
def live() -> None:
    fresh = pd.concat([capability(store, rid).assign(run=labels[rid]) for rid in chosen], ignore_index=True)
    cols = st.columns(2)
    for i, skill in enumerate(picked):
        cols[i % 2].plotly_chart(charts.compare_figure(fresh, skill), key=f"cmp_{skill}")

    st.header(f"Tokens to reach exact match {threshold:.2f}")
    reach = frames.tokens_to_reach(fresh[fresh["skill"].isin(picked or names)], threshold)
    st.plotly_chart(charts.reach_figure(reach, threshold), key="cmp_reach")
    wide = reach.pivot(index="skill", columns="run", values="tokens_seen").reset_index()
    st.dataframe(wide, hide_index=True, key="cmp_reach_table")
    st.caption("Scores are the latent capability estimates (raw measurements for runs without them). "
               "Empty cells: the run has not reached the score (yet).")


live()
