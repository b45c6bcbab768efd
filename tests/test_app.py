"""The dashboard under streamlit.testing (AppTest), against the database of
a real tiny run (policy human) a person stopped after its checkpoint at step
20 proposed, so that proposal is pending. Every test that acts checks the
store changed, or did not."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from conftest_dashboard import APP
from test_data_cache import BROKEN, broken_folder
from streamlit.testing.v1 import AppTest

from backend.config import preset
from backend.schedule import export_schedule
from backend.decisions import decide, set_policy
from backend.guard import open_alerts, raise_alert
from backend.store import Store
from pages._common import md

PAGES = ["pages/capabilities.py", "pages/training.py", "pages/mixture.py", "pages/compare.py", "pages/schedules.py",
         "pages/new_run.py"]


def plotly_values(v) -> list:
    """A plotly figure spec's array: plain, or typed (base64 `bdata` with a dtype)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def open_app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def shown(elements) -> str:
    """The elements' text as a reader sees it: texts() with markdown's
    backslash escapes (what md() adds) taken out."""
    return re.sub(r"\\(.)", r"\1", texts(elements))


def frame_with(at: AppTest, column: str):
    """The first st.dataframe on the page that has `column`."""
    return next(df.value for df in at.dataframe if column in df.value.columns)


def pending(store: Store, run_id: int) -> dict:
    (p,) = store.proposals(run_id, status="pending")
    return p


@pytest.fixture
def db(dashboard_db, navigation_only):
    path, run_id = dashboard_db
    return Store(path), run_id


# -- rendering -------------------------------------------------------------------


def test_home_shows_status_controls_and_pending_badge(db):
    store, run_id = db
    at = open_app()
    assert at.sidebar.selectbox(key="run_id").value == run_id
    assert at.title[0].value.startswith(f"Run #{run_id}")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Status"] == "stopped" and metrics["Step"] == "20 / 30"
    assert metrics["Heartbeat"] == "-" and metrics["Throughput"] == "-"  # no worker holds a stopped run
    assert "stopped" in texts(at.caption)
    assert metrics["Tokens seen"] == "7,680"
    # a stopped run cannot be paused, resumed or stopped (run --resume continues it)
    assert all(at.button(key=k).disabled for k in ("cmd_pause", "cmd_resume", "cmd_stop"))
    assert "1 proposal waiting for you" in texts(at.markdown)


def test_a_page_run_before_any_navigation_goes_through_app_py(dashboard_db):
    """What a server's first visit straight to /mixture meets (no fixture
    here): the page reruns through app.py, so the sidebar and run are there."""
    run_id = dashboard_db[1]
    at = open_app("pages/mixture.py")
    assert at.title[0].value == "Mixture & proposals"
    assert at.sidebar.selectbox(key="run_id").value == run_id


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(db, page):
    at = open_app(page)
    assert not at.error, texts(at.error)
    assert at.title, "page has a title"


def test_capabilities_choices_and_drill_down(db):
    store, run_id = db
    at = open_app("pages/capabilities.py")
    assert at.multiselect(key=f"cap_skills_{run_id}").value == ["copy", "add2"]
    assert at.radio(key="cap_view").value == "latent" and at.slider(key="cap_smooth").disabled
    slopes = frame_with(at, "slope_per_token")
    assert set(slopes["skill"]) == {"copy", "add2", "copy_holdout", "add2_holdout"}
    assert (slopes["lo"] <= slopes["score"]).all() and (slopes["score"] <= slopes["hi"]).all()

    at.radio(key="cap_view").set_value("raw")
    at.radio(key="cap_x").set_value("step")
    at.run()
    at.slider(key="cap_smooth").set_value(3)
    at.toggle(key="cap_holdout").set_value(False)
    at.selectbox(key=f"cap_drill_{run_id}").set_value("add2_holdout")
    at.run()
    assert not at.exception, at.exception
    table = frame_with(at, "prompt_variant")
    assert sorted(set(table["step"]), reverse=True) == [20, 10, 0] and set(table["n"]) == {12}
    assert "exact_match" in set(table["metric"])
    items = frame_with(at, "response")
    tasks = next(s["tasks"] for s in store.skills(run_id) if s["name"] == "add2_holdout")
    assert set(items["task"]) == set(tasks) and len(items) == 12 * len(tasks)
    # the spread across facets at the chosen checkpoint, beside the latent estimate
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "each facet" in c.proto.spec)
    assert "add2_holdout at step 20" in spec["layout"]["title"]["text"]
    (points,) = [t for t in spec["data"] if t.get("error_y")]
    latest = table[(table["step"] == 20) & table["metric"].isin(["exact_match", "ll_acc"])]
    assert sorted(plotly_values(points["y"])) == pytest.approx(sorted(latest["value"]))
    assert any("latent" in a["text"] for a in spec["layout"]["annotations"])


def spec_of(at: AppTest, key: str) -> dict:
    """The plotly figure spec of the chart drawn with `key`."""
    return next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.proto.id.endswith(key)
                or key in c.proto.id)


