"""Mixture & proposals: current weights, the mixture history, the inbox of
proposals (approve / reject / edit), a manual mixture, the policy switch."""

from __future__ import annotations

import streamlit as st

from backend import charts, frames
from backend.mixture import WeightsError, validate_weights
from backend import decisions, guard
from backend.decisions import DecisionError
from backend.status import apply_note, applies_at
from backend.store import StoreError
from pages._common import (
    alert_lines,
    decision_card,
    flash,
    get_store,
    md,
    refresh_every,
    require_run,
    rerun_when,
    show_flash,
    stop_refresh_when_done,
    user,
)

ss = st.session_state
store = get_store()
run = require_run(store)
run_id = run["id"]

st.title("Mixture & proposals")
show_flash()
try:
    domains = list(store.current_weights(run_id))
except StoreError:
    st.info("This run has no mixture yet: its worker is starting.")
    rerun_when(lambda: bool(store.schedule(run_id)), run)
    st.stop()

# -- policy switch ------------------------------------------------------------
# The widget follows the store: a change made elsewhere (CLI, another tab)
# resets it, and only a person's change here writes.
policy_key, seen_key = f"policy_{run_id}", f"policy_seen_{run_id}"
if policy_key not in ss or ss.get(seen_key) != run["policy"]:
    ss[policy_key] = ss[seen_key] = run["policy"]


def _switch_policy() -> None:
    new = ss[policy_key]
    try:
        decisions.set_policy(store, run_id, new, by=user())
    except DecisionError as e:  # nothing left to steer: the radio goes back to the policy in force
        ss[policy_key] = ss[seen_key] = store.run(run_id)["policy"]
        flash(md(e), "error")
        return
    ss[seen_key] = new
    flash(f"Policy is now **{new}**" + (": proposals are approved as they arrive." if new == "auto"
                                        else ": proposals wait for your decision."))


st.radio("Approval policy", ["human", "auto"], key=policy_key, horizontal=True, on_change=_switch_policy,
         format_func={"human": "human: a person decides", "auto": "auto: approve every proposal"}.get)

# a mixture decided now applies here; None: no checkpoint is left (decisions refuses it)
at = applies_at(store, run)
closed = (f"Run #{run_id} is {run['status']} at step {run['step']}: no checkpoint is left to apply a mixture."
          if at is None else None)


# -- inbox -----------------------------------------------------------------------
def _renormalised(values: dict[str, float]) -> dict[str, float] | None:
    """Show the weights as they would be saved; None (with a message) when
    they cannot be a mixture."""
    try:
        final = validate_weights(values, domains)
    except WeightsError as e:
        st.error(f"Not a mixture: {md(e)}. Nothing will be saved.")
        return None
    st.caption("Saved as (renormalised to sum to 1): " +
               ", ".join(f"{md(d)} **{w:.3f}**" for d, w in final.items()))
    return final


def _weight_inputs(prefix: str, start: dict[str, float]) -> dict[str, float]:
    cols = st.columns(min(4, len(domains)))
    return {d: cols[i % len(cols)].number_input(md(d), value=round(float(start[d]), 4), step=0.01, format="%.4f",
                                                key=f"{prefix}_{d}")
            for i, d in enumerate(domains)}


def _decide(pid: int, action: str, reason_key: str) -> None:
    """Button callback: it runs before the next script run, whether or not
    the card is drawn again, so a proposal decided elsewhere meanwhile meets
    the store's refusal and its message."""
    kw: dict = {}
    if action == "reject":
        kw["reason"] = (ss.get(reason_key) or "").strip() or None
    elif action == "edit":
        kw["weights"] = {d: ss.get(f"edit_{pid}_{d}") for d in domains}
    try:
        decisions.decide(store, pid, action, by=user(), **kw)
    except DecisionError as e:
        flash(md(e), "error")
        return
    if action == "reject":
        ss[reason_key] = ""
        flash(f"Proposal #{pid} rejected; the mixture stays as it is.", "info")
    else:
        verb = "approved" if action == "approve" else "edited and approved"
        flash(f"Proposal #{pid} {verb}; {apply_note(store, store.run(run_id))}.")
        ss.setdefault("awaiting_apply", set()).add(pid)


def proposal_card(p: dict, reason_key: str) -> None:
    pid = p["id"]
    with st.container(border=True):
        st.subheader(f"Proposal #{pid} · {md(p['strategy'])} · from the checkpoint at step {p['step']}")
        decision_card(store, p)

        if closed:
            st.caption(closed + " You can still reject it.")
        approve, reject = st.columns([1, 3], vertical_alignment="bottom")
        approve.button("Approve", key=f"approve_{pid}", type="primary", icon=":material/check:",
                       disabled=bool(closed), on_click=_decide, args=(pid, "approve", reason_key))
        reject.text_input("Reason for rejecting", key=reason_key, placeholder="e.g. the noise domain should stay")
        reject.button("Reject", key=f"reject_{pid}", icon=":material/close:",
                      on_click=_decide, args=(pid, "reject", reason_key))

        with st.expander("Edit the weights, then approve them", icon=":material/edit:"):
            values = _weight_inputs(f"edit_{pid}", p["weights"])
            final = _renormalised(values)
            st.button("Save edited weights", key=f"save_edit_{pid}", disabled=final is None or bool(closed),
                      on_click=_decide, args=(pid, "edit", reason_key))


