"""Schedules: download a run's schedule (JSON, trainer blends) and its HTML
report; upload a schedule to start a replay run."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from backend import exports, report, schedule, worker
from backend.config import ConfigError
from pages._common import check_untrusted, flash, get_store, md, require_run, select_run_later, show_flash

ss = st.session_state
store = get_store()
st.title("Schedules")
show_flash()

# -- replay: upload a schedule ---------------------------------------------------------
# Shown first: it needs no run of its own (an empty database can replay a file).
st.header("Replay a schedule")
st.caption("Starts a new run with the schedule's config and seed that follows its weights segment by segment.")
upload = st.file_uploader("Schedule JSON", type=["json"], key="schedule_upload")
if upload is not None:
    try:
        sched = schedule.parse_schedule(upload.getvalue(), untrusted=True)
        check_untrusted(sched["run_config"])  # the replay trains on the file's config: same limits as an upload
    except (schedule.ScheduleError, ConfigError) as e:
        st.error(f"{md(upload.name)} refused: {md(e)}. No run was started.")
    else:
        cfg = sched["run_config"]
        src = sched.get("run") if isinstance(sched.get("run"), dict) else {}
        st.success(f"{md(upload.name)}: {len(sched['segments'])} segments over {cfg.train.steps:,} steps "
                   f"(run {md(src.get('id', '?'))} {md(src.get('name', ''))}, seed {cfg.seed}).")
        if st.button("Start replay run", key="start_replay", type="primary", icon=":material/replay:"):
            try:
                run_id = worker.start_replay(store.path, sched, source=upload.name)
            except ConfigError as e:  # what this machine cannot run (a GPU, a folder, a task's data)
                st.error(f"{md(upload.name)} cannot run here: {md(e)}. No run was started.")
                st.stop()
            select_run_later(run_id)
            flash(f"Replay run #{run_id} started from {md(upload.name)}.")
            st.rerun()

run = require_run(store)
run_id = run["id"]

# -- export --------------------------------------------------------------------------
st.header(f"Schedule of run #{run_id} · {md(run['name'])}")
exported = schedule.export_schedule(store, run_id)
if not exported["segments"]:
    st.info(f"Run #{run_id} has no mixture yet (its worker has not started training): the schedule below has no "
            "segments, and a file downloaded now replays nothing.")
segments = pd.DataFrame([{
    "from step": s["from_step"], "to step": s["to_step"], "from tokens": s["from_tokens"],
    "source": s["source"], "proposal": s["proposal_id"], "approved by": s["approved_by"],
    **{d: s["weights"].get(d) for d in exported["domains"]},
} for s in exported["segments"]])
st.dataframe(segments, hide_index=True, key="schedule_table",
             column_config={d: st.column_config.NumberColumn(format="%.3f") for d in exported["domains"]})

c1, c2, c3 = st.columns(3)
c1.download_button("Download schedule JSON", json.dumps(exported, indent=2), key="dl_schedule",
                   file_name=f"schedule-run{run_id}.json", mime="application/json", icon=":material/download:",
                   on_click="ignore")
# the command line's megatron export (backend.exports): its units, precision and zero-weight rule
c2.download_button("Download Megatron blend", exports.export(exported, "megatron") if exported["segments"] else "",
                   key="dl_blend", file_name=f"megatron-run{run_id}.json", mime="application/json",
                   on_click="ignore", disabled=not exported["segments"],
                   help="Per segment, the --data-path blend of Megatron-LM / GPT-NeoX "
                        "(export-schedule --format megatron)")
# the report inlines plotly.js (~5 MB): build it only when asked
c3.download_button("Download HTML report", lambda: report.render_report(store, run_id), key="dl_report",
                   file_name=f"report-run{run_id}.html", mime="text/html", icon=":material/description:",
                   on_click="ignore", help="Charts, mixture history and decisions; opens without Python")
