"""pages/affinity.py under streamlit.testing (AppTest), against a hand-made
run (its domains, skills and first mixture; no training): the affinity
heatmap with intervals and its history, pins set through the page, the
objective editor, and the info box shown before any estimate exists. Every
action checks the store changed (or did not)."""

from __future__ import annotations

import json

import pytest
from conftest_dashboard import APP
from streamlit.testing.v1 import AppTest

from backend.config import preset
from backend.store import Store
from backend.vocab import skill_name
from pages._common import md

PAGE = "pages/affinity.py"
AFFINITY_SQL = """CREATE TABLE IF NOT EXISTS affinity (
    run_id INTEGER NOT NULL REFERENCES runs (id), step INTEGER NOT NULL, skill TEXT NOT NULL,
    domain TEXT NOT NULL, mean REAL, lo REAL, hi REAL, prior REAL, source TEXT,
    PRIMARY KEY (run_id, step, skill, domain))"""


def _affinity(self, run_id: int, step: int | None = None) -> list[dict]:
    sql, params = "SELECT * FROM affinity WHERE run_id = ?", [run_id]
    if step is not None:
        sql, params = sql + " AND step = ?", params + [step]
    return [dict(r) for r in self.db.query(sql + " ORDER BY step, skill, domain", params)]


def record_affinity(store: Store, run_id: int, step: int, rows: list[dict], monkeypatch) -> None:
    """Write affinity rows as the affinity estimate stores them: through
    Store.record_affinity where this build has it, else (test-only) into a
    table of the agreed columns, read back by a stand-in Store.affinity."""
    if hasattr(Store, "record_affinity"):
        store.record_affinity(run_id, step, rows)
        return
    monkeypatch.setattr(Store, "affinity", _affinity, raising=False)
    with store.transaction() as db:
        db.execute(AFFINITY_SQL)
        db["affinity"].insert_all([{**r, "run_id": run_id, "step": step} for r in rows], replace=True)


@pytest.fixture
def run(tmp_path, monkeypatch, navigation_only):
    """(Store, run id): the tiny preset's run with its domains, two steer
    skills (copy fed by strings, add2 by arithmetic) and a uniform mixture."""
    path = tmp_path / "cl.db"
    monkeypatch.setenv("CLOSED_LOOP_DB", str(path))
    store = Store(path)
    cfg = preset("tiny").replace(policy="human")
    run_id = store.create_run(cfg.to_dict())
    store.update_run(run_id, status="stopped")
    store.set_domains(run_id, [{"name": d, "source": "synthetic", "skills": []} for d in cfg.domain_names])
    store.set_skills(run_id, [
        {"name": skill_name(s, k), "base": s, "kind": k, "domains": [d], "tasks": []}
        for s, d in (("copy", "strings"), ("add2", "arithmetic")) for k in ("steer", "holdout")])
    store.add_segment(run_id, from_step=0, tokens_at=0, weights=dict.fromkeys(cfg.domain_names, 1 / 6),
                      source="initial")
    return store, run_id


def rows(step: int) -> list[dict]:
    """copy learned from strings (rising with the step), add2 pinned to
    arithmetic; every other link near 0."""
    out = []
    for skill, feeder in (("copy", "strings"), ("add2", "arithmetic")):
        for d in ("strings", "arithmetic", "code"):
            m = (0.5 + step / 100) if d == feeder else 0.05
            out.append({"skill": skill, "domain": d, "mean": m, "lo": m - 0.1, "hi": m + 0.1,
                        "prior": 1.0 if d == feeder else 0.0,
                        "source": "pinned" if skill == "add2" and d == feeder else "learned"})
    return out


def open_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def spec(at: AppTest, key: str) -> dict:
    (chart,) = [c for c in at.get("plotly_chart") if c.proto.id and key in c.proto.id]
    return json.loads(chart.proto.spec)


def test_without_an_estimate_the_page_explains_and_still_offers_pins_and_the_objective(run):
    at = open_page()
    assert at.title[0].value == "Affinity & objective"
    assert any("No affinity estimate yet" in i.value for i in at.info)
    assert not at.get("plotly_chart")
    assert at.button(key=f"pin_save_{run[1]}") and at.button(key=f"obj_save_{run[1]}")


