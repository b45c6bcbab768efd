"""Affinity & objective: which domain feeds which skill (the estimate as a
heatmap with intervals, and its history over checkpoints), pins a person
sets on a link, and the objective the controller steers by (editable while
the run runs; both audited like decisions)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend import charts, decisions
from backend.config import from_dict
from backend.decisions import DecisionError
from backend.objective import for_run
from pages._common import flash, get_store, md, require_run, show_flash, user

ss = st.session_state
store = get_store()
run = require_run(store)
run_id = run["id"]
cfg = from_dict(run["config"])

st.title("Affinity & objective")
show_flash()
skills = [s["name"] for s in store.skills(run_id) if s["kind"] == "steer"]
domains = [d["name"] for d in store.domains(run_id)]
if not skills or not domains:
    st.info("This run has no skills or domains yet: its worker is starting.")
    st.stop()

# -- the affinity estimate ------------------------------------------------------------
st.header("Which domain feeds which skill")
rows = store.affinity(run_id) if hasattr(store, "affinity") else []
if not rows:
    st.info("No affinity estimate yet. The loop records one at every checkpoint: the declared links "
            "(a skill's `domains`, a synthetic domain's `skills`) are its prior, the run's own history refines "
            "it, and a pin below fixes a link. Until then the controller steers by the declared links.")
else:
    frame = pd.DataFrame(rows)[charts.AFFINITY_COLUMNS]
    steps = sorted(frame["step"].unique().tolist())
    step = st.select_slider("Checkpoint", steps, value=steps[-1], key=f"aff_step_{run_id}") \
        if len(steps) > 1 else steps[0]
    st.plotly_chart(charts.affinity_figure(frame, step=step, title="Affinity"), key="affinity_matrix")
    last = frame[frame["step"] == steps[-1]]
    links = [(s, d) for s, d in zip(last["skill"], last["domain"])]
    top = [tuple(r) for r in last.sort_values("mean", ascending=False).drop_duplicates("skill")[["skill", "domain"]]
           .itertuples(index=False)]  # each skill's strongest link
    chosen = st.multiselect("Links over checkpoints", links, default=top, key=f"aff_links_{run_id}",
                            format_func=lambda link: f"{link[1]} -> {link[0]}")
    st.plotly_chart(charts.affinity_history_figure(frame, chosen), key="affinity_history")

measured = store.alignment(run_id)
if measured:
    st.subheader("Gradient alignment")
    st.caption("At each checkpoint: the centred cosine of each domain's gradient (on its held-out sequences) with "
               "each skill's answer gradient (on the items just evaluated), the common part of the domains' "
               "gradients taken out. Positive (red): training on the domain rather than the average domain moves "
               "the model toward the skill's answers. With the links hidden (`controller.links = \"learned\"`) "
               "its positive part at the first checkpoint and the latest three is the affinity's prior (source "
               "`aligned`); with them declared it says how firmly each declaration is held (firm where the two "
               "agree, loose where they do not).")
    aframe = pd.DataFrame(measured)[charts.ALIGNMENT_COLUMNS]
    st.plotly_chart(charts.alignment_figure(aframe), key="alignment_matrix")

# -- pins -----------------------------------------------------------------------------
st.header("Pins")
st.caption("A pin holds a link on (the domain feeds the skill) or off (it does not), whatever the run's history "
           "says; clearing it lets the estimate decide again. Each change is kept in the audit log with your name.")
pins = store.pin_rows(run_id)
if pins:
    st.dataframe(pd.DataFrame(pins)[["skill", "domain", "pinned", "by", "reason"]]
                 .assign(pinned=lambda d: d["pinned"].map({1: "on", 0: "off"})), hide_index=True, key="pins")
else:
    st.caption("No link is pinned.")
left, mid, right = st.columns(3)
pin_skill = left.selectbox("Skill", skills, key=f"pin_skill_{run_id}")
pin_domain = mid.selectbox("Domain", domains, key=f"pin_domain_{run_id}")
pin_state = right.radio("Pin", ["on", "off", "clear"], horizontal=True, key=f"pin_state_{run_id}")
pin_reason = st.text_input("Reason (kept with the pin)", key=f"pin_reason_{run_id}")
if st.button("Save pin", key=f"pin_save_{run_id}", icon=":material/push_pin:"):
    on = {"on": True, "off": False, "clear": None}[pin_state]
    try:
        decisions.pin_link(store, run_id, pin_skill, pin_domain, on, by=user(), reason=pin_reason.strip())
    except DecisionError as e:
        st.error(md(e))
    else:
        flash(md(f"Link {pin_domain} -> {pin_skill} pinned {pin_state}" if on is not None
                 else f"Pin on {pin_domain} -> {pin_skill} cleared"), "info")
        st.rerun()

# -- the objective --------------------------------------------------------------------
st.header("Objective")
saved = store.objective(run_id)
objective = for_run(cfg, saved)
st.caption(("Set on this page" if saved is not None else "From the run's config") + ": "
           + ("; ".join(objective.describe()) or "every skill priority 1, toward the controller's target, "
                                                  "no constraint") + ".")
refused = store.events(run_id, "refused")
if refused:
    st.warning(f"{len(refused)} proposal{'s' if len(refused) > 1 else ''} refused for breaking the objective; "
               f"the last: {md(refused[-1]['message'])}", icon=":material/block:")

current = saved if saved is not None else cfg.to_dict()["objective"]
with st.expander("Edit the objective", icon=":material/flag:", expanded=False):
    st.caption("Applies from the next proposal on. Priority weighs a skill against the others; a target left "
               "empty is the controller's own; a deadline needs both a score and a token count.")
    held = st.checkbox("The held-out mean must not fall", value=current["heldout_mean_nondecreasing"],
                       key=f"obj_heldout_{run_id}")
    goals = {}
    for s in skills:
        g = current["skills"].get(s, {})
        c = st.columns([2, 2, 2, 2, 3], vertical_alignment="bottom")
        c[0].markdown(f"**{s}**")
        goals[s] = {
            "priority": c[1].number_input("priority", min_value=0.0, value=float(g.get("priority", 1.0)), step=0.5,
                                          key=f"obj_priority_{run_id}_{s}"),
            "target": c[2].number_input("target", min_value=0.0, max_value=1.0, value=g.get("target"), step=0.05,
                                        placeholder="controller's", key=f"obj_target_{run_id}_{s}"),
            "at_least": c[3].number_input("at least", min_value=0.0, max_value=1.0, value=g.get("at_least"),
                                          step=0.05, placeholder="no deadline", key=f"obj_at_least_{run_id}_{s}"),
            "by_tokens": c[4].number_input("by tokens", min_value=1, value=g.get("by_tokens"), step=100_000,
                                           placeholder="no deadline", key=f"obj_by_tokens_{run_id}_{s}"),
        }
    shares = {}
    cols = st.columns(min(4, len(domains)))
    for i, d in enumerate(domains):
        b = current["domains"].get(d, {})
        with cols[i % len(cols)]:
            lo, hi = st.slider(f"{d}: share of the mixture", 0.0, 1.0, (float(b.get("min", 0.0)),
                                                                        float(b.get("max", 1.0))),
                               step=0.01, key=f"obj_share_{run_id}_{d}")
        shares[d] = {"min": lo, "max": hi}
    why = st.text_input("Reason", key=f"obj_reason_{run_id}")
    if st.button("Save objective", key=f"obj_save_{run_id}", icon=":material/save:"):
        data = {"heldout_mean_nondecreasing": held,
                "skills": {s: {k: v for k, v in g.items() if v is not None and not (k == "priority" and v == 1.0)}
                           for s, g in goals.items()},
                "domains": {d: b for d, b in shares.items() if (b["min"], b["max"]) != (0.0, 1.0)}}
        data["skills"] = {s: g for s, g in data["skills"].items() if g}
        try:
            oid = decisions.set_objective(store, run_id, data, by=user(), reason=why.strip())
        except DecisionError as e:
            st.error(md(e))
        else:
            flash(f"Objective {oid} saved: the next proposal steers by it.")
            st.rerun()
