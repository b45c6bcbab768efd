"""bench/fidelity.py: the figures it reports from saved runs (no training)."""

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import fidelity  # noqa: E402


def row(truth: float, latent: float, half: float, raw: float | None = None) -> dict:
    return {"step": 0, "skill": "s", "truth": truth, "raw": truth if raw is None else raw, "raw3": truth,
            "latent": latent, "lo": latent - half, "hi": latent + half}


def test_coverage_adds_the_truths_sampling_error_in_quadrature():
    # truth 0.5 over 2,000 items: its Wilson half-width is about 0.022
    t_half = 0.5 - fidelity.wilson(0.5, 2000)[0]
    assert t_half == pytest.approx(1.96 * math.sqrt(0.25 / 2000), rel=0.01)
    half = 0.03
    inside = 0.5 + 0.99 * math.hypot(half, t_half)
    outside = 0.5 + 1.01 * math.hypot(half, t_half)
    assert fidelity.covered(row(0.5, inside, half), 2000)
    assert not fidelity.covered(row(0.5, outside, half), 2000)
    # the looser rule (intervals overlapping) would have counted the miss
    r = row(0.5, outside, half)
    assert r["lo"] <= fidelity.wilson(0.5, 2000)[1]


def test_a_truth_of_zero_is_covered_by_an_interval_near_it():
    # a logit-space interval never reaches 0; the truth's own interval does
    assert fidelity.covered(row(0.0, 0.001, 0.0009), 2000)
    assert not fidelity.covered(row(0.0, 0.05, 0.01), 2000)


def test_figures_report_ratios_to_both_raw_numbers():
    rows = [row(0.5, 0.51, 0.05, raw=0.56), {**row(0.2, 0.2, 0.05, raw=0.2), "raw3": 0.24}]
    f = fidelity.figures(rows, 2000)
    assert f["mae_latent"] == pytest.approx(0.005)
    assert f["ratio_latent_raw"] == pytest.approx(0.005 / 0.03)
    assert f["ratio_latent_raw3"] == pytest.approx(0.005 / 0.02)
    assert f["coverage"] == 1.0 and f["pairs"] == 2


def test_saved_runs_are_named_by_preset_and_seed():
    assert fidelity.saved_path("demo", 0).name == "fidelity.json"
    assert fidelity.saved_path("demo", 3).name == "fidelity-seed3.json"
    assert fidelity.saved_path("demo-c50", 1).name == "fidelity-c50-seed1.json"


def test_seeds_rescore_saved_runs_and_name_a_missing_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fidelity, "saved_path", lambda preset, seed: tmp_path / f"run{seed}.json")
    ms = [{"step": s, "tokens_seen": 10 * s, "skill": "s", "metric": "exact_match", "value": 0.5, "n": 50,
           "prompt_variant": f"template{j}"} for s in (0, 100) for j in (0, 2, 3)]
    saved = {"summary": {"truth_items": 2000}, "tokens_per_checkpoint": 1000, "measurements": ms,
             "rows": [row(0.5, 0.0, 0.0) | {"step": s, "raw": 0.4, "raw3": 0.45} for s in (0, 100)]}
    (tmp_path / "run0.json").write_text(json.dumps(saved))
    out = tmp_path / "table.json"
    fidelity.seeds("demo", [0], str(out))
    table = json.loads(out.read_text())["figures"]
    # the saved latent (0.0) is replaced by the current estimator's (about 0.5)
    assert table["0"]["mae_latent"] < 0.05 and table["pooled"] == table["0"]
    # the one skill carries all of the latent error; its raw3 is 0.05 off, the latent much less
    by_skill = json.loads(out.read_text())["by_skill"]
    assert by_skill["s"]["share_of_mae_latent"] == pytest.approx(1.0) and by_skill["s"]["ratio_latent_raw3"] < 0.5
    assert "| ratio latent / raw3" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="seed 1 of preset demo"):
        fidelity.seeds("demo", [0, 1], None)


def test_chance_levels_are_the_skills_tables_and_skip_unknown_skills():
    ms = [{"skill": "parity"}, {"skill": "parity_holdout"}, {"skill": "s"}, {"skill": None}]
    levels = fidelity.chance_levels(ms, 0)
    assert set(levels) == {"parity", "parity_holdout"}
    assert abs(levels["parity"] - 0.5) < 0.05


def test_loss_bound_fits_the_loss_to_the_truth(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fidelity, "saved_path", lambda preset, seed: tmp_path / f"run{seed}.json")
    steps, truths = (0, 100, 200, 300), (0.0, 0.1, 0.3, 0.6)
    # the loss is an exact logistic function of the truth: the fit recovers it
    ms = [{"step": s, "skill": "s", "metric": "answer_nll", "value": math.exp(-math.log(t / (1 - t)) / 2)
           if t else 9.0} for s, t in zip(steps, truths)]
    rows = [{"step": s, "skill": "s", "truth": t, "raw3": t + 0.02} for s, t in zip(steps, truths)]
    (tmp_path / "run0.json").write_text(json.dumps({"summary": {"skills": ["s"]}, "rows": rows,
                                                    "measurements": ms}))
    out = tmp_path / "bound.json"
    fidelity.loss_bound("demo", [0], str(out))
    f = json.loads(out.read_text())["loss_bound"]["0/s"]
    assert f["mae_raw3"] == pytest.approx(0.02) and f["mae_loss_fitted_to_truth"] < 1e-6
    assert "beats raw3 on 1 of 1" in capsys.readouterr().out


def test_set_changes_an_estimator_constant_and_names_a_bad_one(monkeypatch):
    from backend import capability

    monkeypatch.setattr(capability, "TREND_NOISE", capability.TREND_NOISE)
    fidelity.set_constant("TREND_NOISE=(0.02, 0.005)")
    assert capability.TREND_NOISE == (0.02, 0.005)
    for bad in ("NO_SUCH_CONSTANT=1", "TREND_NOISE", "TREND_NOISE=abc", "math=1"):
        with pytest.raises(SystemExit, match="--set"):
            fidelity.set_constant(bad)
