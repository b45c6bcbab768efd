"""A run's report as one standalone HTML file: capability charts, the
mixture history, every decision and the schedule.

plotly.js is inlined once (include_plotlyjs=True), so the file opens in a
browser with no Python and no network: something to send a stakeholder.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import pandas as pd

from backend import charts, frames

CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: .9rem; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } .muted { color: #777; } pre { background: #f7f7f7; padding: 1rem; overflow: auto; }
"""


def _cell(v):
    if v is None or (not isinstance(v, (list, dict, str)) and pd.isna(v)):
        return ""
    return f"{v:.3f}" if isinstance(v, float) else v


def _table(df: pd.DataFrame) -> str:
    if df.empty:
        return '<p class="muted">none</p>'
    return df.astype(object).map(_cell).to_html(index=False, escape=True, border=0)


def _figure(fig, first: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=first, include_mathjax=False,
                       config={"displaylogo": False, "responsive": True})


def render_report(store, run_id: int) -> str:
    """The report of one run as an HTML string."""
    run = store.run(run_id)
    cfg = run["config"]
    raw = frames.skill_scores(store, run_id)
    latent = frames.capability_scores(store, run_id)
    scores = latent if not latent.empty else raw
    losses = frames.domain_losses(store, run_id)
    schedule = store.schedule(run_id)
    history = frames.mixture_history(schedule, end_step=run["step"])
    proposals = store.proposals(run_id)
    checkpoints = store.checkpoints(run_id)

    summary = pd.DataFrame([
        ("status", run["status"] + (f" ({run['error']})" if run["error"] else "")),
        ("policy", run["policy"]),
        ("strategy", cfg["controller"]["strategy"]),
        ("seed", cfg["seed"]),
        ("step", f"{run['step']:,} of {run['total_steps']:,}"),
        ("tokens seen", f"{run['tokens_seen']:,}"),
        ("checkpoints", len(checkpoints)),
        ("domains", ", ".join(d["name"] for d in cfg["data"]["domains"])),
        ("created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["created_at"]))),
    ], columns=["", "value"])
    latest = (scores.sort_values("step").groupby("skill").tail(1)
              [["skill", "kind", "step", "value", "lo", "hi"]]
              .sort_values(["kind", "skill"], ascending=[False, True])
              .rename(columns={"value": "score", "lo": "95% lo", "hi": "95% hi"}))
    if scores is latent:
        latest = latest.merge(latent[["skill", "step", "slope", "raw_mean"]], on=["skill", "step"])
    alerts = pd.DataFrame([{"skill": e["after"].get("skill"), "step": e["after"].get("step"),
                            "at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["ts"])),
                            "event": e["kind"].removeprefix("goodhart_"), "by": e["actor"] or "",
                            "message": e["message"]}
                           for e in store.events(run_id) if e["kind"] in ("goodhart_alert", "goodhart_ack")])
    segments = pd.DataFrame([{
        "from step": s["from_step"], "tokens at": s["tokens_at"], "source": s["source"],
        "proposal": s["proposal_id"], "decided by": s["decided_by"] or "",
        "weights": ", ".join(f"{d} {w:.3f}" for d, w in s["weights"].items()),
    } for s in schedule])
    if not segments.empty:
        segments["proposal"] = segments["proposal"].astype("Int64")  # ids, not 1.000
    decisions = frames.decisions_table(proposals)

    figures = [
        ("Capability", charts.headline_figure(scores)),
        ("", charts.trajectory_figure(scores, raw=raw if scores is latent else None,
                                      chance=frames.chance_levels(store, run_id))),
        ("", charts.heatmap_figure(scores)),
        ("Held-out loss per domain", charts.domain_loss_figure(losses)),
        ("Mixture history", charts.mixture_figure(history, end_step=run["step"])),
    ]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Closed Loop report: run {run_id} {html.escape(run['name'])}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Run #{run_id} · {html.escape(run['name'])}</h1>",
        f"<p class='muted'>Closed Loop report generated {time.strftime('%Y-%m-%d %H:%M:%S')}. "
        "Scores are exact match: the latent capability estimate (a Kalman filter over the checkpoints' "
        "measurements) where the run has one, else the raw means; bands are 95% intervals.</p>",
        _table(summary),
        "<h2>Latest score per skill</h2>", _table(latest),
        "<h2>Goodhart alerts</h2>", _table(alerts),
    ]
    for i, (heading, fig) in enumerate(figures):
        if heading:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(_figure(fig, first=i == 0))
    parts += [
        "<h2>Schedule</h2>", _table(segments),
        "<h2>Decisions</h2>", _table(decisions),
        "<h2>Configuration</h2>",
        f"<details><summary>resolved config</summary><pre>{html.escape(json.dumps(cfg, indent=2))}</pre></details>",
        "</body></html>",
    ]
    return "\n".join(parts)


def write_report(store, run_id: int, path: str | Path) -> Path:
    """Write the report to `path` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(store, run_id), encoding="utf-8")
    return path
