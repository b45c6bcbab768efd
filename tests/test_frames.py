"""backend.frames: the store's rows as DataFrames, and the transforms on
them (thin, smooth, tokens_to_reach)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest_dashboard import facet_rows, scores_df

from backend import frames
from backend.decisions import decide


def test_skill_scores_average_tasks_of_the_primary_metric(scored_run):
    s, run_id = scored_run
    df = frames.skill_scores(s, run_id)
    assert list(df.columns) == frames.SCORE_COLUMNS
    copy = df[(df["skill"] == "copy") & (df["step"] == 10)].iloc[0]
    assert copy["value"] == pytest.approx((0.3 + 0.5) / 2)  # the loglik row is left out
    assert copy["stderr"] == pytest.approx(math.sqrt(0.03**2 + 0.04**2) / 2)
    assert copy["n"] == 100 and copy["tokens_seen"] == 640
    held = df[df["skill"] == "copy_holdout"]
    assert set(held["kind"]) == {"holdout"} and set(held["base"]) == {"copy"}


def test_capability_scores_carry_the_latent_interval_and_slope(scored_run):
    s, run_id = scored_run
    df = frames.capability_scores(s, run_id)
    assert list(df.columns) == frames.SCORE_COLUMNS + frames.SLOPE_COLUMNS
    row = df[(df["skill"] == "copy_holdout") & (df["step"] == 10)].iloc[0]
    assert row["value"] == pytest.approx(0.4) and (row["lo"], row["hi"]) == (0.2, 0.6)
    assert row["kind"] == "holdout" and row["base"] == "copy" and row["slope"] == 0.05
    assert row["stderr"] == pytest.approx(0.4 / 3.92)
    assert frames.capability_scores(s, 999).empty


def own_metric_rows() -> tuple[list[dict], dict[str, dict]]:
    """Measurement rows of five skills, each scored by its own metric, at
    steps 0 and 10, and their skill rows."""
    values = {"tr": ("bleu", [0.4, 12.0], 3.0), "post": ("ter", [231.0, 0.0], 20.0),
              "cls": ("mcc", [-0.3, 0.1], 0.1), "squad": ("f1", [0.3, 45.0], 2.0), "add": ("acc", [0.02, 0.99], 0.05)}
    rows = [{"skill": k, "kind": "steer", "step": 10 * i, "tokens_seen": 640 * i, "metric": m, "value": v,
             "stderr": se, "n": 50} for k, (m, vs, se) in values.items() for i, v in enumerate(vs)]
    return rows, {k: {"name": k, "base": k, "kind": "steer", "metric": m} for k, (m, _, _) in values.items()}


def test_a_band_is_clipped_to_0_1_only_for_a_score_in_range():
    rows, skills = own_metric_rows()
    df = frames.scores_frame(rows, skills).set_index(["skill", "step"])
    assert df.loc[("tr", 0), "metric"] == "bleu"
    unclipped = [("tr", 0), ("tr", 10), ("post", 10), ("cls", 0), ("squad", 10)]
    for key in unclipped:  # BLEU 12, TER 0, mcc < 0 and an f1 reported in 0-100: drawn as reported
        r = df.loc[key]
        assert (r["lo"], r["hi"]) == pytest.approx((r["value"] - 1.96 * r["stderr"], r["value"] + 1.96 * r["stderr"]))
    assert df.loc[("tr", 10), "hi"] > 1 and df.loc[("post", 10), "lo"] < 0 < df.loc[("cls", 10), "hi"] < 1
    assert (df.loc[("add", 0), "lo"], df.loc[("add", 10), "hi"]) == (0.0, 1.0)  # a score in [0, 1] as before
    assert (df.loc[("squad", 0), "lo"], df.loc[("squad", 0), "hi"]) == pytest.approx((0.0, 1.0))
    # smoothing keeps each skill's rule: BLEU's mean of 0.4 and 12 is not clipped at 1
    smoothed = frames.smooth(frames.scores_frame(rows, skills), 2).set_index(["skill", "step"])
    assert smoothed.loc[("tr", 10), "value"] == pytest.approx(6.2) and smoothed.loc[("tr", 10), "lo"] > 1
    assert smoothed.loc[("add", 0), "lo"] == 0.0 and smoothed.loc[("cls", 0), "lo"] < -0.3


def test_facet_frame_of_an_unbounded_metric_is_not_clipped():
    rows = [{**r, "task": r["skill"], "prompt_variant": "p0", "decoding": "greedy", "scorer": r["metric"]}
            for r in own_metric_rows()[0]]
    f = frames.facet_frame(rows, 10, "bleu")
    assert f["value"].tolist() == [12.0] and f["hi"].iloc[0] == pytest.approx(12 + 1.96 * 3)


def test_domain_losses(scored_run):
    s, run_id = scored_run
    df = frames.domain_losses(s, run_id)
    assert list(df["value"]) == [4.0, 3.0] and set(df["domain"]) == {"strings"}


def test_mixture_history_and_decisions(scored_run):
    s, run_id = scored_run
    pid = s.add_proposal(run_id, step=10, strategy="deficit", current_weights={"strings": 0.5, "noise": 0.5},
                         weights={"strings": 0.8, "noise": 0.2}, rationale={"strings": "up", "noise": "down"},
                         forecast={"copy": {"score": 0.4, "expected": 0.5}})
    decide(s, pid, "approve", by="ada")
    s.apply_approved(run_id, step=10, tokens_at=640)
    h = frames.mixture_history(s.schedule(run_id), end_step=20)
    assert list(h["from_step"].unique()) == [0, 10] and list(h["to_step"].unique()) == [10, 20]
    assert h[(h["from_step"] == 10) & (h["domain"] == "strings")]["decided_by"].item() == "ada"
    d = frames.decisions_table(s.proposals(run_id))
    assert d.iloc[0]["status"] == "applied" and d.iloc[0]["applied at step"] == 10
    assert d.iloc[0]["decided by"] == "ada"
    assert d["proposal"].dtype == "Int64" and d.iloc[0]["proposal"] == pid  # an id, never 1.000
    assert (d["decided at"] == d["decided at"].dt.floor("s")).all()  # whole seconds
    f = frames.forecast_intervals(s.proposal(pid)["forecast"], [])
    assert f.iloc[0]["expected next"] == 0.5 and math.isnan(f.iloc[0]["lo"])
    assert f.iloc[0]["interval"] == "no forecast scored yet"


def test_forecast_intervals_come_from_own_sd_else_past_errors():
    forecast = {"copy": {"score": 0.4, "expected": 0.5}, "add2": {"score": 0.1, "expected": 0.2},
                "sort": {"score": 0.3, "expected": 0.3, "sd": 0.01}}
    errors = [{"skill": "copy", "error": e} for e in (0.1, -0.1, 0.1)] + [{"skill": "add2", "error": 0.4}]
    f = frames.forecast_intervals(forecast, errors).set_index("skill")
    assert f.loc["copy", "lo"] == pytest.approx(0.5 - 1.96 * 0.1)  # its own 3 errors: RMS 0.1
    assert f.loc["copy", "interval"] == "RMS of 3 past errors of copy"
    pooled = math.sqrt((3 * 0.01 + 0.16) / 4)  # add2 has 1 error (< 3): every skill's
    assert f.loc["add2", "hi"] == pytest.approx(min(1.0, 0.2 + 1.96 * pooled))
    assert f.loc["add2", "lo"] == 0.0  # clipped
    assert f.loc["sort", "hi"] == pytest.approx(0.3 + 1.96 * 0.01)


def test_train_curves_and_ema(scored_run):
    s, run_id = scored_run
    assert list(frames.train_curves(s, run_id).columns) == frames.TRAIN_COLUMNS
    s.add_train_log(run_id, [{"step": k, "tokens_seen": 64 * k, "loss": 4.0 - k / 10, "lr": 1e-3,
                              "grad_norm": None, "tokens_per_s": 100.0} for k in (1, 2, 3)])
    df = frames.train_curves(s, run_id)
    assert df["step"].tolist() == [1, 2, 3] and df["grad_norm"].isna().all()
    y = pd.Series([1.0, 2.0, np.nan, 4.0])
    assert frames.ema(y, 0.0) is y
    sm = frames.ema(y, 0.5)
    assert sm[0] == 1.0  # debiased: the first point is its own value, not pulled to 0
    assert sm[1] == pytest.approx((0.25 * 1 + 0.5 * 2) / 0.75) and math.isnan(sm[2])


def test_tokens_per_domain_sums_weight_times_steps():
    h = frames.mixture_history([{"from_step": 0, "tokens_at": 0, "weights": {"a": 0.5, "b": 0.5}, "source": "initial"},
                                {"from_step": 10, "tokens_at": 100, "weights": {"a": 1.0, "b": 0.0}, "source": "manual"}],
                               end_step=None)
    t = frames.tokens_per_domain(h, tokens_per_step=10, end_step=15)
    last = t[t["step"] == 15].set_index("domain")["tokens"]
    assert last["a"] == 10 * 10 * 0.5 + 5 * 10 * 1.0 and last["b"] == 50
    assert (t[t["step"] == 0]["tokens"] == 0).all()


def test_skill_badges_against_chance():
    df = scores_df(skills=("copy", "add2"), steps=[0, 40])  # copy 0.4 +- 0.098, add2 0.5 +- 0.098
    b = frames.skill_badges(df, {"copy": 0.35, "add2": 0.1})
    assert b == {"copy": "at chance", "add2": "learning"}


def test_weights_table():
    t = frames.weights_table({"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.3}, {"a": "more", "b": "less"})
    assert list(t.columns) == ["domain", "current", "proposed", "change", "reason"]
    assert t["change"].round(3).tolist() == [0.2, -0.2]


# -- transforms --------------------------------------------------------------------


def test_thin_keeps_first_and_last_and_at_most_max_points():
    df = scores_df(steps=range(0, 1000))
    out = frames.thin(df, 50)
    steps = sorted(out["step"].unique())
    assert len(steps) <= 50 and steps[0] == 0 and steps[-1] == 999
    assert len(frames.thin(df, 5000)) == len(df)


def test_smooth_is_a_rolling_mean_with_a_narrower_band():
    df = scores_df(skills=("copy",), holdout=False, steps=range(0, 50, 10))
    out = frames.smooth(df, 3).set_index("step")
    assert out.loc[20, "value"] == pytest.approx(np.mean([0.0, 0.1, 0.2]))
    assert out.loc[20, "stderr"] == pytest.approx(0.05 / math.sqrt(3))
    assert out.loc[20, "hi"] == pytest.approx(0.1 + 1.96 * 0.05 / math.sqrt(3))
    assert out.loc[0, "stderr"] == pytest.approx(0.05)
    assert frames.smooth(df, 1) is df


def test_tokens_to_reach():
    df = pd.concat([scores_df(skills=("copy",)).assign(run="a"),
                    scores_df(skills=("copy",), tokens_per_step=200).assign(run="b")])
    r = frames.tokens_to_reach(df, 0.3)
    got = {(x.run, x.skill): x.tokens_seen for x in r.itertuples()}
    assert got[("a", "copy")] == 3000 and got[("b", "copy")] == 6000
    assert got[("a", "copy_holdout")] == 4000  # 0.35 first at step 40
    assert frames.tokens_to_reach(df, 0.99)["tokens_seen"].isna().all()


def test_facet_frame_is_one_row_per_score_facet_at_the_step():
    f = frames.facet_frame(facet_rows(), 10)
    assert list(f.columns) == frames.FACET_COLUMNS
    assert len(f) == 4  # the answer loss is not a score in [0, 1]
    assert sorted(f["value"]) == [0.4, 0.5, 0.6, 0.9]
    assert f["lo"].tolist() == pytest.approx((f["value"] - 1.96 * f["stderr"]).tolist())
    assert "template2 · greedy · exact match" in set(f["facet"])
    assert "template0 · greedy · ll accuracy" in set(f["facet"])
    assert frames.facet_frame(facet_rows(), 20).empty
