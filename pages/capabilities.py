"""Capabilities at a glance: one small panel per skill (steer and its
held-out variant, their 95% bands, the chance level, a "learning" or "at
chance" badge), or every skill on one chart; Goodhart alerts, a skill x
checkpoint heatmap, learning slopes, one skill's raw measurements. The
settings survive a visit to another page, and `?skill=NAME&run=ID` opens a
skill's drill-down (the link is shown beside it)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend import charts, frames
from backend.explain import LEARNING
from backend.vocab import Z95
from pages._common import (
    alert_lines,
    get_store,
    kept,
    latent,
    losses,
    md,
    refresh_every,
    require_run,
    rerun_when,
    scores,
    stop_refresh_when_done,
)

ss = st.session_state
store = get_store()
run = require_run(store)
run_id = run["id"]

st.title("Capabilities")
skills = store.skills(run_id)
if not skills:
    st.info("This run has not registered its skills yet: its worker is starting.")
    rerun_when(lambda: bool(store.skills(run_id)), run)
    st.stop()

# -- choices ---------------------------------------------------------------------
bases = list(dict.fromkeys(s["base"] for s in skills))
c1, c2, c3 = st.columns([4, 1.6, 1.6], vertical_alignment="bottom")
chosen = c1.multiselect("Skills", bases, placeholder="all skills", **kept(f"cap_skills_{run_id}", bases))
x = c2.radio("x axis", ["tokens_seen", "step"], horizontal=True, format_func=charts.X_LABELS.get,
             **kept("cap_x", "tokens_seen"))
view = c3.radio("Show", ["latent", "raw"], horizontal=True,
                format_func={"latent": "latent estimate", "raw": "raw measurements"}.get,
                help="latent: the capability estimated from all checkpoints so far (a Kalman filter over the "
                     "templates' pooled counts), with the measured means as dots. raw: each checkpoint's mean "
                     f"over prompt templates, ± {Z95} stderr", **kept("cap_view", "latent"))
c4, c5, c6, c7 = st.columns([3.2, 1.6, 1.2, 1.2], vertical_alignment="bottom")
window = c4.slider("Smoothing of raw measurements (checkpoints)", 1, 10, disabled=view != "raw",
                   help="Rolling mean over this many checkpoints; the band narrows accordingly",
                   **kept("cap_smooth", 1))
layout = c5.radio("Layout", ["panels", "one chart"], horizontal=True, **kept("cap_layout", "panels"),
                  help="panels: one small chart per skill; one chart: every skill on one axis")
holdout = c6.toggle("held-out", **kept("cap_holdout", True), help="Draw each skill's held-out variant (dotted)")
band = c7.toggle("95% bands", **kept("cap_band", True))

for skill, alert in alert_lines(store, run_id):
    st.warning(f"**Goodhart alert on {md(skill)}**: {md(alert['message'])} "
               "Acknowledge it on the Mixture & proposals page.", icon=":material/warning:")


# -- live charts --------------------------------------------------------------------
@st.fragment(run_every=refresh_every(run))
def live() -> None:
    stop_refresh_when_done(run, store.run(run_id))
    est = latent(store, run_id)
    chance = frames.chance_levels(store, run_id)
    dots = None
    if view == "latent" and not est.empty:
        shown = est
        dots = est.assign(value=est["raw_mean"])  # the estimate carries each checkpoint's measured mean
    else:
        raw = scores(store, run_id)  # read only when asked for: the largest frame of a run
        if raw.empty:
            st.info("No checkpoint has been evaluated yet.")
            return
        if view == "latent":
            st.caption("This run has no latent estimate: showing the raw measurements.")
        shown = frames.smooth(raw, window)
    badges = frames.skill_badges(shown, chance)
    learning = sum(b == LEARNING for b in badges.values())
    st.markdown(f"**{learning} of {len(badges)} steer skills are learning** (their 95% interval lies above "
                "chance); the others are at chance.",
                help="learning: the whole 95% interval of the newest estimate is above the skill's chance level "
                     "(the score of a uniform guess or of the best constant answer). at chance: the interval "
                     "reaches down to it.")
    if layout == "panels":
        fig = charts.skill_panels_figure(shown, x=x, bases=chosen or bases, holdout=holdout, band=band,
                                         chance=chance, badges=badges)
    else:
        fig = charts.trajectory_figure(shown, x=x, bases=chosen or None, holdout=holdout, band=band, raw=dots,
                                       chance=chance)
    st.plotly_chart(fig, key="cap_trajectories")
    st.caption("Dashed grey (thin dashed in the skill's colour on one chart): the skill's chance level (a uniform "
               "guess, or the best constant answer). Solid: steer skills (the controller sees them). Dotted: "
               "held-out variants (another template and value range, never steered): a steer line rising alone "
               "means teaching to the test.")
    st.plotly_chart(charts.heatmap_figure(shown, x=x), key="cap_heatmap")
    if not est.empty:
        st.subheader("Learning slope at the latest checkpoint")
        last = est[est["step"] == est["step"].max()]
        st.dataframe(last[["skill", "kind", "value", "lo", "hi", "slope", "slope_lo", "slope_hi",
                           "slope_per_token"]].rename(columns={"value": "score"}),
                     hide_index=True, key="cap_slopes",
                     column_config={c: st.column_config.NumberColumn(format="%.3f")
                                    for c in ("score", "lo", "hi", "slope", "slope_lo", "slope_hi")}
                     | {"slope_per_token": st.column_config.NumberColumn("slope per token", format="%.2e")})
    st.plotly_chart(charts.domain_loss_figure(losses(store, run_id), x=x), key="cap_domain_loss")


live()

# -- drill down: one skill's measurements ------------------------------------------
st.header("Measurements of one skill")
names = [s["name"] for s in skills]
drill_key = f"cap_drill_{run_id}"
linked = st.query_params.get("skill")
if linked in names and ss.get("cap_drill_linked") != (run_id, linked):  # a shared link opens its skill once
    ss[drill_key] = ss[f"kept:{drill_key}"] = linked
    ss["cap_drill_linked"] = (run_id, linked)
skill = st.selectbox("Skill", names, **kept(drill_key, names[0]))
st.query_params.update(skill=skill, run=str(run_id))  # the address bar is the link to share
st.caption(f"Link to this skill: `/capabilities?skill={skill}&run={run_id}`")
meta = next(s for s in skills if s["name"] == skill)
st.caption(f"{meta['kind']} skill · base {md(meta['base'])} · fed by domains: {md(', '.join(meta['domains']) or '-')}"
           f" · tasks: {md(', '.join(meta['tasks']))}")
rows = store.measurements(run_id, skill=skill)
if not rows:
    st.info(f"No measurement of {md(skill)} yet.")
    st.stop()
cols = ["step", "tokens_seen", "task", "metric", "value", "stderr", "n", "prompt_variant", "decoding", "scorer"]
table = pd.DataFrame.from_records(rows, columns=cols).sort_values("step", ascending=False)
st.dataframe(table, hide_index=True, key="cap_measurements",
             column_config={"value": st.column_config.NumberColumn(format="%.3f"),
                            "stderr": st.column_config.NumberColumn(format="%.3f")})

steps = table["step"].drop_duplicates().tolist()
step = st.selectbox("Checkpoint (step)", steps, key=f"cap_items_step_{run_id}")
est = next((e for e in store.capability(run_id, skill=skill) if e["step"] == step), None)
st.plotly_chart(charts.facet_figure(frames.facet_frame(rows, step, meta.get("metric")), est,
                                    title=f"{skill} at step {step}: each facet, and the latent estimate"),
                key="cap_facets")
items = [r for task in meta["tasks"] for r in store.samples(run_id, step, task)]
if items:
    right = sum(bool(r["correct"]) for r in items)
    st.caption(f"{right} of {len(items)} items right at step {step}")
    from backend.evaluation.tasks import constant_response

    if (answer := constant_response(items)) is not None:  # a guess, however the score moved
        chance = f", {meta['chance']:.2f}" if meta.get("chance") is not None else ""
        st.caption(f":warning: answers {md(repr(answer))} to every item at step {step} (at chance{chance}): "
                   "one constant answer, no skill")
    st.dataframe(pd.DataFrame.from_records(items, columns=["task", "doc_id", "prompt", "target", "response",
                                                           "correct"]),
                 hide_index=True, key="cap_items")
else:
    st.caption("No per-item results stored for this checkpoint.")
