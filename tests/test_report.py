"""backend.report: one standalone HTML file per run (the browser test opens
it with the network cut off)."""

from __future__ import annotations

import re

from backend.decisions import decide
from backend.report import render_report, write_report
from backend.store import Store


def test_report_is_standalone_and_complete(human_run, tmp_path):
    db, run_id = human_run
    store = Store(db)
    html = render_report(store, run_id)
    # plotly.js is inlined once; nothing is fetched from anywhere
    assert html.count("Licensed under the MIT license") >= 1
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)
    assert html.count('class="plotly-graph-div"') == 5
    for section in ("Latest score per skill", "Goodhart alerts", "Held-out loss per domain", "Mixture history",
                    "Schedule", "Decisions", "Configuration"):
        assert f"<h2>{section}</h2>" in html
    decided = [p for p in store.proposals(run_id) if p["status"] != "pending"]
    assert decided and all(f"<td>{p['id']}</td>" in html for p in decided)
    path = write_report(store, run_id, tmp_path / "out" / "report.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_report_escapes_run_names(human_run, tmp_path):
    db, run_id = human_run
    store = Store(db)
    copy = Store(tmp_path / "cl.db")
    rid = copy.create_run({**store.run(run_id)["config"], "name": "<b>x</b>"})
    html = render_report(copy, rid)
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_report_names_proposals_by_integer_id(dashboard_db):
    """A segment's proposal is an id ("7"), not a float ("7.000")."""
    db, run_id = dashboard_db
    store = Store(db)
    (p,) = store.proposals(run_id, status="pending")
    decide(store, p["id"], "approve", by="ada")
    store.apply_approved(run_id, step=30, tokens_at=11_520)
    html = render_report(store, run_id)
    schedule = html[html.index("<h2>Schedule</h2>"):html.index("<h2>Decisions</h2>")]
    assert f"<td>{p['id']}</td>" in schedule and f"<td>{p['id']}.000</td>" not in schedule