def test_capabilities_panels_badges_and_chance(db):
    store, run_id = db
    at = open_app("pages/capabilities.py")
    assert at.radio(key="cap_layout").value == "panels"
    spec = spec_of(at, "cap_trajectories")
    titles = [a["text"] for a in spec["layout"]["annotations"]]
    assert [t.split("</b>")[0] for t in titles] == ["<b>copy", "<b>add2"]  # every skill, one panel each
    assert all("learning" in t or "at chance" in t for t in titles)
    chance = {s["name"]: s["chance"] for s in store.skills(run_id)}
    lines = {t["name"]: plotly_values(t["y"]) for t in spec["data"] if t["name"].endswith(" chance")}
    assert lines == {f"{s} chance": [chance[s]] * 2 for s in ("copy", "add2")}
    assert "steer skills are learning" in texts(at.markdown)


def test_capabilities_settings_survive_navigation(db):
    store, run_id = db
    at = open_app("pages/capabilities.py")
    at.radio(key="cap_x").set_value("step")
    at.radio(key="cap_layout").set_value("one chart")
    at.multiselect(key=f"cap_skills_{run_id}").set_value(["add2"])
    at.run()
    at.switch_page("pages/mixture.py").run()
    at.switch_page("pages/capabilities.py").run()
    assert not at.exception, at.exception
    assert at.radio(key="cap_x").value == "step" and at.radio(key="cap_layout").value == "one chart"
    assert at.multiselect(key=f"cap_skills_{run_id}").value == ["add2"]


def test_a_shared_link_opens_the_skills_drill_down(db):
    store, run_id = db
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["skill"] = "add2_holdout"
    at.query_params["run"] = str(run_id)
    at.run()
    at.switch_page("pages/capabilities.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key=f"cap_drill_{run_id}").value == "add2_holdout"
    assert f"?skill=add2_holdout&run={run_id}" in texts(at.caption)
    at.selectbox(key=f"cap_drill_{run_id}").set_value("copy").run()  # the link follows the choice
    assert at.query_params["skill"] == "copy" and at.selectbox(key=f"cap_drill_{run_id}").value == "copy"


@pytest.mark.parametrize("linked", ["\u00b2", "1" * 5000, "abc", "-1", " 1"])
def test_a_shared_link_with_no_run_id_is_ignored(db, linked):
    """?run= that is no plain run id (a superscript digit, past int's digit
    limit, a word) selects nothing and raises nothing."""
    store, run_id = db
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["run"] = linked
    at.run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="run_id").value == run_id


EVIL = "![x](http://e/p.png) *bold* :red[hi]"
EVIL_SHOWN = r"\!\[x\]\(http\://e/p.png\) \*bold\* \:red\[hi\]"  # md(): each mark escaped, shown literally


def test_names_from_configs_and_files_are_shown_literally_not_as_markdown(db, spawned):
    """A run's name (free text in an uploaded config or a schedule) reaches
    the title, headers and messages escaped: no image is fetched, no link or
    emphasis drawn."""
    store, run_id = db
    evil_run = store.create_run(preset("tiny").replace(name=EVIL).to_dict())
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="run_id").value == evil_run  # the newest
    assert at.title[0].value == f"Run #{evil_run} · {EVIL_SHOWN}"
    at.switch_page("pages/schedules.py").run()
    assert f"Schedule of run #{evil_run} · {EVIL_SHOWN}" in texts(at.header)
    data = export_schedule(store, run_id)
    data["run"]["name"] = EVIL
    at.file_uploader(key="schedule_upload").set_value(("s.json", json.dumps(data).encode(), "application/json")).run()
    assert EVIL_SHOWN in texts(at.success) and EVIL not in texts(at.success)


@pytest.mark.parametrize("text, escaped", [
    ("- a", r"\- a"), ("+ a", r"\+ a"), ("1. a", r"1\. a"), ("12) a", r"12\) a"), ("===", r"\==="),
    ("ok\n  - b", "ok\n  \\- b"), ("x - y 0.5", "x - y 0.5"),
])
def test_md_escapes_what_starts_a_list_or_heading_at_a_line_start(text, escaped):
    """A name or message that begins like a list item or a setext underline
    shows as typed: the sign is escaped at each line's start, nowhere else."""
    assert md(text) == escaped
    assert re.sub(r"\\(.)", r"\1", md(text)) == text


def test_training_page_draws_the_logged_curves(db):
    store, run_id = db
    logged = store.train_log(run_id)
    assert [r["step"] for r in logged] == list(range(1, 21))  # the tiny run logs every step
    at = open_app("pages/training.py")
    loss = spec_of(at, "train_loss")
    assert plotly_values(loss["data"][0]["y"]) == pytest.approx([r["loss"] for r in logged])  # logged, faint
    assert len(loss["data"]) == 2  # and its EMA (smoothing 0.6 by default)
    for key in ("train_lr", "train_grad_norm", "train_throughput", "train_domain_loss", "train_tokens_per_domain"):
        assert not spec_of(at, key)["layout"].get("annotations"), f"{key} is empty"
    at.slider(key="train_smoothing").set_value(0.0)
    at.toggle(key="train_log_y").set_value(True)
    at.run()
    loss = spec_of(at, "train_loss")
    assert len(loss["data"]) == 1 and loss["layout"]["yaxis"]["type"] == "log"


