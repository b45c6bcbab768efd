"""backend.charts: frames from the store, and figures as pure functions of
DataFrames (no Streamlit)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from backend import charts
from backend.store import Store


def scores_df(skills=("copy", "add2"), steps=range(0, 50, 10), holdout=True, tokens_per_step=100):
    rows = []
    for i, base in enumerate(skills):
        for kind in (("steer", "holdout") if holdout else ("steer",)):
            name = base if kind == "steer" else f"{base}_holdout"
            for s in steps:
                v = min(1.0, s / 100 + 0.1 * i + (0 if kind == "steer" else -0.05))
                rows.append({"skill": name, "base": base, "kind": kind, "step": s,
                             "tokens_seen": s * tokens_per_step, "value": max(0.0, v), "stderr": 0.05, "n": 50.0})
    df = pd.DataFrame(rows)
    return df.assign(lo=(df["value"] - 1.96 * df["stderr"]).clip(0, 1),
                     hi=(df["value"] + 1.96 * df["stderr"]).clip(0, 1))[charts.SCORE_COLUMNS]


def lines(fig: go.Figure) -> list:
    """The data traces (not bands, not markers of change)."""
    return [t for t in fig.data if t.type == "scatter" and t.fill != "toself"]


# -- frames ------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "cl.db")
    cfg = {"name": "t", "policy": "human", "train": {"steps": 20, "checkpoint_every": 10}}
    run_id = s.create_run(cfg)
    s.set_skills(run_id, [
        {"name": "copy", "base": "copy", "kind": "steer", "domains": ["strings"], "tasks": ["a", "b"]},
        {"name": "copy_holdout", "base": "copy", "kind": "holdout", "domains": ["strings"], "tasks": ["c"]},
    ])
    rows = []
    for step in (0, 10):
        tok = step * 64
        rows += [
            {"step": step, "tokens_seen": tok, "skill": "copy", "kind": "steer", "task": "a",
             "metric": "exact_match", "value": 0.2 + step / 100, "stderr": 0.03, "n": 40},
            {"step": step, "tokens_seen": tok, "skill": "copy", "kind": "steer", "task": "b",
             "metric": "exact_match", "value": 0.4 + step / 100, "stderr": 0.04, "n": 60},
            {"step": step, "tokens_seen": tok, "skill": "copy", "kind": "steer", "task": "a",
             "metric": "loglik", "value": -3.0, "stderr": 0.1, "n": 40},
            {"step": step, "tokens_seen": tok, "skill": "copy_holdout", "kind": "holdout", "task": "c",
             "metric": "exact_match", "value": 0.1, "stderr": 0.02, "n": 50},
            {"step": step, "tokens_seen": tok, "domain": "strings", "kind": "domain_loss",
             "task": "heldout_loss/strings", "metric": "loss", "value": 4.0 - step / 10, "stderr": 0.01, "n": 8},
        ]
    s.add_measurements(run_id, rows)
    s.add_segment(run_id, from_step=0, tokens_at=0, weights={"strings": 0.5, "noise": 0.5}, source="initial")
    s.set_capability(run_id, [
        {"step": step, "skill": skill, "tokens_seen": step * 64, "score": 0.3 + step / 100, "lo": 0.2, "hi": 0.6,
         "slope": 0.05, "slope_lo": 0.0, "slope_hi": 0.1, "slope_per_token": 0.05 / 640, "raw_mean": 0.3}
        for step in (0, 10) for skill in ("copy", "copy_holdout")])
    return s, run_id


def test_skill_scores_average_tasks_of_the_primary_metric(store):
    s, run_id = store
    df = charts.skill_scores(s, run_id)
    assert list(df.columns) == charts.SCORE_COLUMNS
    copy = df[(df["skill"] == "copy") & (df["step"] == 10)].iloc[0]
    assert copy["value"] == pytest.approx((0.3 + 0.5) / 2)  # the loglik row is left out
    assert copy["stderr"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)
    assert copy["n"] == 100 and copy["tokens_seen"] == 640
    held = df[df["skill"] == "copy_holdout"]
    assert set(held["kind"]) == {"holdout"} and set(held["base"]) == {"copy"}


def test_capability_scores_carry_the_latent_interval_and_slope(store):
    s, run_id = store
    df = charts.capability_scores(s, run_id)
    assert list(df.columns) == charts.SCORE_COLUMNS + charts.SLOPE_COLUMNS
    row = df[(df["skill"] == "copy_holdout") & (df["step"] == 10)].iloc[0]
    assert row["value"] == pytest.approx(0.4) and (row["lo"], row["hi"]) == (0.2, 0.6)
    assert row["kind"] == "holdout" and row["base"] == "copy" and row["slope"] == 0.05
    assert row["stderr"] == pytest.approx(0.4 / 3.92)
    assert charts.capability_scores(s, 999).empty


def test_latent_trajectories_show_the_measured_points(store):
    s, run_id = store
    fig = charts.trajectory_figure(charts.capability_scores(s, run_id), raw=charts.skill_scores(s, run_id))
    bands = [t for t in fig.data if t.fill == "toself"]
    assert list(bands[0].y) == [0.6, 0.6, 0.2, 0.2]  # hi out, lo back: the stored interval
    assert all(t.mode == "lines" for t in bands)  # no stray markers at the polygon's corners
    dots = [t for t in fig.data if t.mode == "markers"]
    assert {t.name for t in dots} == {"copy measured", "copy_holdout (held-out) measured"}


def test_empty_frames_have_their_columns():
    df = charts.scores_frame([])
    assert list(df.columns) == charts.SCORE_COLUMNS and df.empty
    for fig in (charts.trajectory_figure(df), charts.headline_figure(df), charts.heatmap_figure(df)):
        assert fig.layout.annotations[0].text == "no measurements yet"


def test_domain_losses(store):
    s, run_id = store
    df = charts.domain_losses(s, run_id)
    assert list(df["value"]) == [4.0, 3.0] and set(df["domain"]) == {"strings"}


def test_mixture_history_and_decisions(store):
    s, run_id = store
    pid = s.add_proposal(run_id, step=10, strategy="deficit", current_weights={"strings": 0.5, "noise": 0.5},
                         weights={"strings": 0.8, "noise": 0.2}, rationale={"strings": "up", "noise": "down"},
                         forecast={"copy": {"score": 0.4, "expected": 0.5}})
    s.decide(pid, "approve", by="ada")
    s.apply_approved(run_id, step=10, tokens_at=640)
    h = charts.mixture_history(s.schedule(run_id), end_step=20)
    assert list(h["from_step"].unique()) == [0, 10] and list(h["to_step"].unique()) == [10, 20]
    assert h[(h["from_step"] == 10) & (h["domain"] == "strings")]["decided_by"].item() == "ada"
    d = charts.decisions_table(s.proposals(run_id))
    assert d.iloc[0]["status"] == "applied" and d.iloc[0]["applied at step"] == 10
    assert d.iloc[0]["decided by"] == "ada"
    f = charts.forecast_table(s.proposal(pid)["forecast"])
    assert f.iloc[0].to_dict()["expected next"] == 0.5


def test_weights_table():
    t = charts.weights_table({"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.3}, {"a": "more", "b": "less"})
    assert list(t.columns) == ["domain", "current", "proposed", "change", "reason"]
    assert t["change"].round(3).tolist() == [0.2, -0.2]


# -- transforms --------------------------------------------------------------------


def test_thin_keeps_first_and_last_and_at_most_max_points():
    df = scores_df(steps=range(0, 1000))
    out = charts.thin(df, 50)
    steps = sorted(out["step"].unique())
    assert len(steps) <= 50 and steps[0] == 0 and steps[-1] == 999
    assert len(charts.thin(df, 5000)) == len(df)


def test_smooth_is_a_rolling_mean_with_a_narrower_band():
    df = scores_df(skills=("copy",), holdout=False, steps=range(0, 50, 10))
    out = charts.smooth(df, 3).set_index("step")
    assert out.loc[20, "value"] == pytest.approx(np.mean([0.0, 0.1, 0.2]))
    assert out.loc[20, "stderr"] == pytest.approx(0.05 / math.sqrt(3))
    assert out.loc[20, "hi"] == pytest.approx(0.1 + 1.96 * 0.05 / math.sqrt(3))
    assert out.loc[0, "stderr"] == pytest.approx(0.05)
    assert charts.smooth(df, 1) is df


def test_tokens_to_reach():
    df = pd.concat([scores_df(skills=("copy",)).assign(run="a"),
                    scores_df(skills=("copy",), tokens_per_step=200).assign(run="b")])
    r = charts.tokens_to_reach(df, 0.3)
    got = {(x.run, x.skill): x.tokens_seen for x in r.itertuples()}
    assert got[("a", "copy")] == 3000 and got[("b", "copy")] == 6000
    assert got[("a", "copy_holdout")] == 4000  # 0.35 first at step 40
    assert charts.tokens_to_reach(df, 0.99)["tokens_seen"].isna().all()


# -- figures -------------------------------------------------------------------------


def test_trajectory_figure_has_a_band_per_line_and_tells_holdout_apart():
    fig = charts.trajectory_figure(scores_df(), x="tokens_seen")
    ls = lines(fig)
    assert len(ls) == 4 and sum(t.fill == "toself" for t in fig.data) == 4
    dashes = {t.name: t.line.dash for t in ls}
    assert dashes["copy"] == "solid" and dashes["copy_holdout (held-out)"] == "dot"
    # a skill and its held-out variant share a colour
    colors = {t.name: t.line.color for t in ls}
    assert colors["copy"] == colors["copy_holdout (held-out)"] != colors["add2"]
    assert fig.layout.xaxis.title.text == "tokens seen"
    assert list(ls[0].x) == [0, 1000, 2000, 3000, 4000]


def test_trajectory_figure_choices():
    df = scores_df(skills=("copy", "add2", "sort"))
    fig = charts.trajectory_figure(df, x="step", bases=["sort"], holdout=False, band=False)
    assert [t.name for t in fig.data] == ["sort"]
    assert fig.layout.xaxis.title.text == "step"


def test_band_is_the_95_interval_clipped_to_0_1():
    df = scores_df(skills=("copy",), holdout=False, steps=[0, 10])
    band = next(t for t in charts.trajectory_figure(df).data if t.fill == "toself")
    upper, lower = band.y[:2], band.y[2:][::-1]
    assert upper[1] == pytest.approx(0.1 + 1.96 * 0.05)
    assert lower[0] == 0.0  # 0 - 1.96 * 0.05 clipped


def test_large_trajectories_are_thinned():
    df = scores_df(skills=[f"s{i}" for i in range(10)], steps=range(1000))
    fig = charts.trajectory_figure(df, max_points=100)
    assert all(len(t.x) <= 100 for t in lines(fig))
    assert all(t.x[-1] == 999 * 100 for t in lines(fig))


def test_heatmap_rows_pair_each_skill_with_its_holdout():
    fig = charts.heatmap_figure(scores_df(skills=("copy", "add2"), steps=range(0, 500)), max_columns=40)
    (hm,) = fig.data
    assert list(hm.y) == ["add2", "add2_holdout (held-out)", "copy", "copy_holdout (held-out)"]
    assert np.asarray(hm.z).shape == (4, 40) and hm.zmin == 0 and hm.zmax == 1


def test_headline_figure_means():
    fig = charts.headline_figure(scores_df())
    names = [t.name for t in lines(fig)]
    assert "mean of steer skills" in names and "mean of held-out skills" in names
    mean = next(t for t in lines(fig) if t.name == "mean of steer skills")
    assert mean.y[-1] == pytest.approx((0.4 + 0.5) / 2)


def test_mixture_figure_is_a_stacked_step_function_with_marked_changes():
    schedule = [
        {"from_step": 0, "tokens_at": 0, "weights": {"a": 0.5, "b": 0.5}, "source": "initial"},
        {"from_step": 100, "tokens_at": 6400, "weights": {"a": 0.7, "b": 0.3}, "source": "proposal",
         "proposal_id": 4, "decided_by": "ada"},
        {"from_step": 200, "tokens_at": 12800, "weights": {"a": 0.6, "b": 0.4}, "source": "manual",
         "proposal_id": 9, "decided_by": "bob"},
    ]
    fig = charts.mixture_figure(charts.mixture_history(schedule, 250), end_step=250)
    areas = [t for t in fig.data if t.stackgroup == "mixture"]
    assert [t.name for t in areas] == ["a", "b"]
    assert list(areas[0].x) == [0, 100, 200, 250] and list(areas[0].y) == [0.5, 0.7, 0.6, 0.6]
    assert areas[0].line.shape == "hv"
    (marks,) = [t for t in fig.data if t.name == "mixture changed"]
    assert list(marks.x) == [100, 200]
    assert list(marks.text) == ["step 100: proposal #4 by ada", "step 200: manual #9 by bob"]


def test_compare_and_reach_figures():
    df = pd.concat([scores_df(skills=("copy",)).assign(run="#1 deficit"),
                    scores_df(skills=("copy",), tokens_per_step=200).assign(run="#2 static")])
    fig = charts.compare_figure(df, "copy")
    assert [t.name for t in lines(fig)] == ["#1 deficit", "#2 static"]
    reach = charts.tokens_to_reach(df, 0.3)
    bars = charts.reach_figure(reach, 0.3)
    assert [t.name for t in bars.data] == ["#1 deficit", "#2 static"]
    assert "no skill reached" in charts.reach_figure(charts.tokens_to_reach(df, 0.99), 0.99).layout.annotations[0].text


def test_weights_figure_side_by_side():
    fig = charts.weights_figure(charts.weights_table({"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.3}))
    assert [t.name for t in fig.data] == ["current", "proposed"] and fig.layout.barmode == "group"


def test_figures_serialise(store):
    s, run_id = store
    df = charts.skill_scores(s, run_id)
    for fig in (charts.trajectory_figure(df), charts.heatmap_figure(df), charts.headline_figure(df),
                charts.domain_loss_figure(charts.domain_losses(s, run_id))):
        assert fig.to_json()


# -- facets of one skill at one checkpoint ------------------------------------------


def facet_rows(step=10):
    rows = []
    for variant, metric, value, se in [("template0", "exact_match", 0.4, 0.07), ("template2", "exact_match", 0.6, 0.07),
                                       ("template3", "exact_match", 0.5, 0.07), ("template0", "acc", 0.9, 0.04),
                                       ("template0", "answer_loss", 1.7, 0.1)]:
        for s in (0, step):
            rows.append({"step": s, "task": f"copy_{variant}_{metric}", "metric": metric, "value": value if s else 0.0,
                         "stderr": se, "n": 50, "prompt_variant": variant, "decoding": "greedy",
                         "scorer": "exact" if metric == "exact_match" else "loglikelihood"})
    return rows


def test_facet_frame_is_one_row_per_score_facet_at_the_step():
    f = charts.facet_frame(facet_rows(), 10)
    assert list(f.columns) == charts.FACET_COLUMNS
    assert len(f) == 4  # the answer loss is not a score in [0, 1]
    assert sorted(f["value"]) == [0.4, 0.5, 0.6, 0.9]
    assert f["lo"].tolist() == pytest.approx((f["value"] - 1.96 * f["stderr"]).tolist())
    assert "template2 · greedy · exact match" in set(f["facet"])
    assert "template0 · greedy · ll accuracy" in set(f["facet"])
    assert charts.facet_frame(facet_rows(), 20).empty


def test_facet_figure_shows_error_bars_and_the_latent_band():
    f = charts.facet_frame(facet_rows(), 10)
    fig = charts.facet_figure(f, {"score": 0.52, "lo": 0.44, "hi": 0.6})
    (points,) = fig.data
    assert list(points.y) == f["value"].tolist()
    assert list(points.error_y.array) == pytest.approx((f["hi"] - f["value"]).tolist())
    assert [s.y0 for s in fig.layout.shapes if s.type == "rect"] == [0.44]
    assert "latent 0.52 [0.44, 0.60]" in [a.text for a in fig.layout.annotations]
    no_latent = charts.facet_figure(f)
    assert not [s for s in no_latent.layout.shapes if s.type == "rect"]
    empty = charts.facet_figure(charts.facet_frame(facet_rows(), 20))
    assert "no exact-match" in empty.layout.annotations[0].text