def test_the_matrix_shows_mean_and_interval_per_cell_and_its_history(run, monkeypatch):
    store, run_id = run
    record_affinity(store, run_id, 10, rows(10), monkeypatch)
    record_affinity(store, run_id, 20, rows(20), monkeypatch)
    at = open_page()
    assert not at.error
    heat = spec(at, "affinity_matrix")["data"][0]
    assert heat["type"] == "heatmap" and heat["y"] == ["add2", "copy"] and heat["x"] == ["arithmetic", "code",
                                                                                          "strings"]
    assert heat["text"][1][2] == "0.70<br>[0.60, 0.80]"  # copy <- strings at the last step, 20
    assert heat["text"][0][0].endswith("<br>pinned")
    assert "mean %{z:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]" in heat["hovertemplate"]
    # the history: each skill's strongest link by default, a line and its band per link
    assert at.multiselect(key=f"aff_links_{run_id}").value == [("add2", "arithmetic"), ("copy", "strings")]
    lines = [t for t in spec(at, "affinity_history")["data"] if t.get("mode", "").startswith("lines+")]
    assert [t["name"] for t in lines] == ["arithmetic -> add2", "strings -> copy"]
    at.select_slider(key=f"aff_step_{run_id}").set_value(10).run()
    assert spec(at, "affinity_matrix")["data"][0]["text"][1][2] == "0.60<br>[0.50, 0.70]"


def test_the_gradient_alignment_is_shown_on_a_diverging_scale_once_measured(run, monkeypatch):
    store, run_id = run
    record_affinity(store, run_id, 10, rows(10), monkeypatch)
    assert not [c for c in open_page().get("plotly_chart") if "alignment_matrix" in c.proto.id]
    store.add_alignment(run_id, 10, [{"skill": "copy", "domain": d, "value": v, "stderr": 0.02, "n": 32}
                                     for d, v in (("strings", -0.41), ("code", 0.05))])
    heat = spec(open_page(), "alignment_matrix")["data"][0]
    assert heat["colorscale"] and (heat["zmin"], heat["zmax"]) == (-1, 1)
    assert heat["y"] == ["copy"] and heat["x"] == ["code", "strings"]
    assert heat["text"][0][1] == "-0.41<br>± 0.02"


def test_a_link_is_pinned_off_and_cleared_through_the_page_with_the_deciders_name(run):
    store, run_id = run
    at = open_page()
    at.sidebar.text_input(key="user_name").set_value("ada").run()
    at.selectbox(key=f"pin_skill_{run_id}").set_value("copy")
    at.selectbox(key=f"pin_domain_{run_id}").set_value("code")
    at.radio(key=f"pin_state_{run_id}").set_value("off")
    at.text_input(key=f"pin_reason_{run_id}").set_value("code teaches no copying")
    at.button(key=f"pin_save_{run_id}").click().run()
    assert not at.exception and not at.error
    assert store.pins(run_id) == {("copy", "code"): False}
    (event,) = store.events(run_id, "pin")
    assert event["actor"] == "ada" and event["message"] == "link copy <- code pinned off: code teaches no copying"
    assert any("pinned off" in i.value for i in at.info)
    (pins,) = at.dataframe
    assert pins.value[["skill", "domain", "pinned", "by"]].values.tolist() == [["copy", "code", "off", "ada"]]
    at.radio(key=f"pin_state_{run_id}").set_value("clear")
    at.button(key=f"pin_save_{run_id}").click().run()
    assert store.pins(run_id) == {} and len(store.events(run_id, "pin")) == 2


def test_the_objective_is_edited_audited_and_a_half_deadline_is_refused_naming_the_field(run):
    store, run_id = run
    at = open_page()
    at.sidebar.text_input(key="user_name").set_value("ada").run()
    at.number_input(key=f"obj_priority_{run_id}_copy").set_value(3.0)
    at.slider(key=f"obj_share_{run_id}_code").set_value((0.1, 1.0))
    at.checkbox(key=f"obj_heldout_{run_id}").check()
    at.button(key=f"obj_save_{run_id}").click().run()
    assert not at.exception and not at.error
    saved = store.objective(run_id)
    assert saved["skills"]["copy"]["priority"] == 3.0 and saved["domains"]["code"]["min"] == 0.1
    assert saved["heldout_mean_nondecreasing"] is True and "add2" not in saved["skills"]
    (event,) = store.events(run_id, "objective")
    assert event["actor"] == "ada"
    assert any(c.value.startswith("Set on this page: copy: priority 3") for c in at.caption)

    at.number_input(key=f"obj_at_least_{run_id}_add2").set_value(0.6)
    at.button(key=f"obj_save_{run_id}").click().run()
    assert md("objective.skills.add2.by_tokens: a deadline needs both") in at.error[0].value  # shown as typed
    assert len(store.events(run_id, "objective")) == 1  # nothing saved


def test_the_page_renders_for_a_real_run(dashboard_db, navigation_only):
    """The tiny human run of the dashboard tests: real skills and domains,
    and whatever affinity estimate this build records."""
    store, run_id = Store(dashboard_db[0]), dashboard_db[1]
    at = open_page()
    assert not at.error
    assert at.selectbox(key=f"pin_skill_{run_id}").options == ["copy", "add2"]
    has_rows = hasattr(store, "affinity") and bool(store.affinity(run_id))
    assert bool(at.get("plotly_chart")) == has_rows