def test_the_proposal_card_states_the_decision_first(db):
    store, run_id = db
    p = pending(store, run_id)
    store.add_forecast_errors(run_id, [{"proposal_id": p["id"], "skill": "copy", "step": 20, "proposal_step": 10,
                                        "applied_step": 10, "score": 0.1, "forecast": 0.2, "actual": 0.3,
                                        "error": 0.1, "forecast_change": 0.1, "actual_change": 0.2, "basis": "x"}])
    at = open_app("pages/mixture.py")
    sentence = next(m.value for m in at.markdown if m.value.startswith(("**Moves", "**Keeps")))
    up = max(p["weights"], key=lambda d: p["weights"][d] - p["current_weights"][d])
    assert sentence.startswith(f"**Moves {p['weights'][up] - p['current_weights'][up]:+.2f} to {up}")
    fc = frame_with(at, "expected next")
    assert list(fc.columns) == ["skill", "score now", "expected next", "lo", "hi", "interval", "basis"]
    assert fc["interval"].str.startswith("RMS of 1 past errors").all() and (fc["lo"] <= fc["expected next"]).all()
    check = spec_of(at, f"forecast_check_{p['id']}")
    assert plotly_values(check["data"][1]["x"]) == [0.2] and plotly_values(check["data"][1]["y"]) == [0.3]


# -- deciding proposals ----------------------------------------------------------------


def test_approve_says_where_it_applies(db):
    store, run_id = db
    p = pending(store, run_id)
    at = open_app("pages/mixture.py")
    at.sidebar.text_input(key="user_name").set_value("ada").run()
    at.button(key=f"approve_{p['id']}").click().run()
    assert not at.exception, at.exception
    now = store.proposal(p["id"])
    assert now["status"] == "approved" and now["decided_by"] == "ada"
    assert now["final_weights"] == p["weights"]
    # stopped before its step-20 boundary was through: that boundary, redone
    # on resume, applies it
    assert f"Proposal #{p['id']} approved" in texts(at.success)
    assert "applies at the next checkpoint (step 20) once the run is resumed" in texts(at.success)
    assert [e["actor"] for e in store.events(run_id, kind="approved")] == ["ada"]


def test_approve_on_a_live_run_names_the_next_checkpoint_then_shows_it_applied(db):
    store, run_id = db
    store.update_run(run_id, status="running", step=14)
    p = pending(store, run_id)
    at = open_app("pages/mixture.py")
    at.button(key=f"approve_{p['id']}").click().run()
    assert "applies at the next checkpoint (step 20)" in texts(at.success)
    assert f"Proposal #{p['id']} is approved" in texts(at.info)
    # the worker reaches the checkpoint and applies it
    store.apply_approved(run_id, step=20, tokens_at=7680)
    at.run()
    assert f"Proposal #{p['id']} was applied at step 20." in texts(at.success)


def test_reject_keeps_the_reason_and_the_mixture(db):
    store, run_id = db
    p = pending(store, run_id)
    before = store.current_weights(run_id)
    at = open_app("pages/mixture.py")
    at.text_input(key=f"reject_reason_{run_id}").set_value("noise should stay")
    at.button(key=f"reject_{p['id']}").click().run()
    now = store.proposal(p["id"])
    assert now["status"] == "rejected" and now["decision_reason"] == "noise should stay"
    assert store.current_weights(run_id) == before
    assert "rejected" in texts(at.info)


def test_edit_shows_renormalised_weights_then_saves_them(db):
    store, run_id = db
    p = pending(store, run_id)
    domains = list(p["current_weights"])
    at = open_app("pages/mixture.py")
    for i, d in enumerate(domains):
        at.number_input(key=f"edit_{p['id']}_{d}").set_value(2.0 if i == 0 else 1.0)
    at.run()
    share = 2 / (len(domains) + 1)
    assert f"{domains[0]} **{share:.3f}**" in texts(at.caption)
    assert not at.button(key=f"save_edit_{p['id']}").disabled
    at.button(key=f"save_edit_{p['id']}").click().run()
    now = store.proposal(p["id"])
    assert now["status"] == "edited"
    assert math.isclose(now["final_weights"][domains[0]], share)
    assert math.isclose(sum(now["final_weights"].values()), 1.0)


