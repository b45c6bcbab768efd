"""backend.charts: figures as pure functions of DataFrames (no Streamlit),
drawn from backend.frames' frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from conftest_dashboard import facet_rows, scores_df

from backend import charts, frames


def lines(fig: go.Figure) -> list:
    """The data traces (not bands, not markers of change)."""
    return [t for t in fig.data if t.type == "scatter" and t.fill != "toself"]


def test_latent_trajectories_show_the_measured_points(scored_run):
    s, run_id = scored_run
    fig = charts.trajectory_figure(frames.capability_scores(s, run_id), raw=frames.skill_scores(s, run_id))
    bands = [t for t in fig.data if t.fill == "toself"]
    assert list(bands[0].y) == [0.6, 0.6, 0.2, 0.2]  # hi out, lo back: the stored interval
    assert all(t.mode == "lines" for t in bands)  # no stray markers at the polygon's corners
    dots = [t for t in fig.data if t.mode == "markers"]
    assert {t.name for t in dots} == {"copy measured", "copy_holdout (held-out) measured"}


def test_empty_frames_have_their_columns():
    df = frames.scores_frame([])
    assert list(df.columns) == frames.SCORE_COLUMNS and df.empty
    for fig in (charts.trajectory_figure(df), charts.headline_figure(df), charts.heatmap_figure(df)):
        assert fig.layout.annotations[0].text == "no measurements yet"


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
    fig = charts.mixture_figure(frames.mixture_history(schedule, 250), end_step=250)
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
    reach = frames.tokens_to_reach(df, 0.3)
    bars = charts.reach_figure(reach, 0.3)
    assert [t.name for t in bars.data] == ["#1 deficit", "#2 static"]
    assert "no skill reached" in charts.reach_figure(frames.tokens_to_reach(df, 0.99), 0.99).layout.annotations[0].text


def test_weights_figure_side_by_side():
    fig = charts.weights_figure(frames.weights_table({"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.3}))
    assert [t.name for t in fig.data] == ["current", "proposed"] and fig.layout.barmode == "group"


def test_figures_serialise(scored_run):
    s, run_id = scored_run
    df = frames.skill_scores(s, run_id)
    for fig in (charts.trajectory_figure(df), charts.heatmap_figure(df), charts.headline_figure(df),
                charts.domain_loss_figure(frames.domain_losses(s, run_id))):
        assert fig.to_json()


# -- facets of one skill at one checkpoint ------------------------------------------


def test_facet_figure_shows_error_bars_and_the_latent_band():
    f = frames.facet_frame(facet_rows(), 10)
    fig = charts.facet_figure(f, {"score": 0.52, "lo": 0.44, "hi": 0.6})
    (points,) = fig.data
    assert list(points.y) == f["value"].tolist()
    assert list(points.error_y.array) == pytest.approx((f["hi"] - f["value"]).tolist())
    assert [s.y0 for s in fig.layout.shapes if s.type == "rect"] == [0.44]
    assert "latent 0.52 [0.44, 0.60]" in [a.text for a in fig.layout.annotations]
    no_latent = charts.facet_figure(f)
    assert not [s for s in no_latent.layout.shapes if s.type == "rect"]
    empty = charts.facet_figure(frames.facet_frame(facet_rows(), 20))
    assert "no measurement" in empty.layout.annotations[0].text


def test_no_axis_goes_below_zero_and_labels_fit():
    """A lone first checkpoint: plotly would pad its axis to -1..1."""
    one = scores_df(steps=[0])
    for fig in (charts.headline_figure(one), charts.heatmap_figure(one), charts.trajectory_figure(one)):
        axes = fig.layout.template.layout
        assert axes.xaxis.rangemode == "nonnegative" and axes.yaxis.rangemode == "nonnegative"
        assert axes.xaxis.automargin and axes.yaxis.automargin


def test_score_axis_is_0_to_1_for_scores_and_free_for_a_loss():
    from backend.charts import _score_axis

    scores = pd.DataFrame({"value": [0.2, 0.9], "hi": [0.3, 1.0]})
    assert _score_axis(scores)["range"] == [-0.02, 1.02]
    loss = pd.DataFrame({"value": [4.5, 3.1], "hi": [4.8, 3.3]})
    axis = _score_axis(loss)
    assert "range" not in axis and axis["rangemode"] == "nonnegative"
    # by name: BLEU 0.4 is not a [0, 1] score; mcc goes below 0
    bleu = pd.DataFrame({"metric": ["bleu", "bleu"], "value": [0.0, 0.4], "lo": [0.0, 0.1], "hi": [0.2, 0.7]})
    assert "range" not in _score_axis(bleu)
    mcc = pd.DataFrame({"metric": ["mcc"], "value": [-0.3], "lo": [-0.5], "hi": [-0.1]})
    assert _score_axis(mcc)["rangemode"] == "normal"


def test_the_headline_averages_only_skills_scored_in_0_1():
    from backend import charts

    df = scores_df(steps=[0, 10])
    bleu = df[df["skill"] == df["skill"].iloc[0]].assign(skill="bleu_skill", base="bleu_skill", metric="bleu",
                                                        value=40.0, lo=35.0, hi=45.0)
    fig = charts.headline_figure(pd.concat([df, bleu]))
    means = [t for t in fig.data if t.name == "mean of steer skills"]
    assert means and max(means[0].y) <= 1.0
    assert fig.layout.yaxis.range == (-0.02, 1.02)
    only = charts.headline_figure(bleu)
    assert "no skill is scored" in only.layout.annotations[0].text


def test_trajectory_draws_each_steer_skills_chance_level():
    from backend import charts

    df = pd.DataFrame({"skill": ["parity", "parity", "parity_holdout"], "base": ["parity"] * 3,
                       "kind": ["steer", "steer", "holdout"], "step": [0, 10, 10], "tokens_seen": [0, 640, 640],
                       "value": [0.5, 0.52, 0.5], "stderr": [0.05] * 3, "n": [50] * 3,
                       "lo": [0.4, 0.42, 0.4], "hi": [0.6, 0.62, 0.6]})
    fig = charts.trajectory_figure(df, chance={"parity": 0.5, "parity_holdout": 0.5})
    lines = [t for t in fig.data if t.name == "parity chance"]
    assert len(lines) == 1 and list(lines[0].y) == [0.5, 0.5] and lines[0].line.dash == "dash"
    assert not [t for t in charts.trajectory_figure(df).data if (t.name or "").endswith("chance")]


def test_skill_panels_one_per_skill_with_chance_and_badge():
    df = scores_df(skills=("copy", "add2", "sort"))
    fig = charts.skill_panels_figure(df, chance={"copy": 0.25}, badges={"copy": "learning", "add2": "at chance"},
                                     cols=2)
    axes = {t.xaxis for t in fig.data}
    assert axes == {"x", "x2", "x3"}  # one panel per base skill
    titles = [a.text for a in fig.layout.annotations]
    assert titles[0].startswith("<b>add2</b>") and "at chance" in titles[0]  # sorted by name
    assert "copy" in titles[1] and "learning" in titles[1] and titles[2] == "<b>sort</b>"
    (chance,) = [t for t in fig.data if t.name == "copy chance"]
    assert list(chance.y) == [0.25, 0.25] and chance.line.dash == "dash" and chance.xaxis == "x2"
    held = [t for t in fig.data if t.name == "add2_holdout (held-out)" and t.fill != "toself"]
    assert held[0].line.dash == "dot" and held[0].xaxis == "x"
    assert fig.layout.yaxis3.range == (-0.02, 1.02) and fig.layout.xaxis.range[0] == 0
    only = charts.skill_panels_figure(df, bases=["sort"], holdout=False, band=False)
    assert {t.name for t in only.data} == {"sort"}


def test_skill_panels_stay_fast_at_50_skills():
    import time

    df = scores_df(skills=[f"s{i}" for i in range(50)], steps=range(0, 1000, 1))
    t0 = time.perf_counter()
    fig = charts.skill_panels_figure(df, chance={f"s{i}": 0.1 for i in range(50)})
    fig.to_json()
    assert time.perf_counter() - t0 < 2.0  # shared CI cores; about 0.2 s alone
    assert len({t.xaxis for t in fig.data}) == 50


def test_curve_figure_smooths_and_logs():
    curves = pd.DataFrame({"step": [1, 2, 3, 4], "tokens_seen": [10, 20, 30, 40], "loss": [4.0, 2.0, 3.0, 1.0],
                           "lr": [1e-3] * 4, "grad_norm": [np.nan] * 4, "tokens_per_s": [5.0] * 4})
    raw = charts.curve_figure(curves, "loss")
    assert len(raw.data) == 1 and list(raw.data[0].y) == [4.0, 2.0, 3.0, 1.0]
    sm = charts.curve_figure(curves, "loss", smoothing=0.9, log_y=True, x="tokens_seen")
    logged, smooth = sm.data
    assert list(logged.y) == [4.0, 2.0, 3.0, 1.0] and smooth.y[-1] > 1.0  # the EMA lags the last drop
    assert sm.layout.yaxis.type == "log" and list(smooth.x) == [10, 20, 30, 40]
    assert charts.curve_figure(curves, "grad_norm").layout.annotations[0].text == "nothing logged yet"


def test_forecast_check_figure_points_and_diagonal():
    errs = pd.DataFrame({"skill": ["copy", "copy", "add2"], "forecast": [0.2, 0.3, 0.5], "actual": [0.25, 0.3, 0.4],
                         "step": [10, 20, 20]})
    fig = charts.forecast_check_figure(errs)
    assert list(fig.data[0].x) == [0, 1] and {t.name for t in fig.data[1:]} == {"copy", "add2"}
    assert charts.forecast_check_figure(errs.iloc[:0]).layout.annotations