def inbox() -> None:
    pending = store.proposals(run_id, status="pending")
    ss[f"inbox_{run_id}"] = [p["id"] for p in pending]
    st.header("Inbox")
    if not pending:
        st.info("No proposal is waiting." + (" The policy is auto: proposals are approved as they arrive."
                                             if store.run(run_id)["policy"] == "auto" else ""))
    for i, p in enumerate(pending):
        # The store keeps one pending proposal per run (a new one supersedes
        # the old), so the reason box is keyed by run: what a person is
        # typing survives a newer proposal arriving.
        proposal_card(p, f"reject_reason_{run_id}" if i == 0 else f"reject_reason_{p['id']}")


def _acknowledge(skill: str, note_key: str) -> None:
    try:
        guard.acknowledge(store, run_id, skill, by=user(), step=store.run(run_id)["step"],
                                note=(ss.get(note_key) or "").strip() or None)
    except StoreError as e:
        flash(md(e), "error")
        return
    flash(f"Alert on {md(skill)} acknowledged: the controller may push {md(skill)} again, and the guard now "
          "compares its progress from this step on.", "info")


def alerts() -> None:
    lines = alert_lines(store, run_id)
    if not lines:
        return
    st.header("Goodhart alerts")
    st.caption("A steer skill rose beyond its noise while its held-out variant did not keep up: the loop may be "
               "teaching to the test. Until you acknowledge an alert, the controller stops pushing that skill.")
    for skill, alert in lines:
        with st.container(border=True):
            st.warning(md(alert["message"]), icon=":material/warning:")
            note_key = f"ack_note_{run_id}_{skill}"
            left, right = st.columns([3, 1], vertical_alignment="bottom")
            left.text_input("Note (kept with the acknowledgement)", key=note_key)
            right.button(f"Acknowledge {md(skill)}", key=f"ack_{run_id}_{skill}", on_click=_acknowledge,
                         args=(skill, note_key))


alerts()
inbox()


# -- live: current weights, history, decisions ------------------------------------
@st.fragment(run_every=refresh_every(run))
def live() -> None:
    now = store.run(run_id)
    stop_refresh_when_done(run, now)
    if [p["id"] for p in store.proposals(run_id, status="pending")] != ss.get(f"inbox_{run_id}"):
        st.rerun()  # a proposal arrived or was decided elsewhere: redraw the inbox
    props = store.proposals(run_id)
    by_id = {p["id"]: p for p in props}
    for pid in sorted(ss.get("awaiting_apply", set())):
        p = by_id.get(pid)
        if p and p["status"] == "applied":
            st.success(f"Proposal #{pid} was applied at step {p['applied_step']}.")
        elif p and p["status"] in ("approved", "edited"):
            st.info(f"Proposal #{pid} is {p['status']}; {apply_note(store, now)}.")
        elif p:  # rejected where it would apply (max_epochs), superseded or expired: the log says why
            why = [e["message"] for e in store.events(run_id, p["status"]) if e["proposal_id"] == pid]
            st.warning(f"Proposal #{pid} was not applied: {md(why[-1]) if why else p['status']}.")

    st.header("Mixture")
    left, right = st.columns([2, 3])
    left.plotly_chart(charts.weights_figure(frames.weights_table(store.current_weights(run_id)),
                                            title="Current mixture"), key="current_mixture")
    history = frames.mixture_history(store.schedule(run_id), end_step=max(now["step"], 1))
    right.plotly_chart(charts.mixture_figure(history, end_step=now["step"]), key="mixture_history")

    st.subheader("Data trained, per domain")
    usage = frames.domain_usage(store, run_id)
    if usage.empty:
        st.caption("No checkpoint has counted its data yet.")
    else:
        st.caption("Requested: the share of training tokens the schedule asked for. Sampled: the share drawn. "
                   "Epochs: passes over a text domain's training tokens (blank: an endless stream).")
        st.dataframe(usage, hide_index=True, key="domain_usage", column_config={
            "requested": st.column_config.NumberColumn(format="%.3f"),
            "sampled": st.column_config.NumberColumn(format="%.3f"),
            "tokens": st.column_config.NumberColumn(format="%d"),
            "epochs": st.column_config.NumberColumn(format="%.3f")})

    st.subheader("Decisions")
    table = frames.decisions_table(props)
    if table.empty:
        st.caption("No decision yet.")
    else:
        st.dataframe(table.head(50), hide_index=True, key="decisions",
                     column_config={"decided at": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})


live()


# -- manual mixture ---------------------------------------------------------------
def _save_manual() -> None:
    """Button callback, like _decide: a run that finished meanwhile (the
    form is then not drawn again) meets the store's refusal and its message."""
    values = {d: ss.get(f"manual_{run_id}_{d}") for d in domains}
    why = (ss.get(f"manual_reason_{run_id}") or "").strip() or None
    try:
        pid = decisions.set_mixture(store, run_id, values, by=user(), reason=why)
    except DecisionError as e:
        flash(md(e), "error")
        return
    flash(f"Manual mixture saved as proposal #{pid}; {apply_note(store, store.run(run_id))}.")
    ss.setdefault("awaiting_apply", set()).add(pid)


with st.expander("Set a mixture by hand", icon=":material/tune:"):
    if closed:
        st.caption(closed)
    else:
        st.caption("Stored as an approved `manual` proposal; it applies at the next checkpoint like any other.")
        final = _renormalised(_weight_inputs(f"manual_{run_id}", store.current_weights(run_id)))
        st.text_input("Reason", key=f"manual_reason_{run_id}")
        st.button("Save this mixture", key=f"manual_save_{run_id}", disabled=final is None, on_click=_save_manual)