@pytest.mark.parametrize("bad, message", [("negative", "is negative"), ("zeros", "all weights are zero")])
def test_edit_refuses_weights_that_are_no_mixture(db, bad, message):
    store, run_id = db
    p = pending(store, run_id)
    domains = list(p["current_weights"])
    values = {"negative": [-0.5] + [1.0] * (len(domains) - 1), "zeros": [0.0] * len(domains)}[bad]
    at = open_app("pages/mixture.py")
    for d, v in zip(domains, values):
        at.number_input(key=f"edit_{p['id']}_{d}").set_value(v)
    at.run()
    assert not at.exception, at.exception
    assert "Not a mixture" in texts(at.error) and message in texts(at.error)
    assert at.button(key=f"save_edit_{p['id']}").disabled
    assert store.proposal(p["id"])["status"] == "pending"
    assert store.proposal(p["id"])["version"] == p["version"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_edit_inputs_cannot_hold_non_finite_weights(db, value):
    """st.number_input refuses NaN and infinities itself (it keeps the last
    finite value), so nothing non-finite reaches the store."""
    store, run_id = db
    p = pending(store, run_id)
    first = list(p["current_weights"])[0]
    at = open_app("pages/mixture.py")
    at.number_input(key=f"edit_{p['id']}_{first}").set_value(value).run()
    assert not at.exception, at.exception
    assert math.isfinite(at.number_input(key=f"edit_{p['id']}_{first}").value)
    at.button(key=f"save_edit_{p['id']}").click().run()
    assert all(math.isfinite(w) for w in store.proposal(p["id"])["final_weights"].values())


def test_a_decision_made_elsewhere_meanwhile_is_refused_with_its_message(db):
    store, run_id = db
    p = pending(store, run_id)
    at = open_app("pages/mixture.py")
    decide(store, p["id"], "reject", by="grace", reason="other tab")  # another person, first
    at.button(key=f"approve_{p['id']}").click().run()
    assert not at.exception, at.exception
    assert f"proposal {p['id']} is rejected by grace, not pending" in texts(at.error)
    assert not [b for b in at.button if b.key == f"approve_{p['id']}"]  # the card is gone
    now = store.proposal(p["id"])
    assert now["status"] == "rejected" and now["decided_by"] == "grace"


def test_manual_mixture_is_validated_then_stored(db):
    store, run_id = db
    domains = list(store.current_weights(run_id))
    n_before = len(store.proposals(run_id))
    at = open_app("pages/mixture.py")
    for d in domains:
        at.number_input(key=f"manual_{run_id}_{d}").set_value(0.0)
    at.run()
    assert "Not a mixture: all weights are zero" in shown(at.error)
    assert at.button(key=f"manual_save_{run_id}").disabled
    assert len(store.proposals(run_id)) == n_before

    at.number_input(key=f"manual_{run_id}_{domains[0]}").set_value(3.0)
    at.number_input(key=f"manual_{run_id}_{domains[1]}").set_value(1.0)
    at.text_input(key=f"manual_reason_{run_id}").set_value("more strings")
    at.run()
    at.button(key=f"manual_save_{run_id}").click().run()
    manual = store.proposals(run_id)[-1]
    assert manual["strategy"] == "manual" and manual["status"] == "approved"
    assert manual["final_weights"][domains[0]] == 0.75 and manual["decision_reason"] == "more strings"
    assert "Manual mixture saved" in texts(at.success)


def test_a_manual_mixture_saved_after_the_run_finished_is_refused_with_its_message(db):
    store, run_id = db
    n_before = len(store.proposals(run_id))
    at = open_app("pages/mixture.py")
    store.update_run(run_id, status="finished", step=30)  # meanwhile, the worker finished
    at.button(key=f"manual_save_{run_id}").click().run()
    assert not at.exception, at.exception
    assert f"manual mixture refused: run {run_id} is finished at step 30" in shown(at.error)
    assert len(store.proposals(run_id)) == n_before


def test_a_run_with_no_checkpoint_left_is_offered_no_mixture(db):
    store, run_id = db
    store.update_run(run_id, status="finished", step=30)
    p = pending(store, run_id)
    at = open_app("pages/mixture.py")
    closed = f"Run #{run_id} is finished at step 30: no checkpoint is left to apply a mixture."
    assert closed in texts(at.caption)
    assert not [b for b in at.button if b.key == f"manual_save_{run_id}"]
    assert at.button(key=f"approve_{p['id']}").disabled and at.button(key=f"save_edit_{p['id']}").disabled
    assert store.proposal(p["id"])["status"] == "pending"


def test_policy_switch_writes_once_and_follows_the_store(db):
    store, run_id = db
    at = open_app("pages/mixture.py")
    radio = at.radio(key=f"policy_{run_id}")
    assert radio.value == "human"
    radio.set_value("auto").run()
    assert store.run(run_id)["policy"] == "auto"
    assert [e["actor"] for e in store.events(run_id, kind="policy")] == ["dashboard"]
    # a change from elsewhere (the CLI) is shown, and not written back
    set_policy(store, run_id, "human", by="cli")
    at.run()
    assert at.radio(key=f"policy_{run_id}").value == "human"
    assert len(store.events(run_id, kind="policy")) == 2


def test_a_stale_policy_radio_writes_nothing_and_a_finished_run_takes_no_policy(db):
    store, run_id = db
    stale, other = open_app("pages/mixture.py"), open_app("pages/mixture.py")
    other.radio(key=f"policy_{run_id}").set_value("auto").run()
    stale.radio(key=f"policy_{run_id}").set_value("auto").run()  # drawn before the switch: "human -> auto" again
    assert [e["message"] for e in store.events(run_id, kind="policy")] == ["policy human -> auto"]
    store.update_run(run_id, status="finished", step=30)
    at = open_app("pages/mixture.py")
    at.radio(key=f"policy_{run_id}").set_value("human").run()
    assert not at.exception, at.exception
    assert f"run {run_id} is finished at step 30 of 30; no checkpoint is left to steer" in texts(at.error)
    assert store.run(run_id)["policy"] == "auto" and len(store.events(run_id, kind="policy")) == 1
    assert at.radio(key=f"policy_{run_id}").value == "auto" and not at.success


def test_goodhart_alert_is_shown_and_acknowledged(db):
    store, run_id = db
    raise_alert(store, run_id, step=20, skill="copy", message="Goodhart guard: copy rose +0.40, held-out +0.05.",
                      data={"steer_rise": 0.4, "holdout_rise": 0.05})
    at = open_app()
    assert "1 Goodhart alert" in texts(at.markdown)
    at.switch_page("pages/capabilities.py").run()
    assert "Goodhart alert on copy" in texts(at.warning)
    at.switch_page("pages/mixture.py").run()
    assert "copy rose +0.40" in texts(at.warning)
    at.text_input(key=f"ack_note_{run_id}_copy").set_value("the template is fine")
    at.button(key=f"ack_{run_id}_copy").click().run()
    assert not at.exception, at.exception
    assert open_alerts(store, run_id) == {}
    (ack,) = store.events(run_id, kind="goodhart_ack")
    assert ack["actor"] == "dashboard" and "the template is fine" in ack["message"]
    assert "acknowledged" in texts(at.info)


def test_pause_sends_a_command_to_a_running_worker(db):
    store, run_id = db
    store.update_run(run_id, status="running")
    at = open_app()
    assert not at.button(key="cmd_pause").disabled and at.button(key="cmd_resume").disabled
    at.button(key="cmd_pause").click().run()
    assert not at.exception, at.exception
    assert [e["message"] for e in store.events(run_id, kind="command")] == ["pause requested"]


# -- schedules: export, replay upload --------------------------------------------------


def test_schedule_upload_starts_a_replay_run(db, spawned):
    store, run_id = db
    data = json.dumps(export_schedule(store, run_id)).encode()
    at = open_app("pages/schedules.py")
    at.file_uploader(key="schedule_upload").set_value(("schedule.json", data, "application/json")).run()
    assert not at.error, texts(at.error)
    at.button(key="start_replay").click().run()
    assert not at.exception, at.exception
    runs = store.runs()
    assert len(runs) == 2
    new = runs[0]
    assert new["name"] == "replay-tiny" and new["replay_schedule"]["segments"]
    assert spawned == [(store.path, new["id"])]
    assert at.sidebar.selectbox(key="run_id").value == new["id"]  # the new run is selected


def test_a_run_with_no_schedule_yet_says_so_on_the_schedules_page(db):
    store, _ = db
    bare = store.create_run(preset("tiny").to_dict())  # not started: no mixture, no segment
    at = open_app("pages/schedules.py")
    assert at.sidebar.selectbox(key="run_id").value == bare
    assert f"Run #{bare} has no mixture yet" in texts(at.info)


def test_the_megatron_download_is_the_command_lines_megatron_export(db, monkeypatch):
    """The page's Megatron file is `export-schedule --format megatron`'s text
    (a second renderer wrote 6 decimals and kept zero-weight domains);
    a run with no segment yet has nothing to download."""
    from streamlit.delta_generator import DeltaGenerator

    from backend.exports import export, parse

    offered = {}
    download_button = DeltaGenerator.download_button

    def spy(self, label, data, *args, **kwargs):
        offered[kwargs["key"]] = (data, kwargs.get("disabled"))
        return download_button(self, label, data, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", spy)
    store, run_id = db
    open_app("pages/schedules.py")
    exported = export_schedule(store, run_id)
    assert offered["dl_blend"] == (export(exported, "megatron"), False)
    assert parse(offered["dl_blend"][0], "megatron")[0] == pytest.approx(exported["segments"][0]["weights"], abs=1e-12)
    store.create_run(preset("tiny").to_dict())  # not started: no segment
    open_app("pages/schedules.py")
    assert offered["dl_blend"] == ("", True)


@pytest.mark.parametrize("broken, field", [
    (lambda d: d["segments"][0]["weights"].update(strings=-1.0), "segments[0].weights.strings"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d["config"]["train"].update(lr="fast"), "config.train.lr"),
    (None, "not valid JSON"),
])
def test_broken_schedule_is_refused_naming_the_field(db, spawned, broken, field):
    store, run_id = db
    data = export_schedule(store, run_id)
    if broken is None:
        raw = b"{ not json"
    else:
        broken(data)
        raw = json.dumps(data).encode()
    at = open_app("pages/schedules.py")
    at.file_uploader(key="schedule_upload").set_value(("bad.json", raw, "application/json")).run()
    assert not at.exception, at.exception
    assert field in shown(at.error) and "No run was started" in shown(at.error)
    assert not [b for b in at.button if b.key == "start_replay"]
    assert len(store.runs()) == 1 and spawned == []


# -- new runs ----------------------------------------------------------------------------


def test_new_run_from_a_preset_starts_a_worker(db, spawned):
    store, run_id = db
    at = open_app("pages/new_run.py")
    at.selectbox(key="new_preset").set_value("tiny")
    at.radio(key="new_policy").set_value("auto")
    at.number_input(key="new_seed").set_value(7)
    at.text_input(key="new_name").set_value("baseline")
    at.selectbox(key="new_strategy").set_value("static")
    at.run()
    at.button(key="new_start").click().run()
    assert not at.exception, at.exception
    new = store.runs()[0]
    assert new["id"] != run_id and new["name"] == "baseline" and new["policy"] == "auto"
    assert new["config"]["seed"] == 7 and new["config"]["controller"]["strategy"] == "static"
    assert spawned == [(store.path, new["id"])]


def test_new_run_refuses_a_bad_data_folder_and_a_bad_config(db, spawned, tmp_path):
    store, run_id = db
    at = open_app("pages/new_run.py")
    at.text_area(key="new_folders").set_value(str(tmp_path / "missing")).run()
    at.button(key="new_start").click().run()
    assert f"data.domains[6].path: no such folder '{tmp_path / 'missing'}'" in shown(at.error)
    assert "No run was started" in shown(at.error)
    folder, said = broken_folder(tmp_path, "non-JSON line")
    at.text_area(key="new_folders").set_value(folder).run()
    at.button(key="new_start").click().run()
    assert not at.exception, at.exception
    assert f"data.domains[6]: {said}" in shown(at.error) and "No run was started" in shown(at.error)
    assert len(store.runs()) == 1 and spawned == []

    at.radio(key="new_source").set_value("file").run()
    bad = json.dumps({"preset": "tiny", "train": {"steps": -5}}).encode()
    at.file_uploader(key="new_config_file").set_value(("cfg.json", bad, "application/json")).run()
    assert "train.steps" in shown(at.error)
    assert len(store.runs()) == 1 and spawned == []


@pytest.mark.parametrize("kind", BROKEN)
def test_start_run_refuses_a_broken_data_file_before_creating_the_run(kind, spawned, tmp_path):
    """pages._common.start_run, what the New run page and a replay upload
    call: a folder domain with a file the worker cannot read is refused
    naming the file; no run row, no worker."""
    from backend.config import ConfigError
    from pages._common import start_run

    folder, said = broken_folder(tmp_path, kind)
    cfg = preset("tiny").to_dict()
    cfg["data"]["domains"].append({"name": "mine", "source": "folder", "path": folder})
    store = Store(tmp_path / "cl.db")
    with pytest.raises(ConfigError) as e:
        start_run(store, preset("tiny").replace(data=cfg["data"]))
    assert f"data.domains[6]: {said}" in str(e.value), str(e.value)
    assert store.runs() == [] and spawned == []


def test_new_run_from_a_toml_config(db, spawned):
    store, run_id = db
    at = open_app("pages/new_run.py")
    at.radio(key="new_source").set_value("file").run()
    toml = b'preset = "tiny"\nname = "from-toml"\nseed = 3\n'
    at.file_uploader(key="new_config_file").set_value(("cfg.toml", toml, "application/toml")).run()
    at.button(key="new_start").click().run()
    assert not at.exception, at.exception
    new = store.runs()[0]
    assert new["name"] == "from-toml" and new["config"]["seed"] == 3 and new["policy"] == "human"


def _not_sqlite(path: Path) -> None:
    path.write_bytes(b"not a database " * 100)


def _other_schema(path: Path) -> None:
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE runs (x)")


@pytest.mark.parametrize("make, what", [(_not_sqlite, "file is not a database"),
                                        (_other_schema, "no such column"),
                                        (Path.mkdir, "unable to open database file")])
def test_a_database_that_is_no_run_store_is_named_not_a_traceback(tmp_path, monkeypatch, navigation_only, make, what):
    path = tmp_path / "cl.db"
    make(path)
    monkeypatch.setenv("CLOSED_LOOP_DB", str(path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    assert f"The run database `{path}` cannot be used: {what}" in shown(at.error)


def test_empty_database_offers_the_demo_run(tmp_path, monkeypatch, navigation_only, spawned):
    db = tmp_path / "empty.db"
    monkeypatch.setenv("CLOSED_LOOP_DB", str(db))
    at = open_app()
    at.button(key="start_demo").click().run()
    assert not at.exception, at.exception
    (run,) = Store(db).runs()
    assert run["name"] == "demo" and run["policy"] == "human"
    assert spawned == [(str(db), run["id"])]
    for page in PAGES:  # every page copes with a run that has no data yet
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)


# -- safe by default ---------------------------------------------------------------------


def test_streamlit_config_binds_loopback_and_calls_no_one():
    """.streamlit/config.toml (read by `streamlit run` from the repository
    root): loopback only, no usage statistics, no Deploy button."""
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["toolbarMode"] in ("minimal", "viewer")
    assert cfg["client"]["showErrorLinks"] is False


def test_served_dashboard_listens_on_loopback_only(tmp_path):
    """`streamlit run app.py` with no address flag: the socket is bound to
    127.0.0.1, not to every interface."""
    port = free_port()
    env = {**os.environ, "CLOSED_LOOP_DB": str(tmp_path / "cl.db")}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not listening(port) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.3)
        assert listening(port) == {"127.0.0.1"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def listening(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port` (from
    /proc/net/tcp and tcp6: state 0A is LISTEN)."""
    out = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                raw = bytes.fromhex(addr)
                # /proc stores each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                out.add(socket.inet_ntop(family, raw))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_uploaded_config_reaching_outside_the_data_roots_is_refused(db, spawned, tmp_path, monkeypatch):
    store, run_id = db
    monkeypatch.setenv("CLOSED_LOOP_DATA_ROOTS", str(tmp_path / "data"))
    at = open_app("pages/new_run.py")
    at.radio(key="new_source").set_value("file").run()
    cfg = preset("tiny").to_dict()
    cfg["data"]["domains"].append({"name": "root", "source": "folder", "path": "/"})
    at.file_uploader(key="new_config_file").set_value(
        ("cfg.json", json.dumps(cfg).encode(), "application/json")).run()
    assert not at.exception, at.exception
    n = len(cfg["data"]["domains"]) - 1
    assert "refused" in shown(at.error) and f"data.domains[{n}].path" in shown(at.error)
    assert not [b for b in at.button if b.key == "new_start"]  # refused as it is read: nothing to start
    assert len(store.runs()) == 1 and spawned == []


def test_an_upload_learns_nothing_of_folders_outside_the_data_roots(db, spawned, tmp_path, monkeypatch):
    """Two uploads naming a model folder outside the data roots, one that
    exists (/usr/lib) and one that does not, get the same refusal; inside
    the roots, a folder that is not there is still named as missing."""
    store, run_id = db
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("CLOSED_LOOP_DATA_ROOTS", str(root))
    at = open_app("pages/new_run.py")
    at.radio(key="new_source").set_value("file").run()

    def upload(path: str) -> str:
        cfg = json.dumps({"preset": "tiny", "model": {"pretrained": path}}).encode()
        at.file_uploader(key="new_config_file").set_value(("cfg.json", cfg, "application/json")).run()
        assert not at.exception, at.exception
        return shown(at.error).replace(repr(path), "PATH")

    assert Path("/usr/lib").is_dir() and not Path("/usr/lib/no-such-folder").exists()
    there, absent = upload("/usr/lib"), upload("/usr/lib/no-such-folder")
    assert there == absent and "model.pretrained: PATH is outside the data roots" in there, (there, absent)
    assert "model.pretrained: no such folder PATH" in upload(str(root / "absent"))
    assert len(store.runs()) == 1 and spawned == []


MARKED_UP = "**x** ![i](http://e/x.png) [a](javascript:alert(1))"


def assert_literal(elements, value: str) -> None:
    """`value` reaches the markdown source escaped and shows as typed."""
    assert value not in texts(elements) and md(value) in texts(elements), texts(elements)
    assert value in shown(elements), shown(elements)


def test_uploaded_and_typed_values_in_messages_are_shown_literally(db, spawned, tmp_path, monkeypatch):
    """Refusals quote what was typed or uploaded (a folder, a file's name, a
    config value, who decided); st.error shows each as text: no image is
    fetched, no link or emphasis drawn."""
    store, run_id = db
    monkeypatch.setenv("CLOSED_LOOP_DATA_ROOTS", str(tmp_path))
    at = open_app("pages/new_run.py")
    at.text_area(key="new_folders").set_value(MARKED_UP).run()  # a folder outside the roots
    assert "is outside the data roots" in shown(at.error)
    assert_literal(at.error, MARKED_UP)

    at.text_area(key="new_folders").set_value("").run()
    at.radio(key="new_source").set_value("file").run()
    bad = json.dumps({"preset": "tiny", "policy": MARKED_UP}).encode()
    at.file_uploader(key="new_config_file").set_value((f"{MARKED_UP}.json", bad, "application/json")).run()
    assert "policy: must be auto or human" in shown(at.error)
    assert_literal(at.error, f"{MARKED_UP}.json")
    assert_literal(at.error, repr(MARKED_UP))

    at.switch_page("pages/schedules.py").run()
    data = export_schedule(store, run_id)
    data["config"]["policy"] = MARKED_UP
    at.file_uploader(key="schedule_upload").set_value((f"{MARKED_UP}.json", json.dumps(data).encode(),
                                                       "application/json")).run()
    assert "config.policy: must be auto or human" in shown(at.error)
    assert_literal(at.error, f"{MARKED_UP}.json")
    assert_literal(at.error, repr(MARKED_UP))

    p = pending(store, run_id)
    at.switch_page("pages/mixture.py").run()
    decide(store, p["id"], "reject", by=MARKED_UP)  # decided elsewhere meanwhile, by a name typed there
    at.button(key=f"approve_{p['id']}").click().run()
    assert not at.exception, at.exception
    assert "not pending" in shown(at.error)
    assert_literal(at.error, MARKED_UP)
    assert len(store.runs()) == 1 and spawned == []


def test_typed_steps_beyond_the_limit_are_refused(db, spawned, monkeypatch):
    store, run_id = db
    monkeypatch.setenv("CLOSED_LOOP_MAX_STEPS", "1000")
    at = open_app("pages/new_run.py")
    at.selectbox(key="new_preset").set_value("tiny")
    at.number_input(key="new_steps").set_value(10**6).run()
    assert not at.exception, at.exception
    assert "train.steps" in shown(at.error) and at.button(key="new_start").disabled
    assert len(store.runs()) == 1 and spawned == []


def test_a_replayed_schedule_reaching_outside_the_data_roots_is_refused(db, spawned, tmp_path, monkeypatch):
    store, run_id = db
    monkeypatch.setenv("CLOSED_LOOP_DATA_ROOTS", str(tmp_path / "data"))
    data = export_schedule(store, run_id)
    data["config"]["model"]["pretrained"] = "/root"
    at = open_app("pages/schedules.py")
    at.file_uploader(key="schedule_upload").set_value(("s.json", json.dumps(data).encode(), "application/json")).run()
    assert not at.exception, at.exception
    assert "model.pretrained" in shown(at.error) and "No run was started" in shown(at.error)
    assert not [b for b in at.button if b.key == "start_replay"]
    assert len(store.runs()) == 1 and spawned == []


def test_a_replayed_schedule_this_machine_cannot_run_is_refused(db, spawned, tmp_path, monkeypatch):
    """A schedule whose config passes the limits but names a folder this
    machine lacks: Start replay says so and starts nothing (no traceback)."""
    store, run_id = db
    monkeypatch.setenv("CLOSED_LOOP_DATA_ROOTS", str(tmp_path))
    data = export_schedule(store, run_id)
    missing = tmp_path / "gone"
    domains = data["config"]["data"]["domains"]
    (i,) = [i for i, d in enumerate(domains) if d["name"] == "noise"]
    domains[i] = {"name": "noise", "source": "folder", "path": str(missing)}
    at = open_app("pages/schedules.py")
    at.file_uploader(key="schedule_upload").set_value(("s.json", json.dumps(data).encode(), "application/json")).run()
    assert not at.error, texts(at.error)
    at.button(key="start_replay").click().run()
    assert not at.exception, at.exception
    assert f"data.domains[{i}].path" in shown(at.error) and str(missing) in shown(at.error)
    assert "No run was started" in shown(at.error)
    assert len(store.runs()) == 1 and spawned == []


def test_behind_a_proxy_the_header_names_who_decides(db, monkeypatch):
    """With CLOSED_LOOP_USER_HEADER set, a request without that header (not
    through the proxy; AppTest sends no headers) sees no page and decides
    nothing; one with it decides under the header's name."""
    from pages._common import header_user

    store, run_id = db
    monkeypatch.setenv("CLOSED_LOOP_USER_HEADER", "X-Forwarded-User")
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    assert "X-Forwarded-User" in texts(at.error) and not at.title
    assert at.sidebar.text_input(key="user_name").disabled
    assert not [b for b in at.button if b.key and b.key.startswith("approve_")]
    assert header_user({"X-Forwarded-User": " ada "}, "X-Forwarded-User") == "ada"
    assert header_user({"X-Forwarded-User": "ada"}, None) is None
    assert header_user({}, "X-Forwarded-User") == ""


def test_home_shows_the_phase_and_eta_of_a_working_run(db):
    """A running run's phase, how long it has been at it, and when the next
    checkpoint and the end are due (from the run's own pace)."""
    store, run_id = db
    store.update_run(run_id, status="running", phase="evaluating copy (1 of 2)", phase_started=time.time() - 7)
    at = open_app()
    line = texts(at.caption)
    assert "Phase: **evaluating copy (1 of 2)** for 7 s" in line or "Phase: **evaluating copy (1 of 2)** for 8 s" in line
    assert "next checkpoint in ~" in line and "end in ~" in line


def test_new_run_refuses_what_this_machine_cannot_run(db):
    """The gpu-small preset asks for cuda: on a machine without a GPU the page
    says so and starts nothing (no traceback)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    store, _ = db
    before = len(store.runs())
    at = open_app("pages/new_run.py")
    preset_box = next(s for s in at.selectbox if "preset" in str(s.label).lower())
    preset_box.select("gpu-small").run()
    at.button(key="new_start").click().run()
    assert not at.exception, at.exception
    assert "train.device: cuda" in shown(at.error) and len(store.runs()) == before
