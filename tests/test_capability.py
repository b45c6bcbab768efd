"""backend/capability.py: the latent estimate on simulated measurements with
a known truth (binomial sampling of a logistic learning curve)."""

import math
import random

import pytest

from backend.capability import estimate, kalman, observation, template_spread


def curve(t: int) -> float:
    """A learning curve: near 0, a rise around checkpoint 6, near 0.95."""
    return 0.95 / (1 + math.exp(-(t - 6) / 1.5))


def simulate(seed: int, n: int = 50, checkpoints: int = 14, templates=(0.0, 0.0, 0.0)):
    """Measurement rows of one skill: per checkpoint, one exact-match score
    per template (template offsets in logit units), n items each."""
    rng = random.Random(seed)
    rows, truth = [], []
    for t in range(checkpoints):
        p = curve(t)
        truth.append(p)
        for j, off in enumerate(templates):
            q = 1 / (1 + math.exp(-(math.log(max(p, 1e-9) / max(1 - p, 1e-9)) + off))) if 0 < p < 1 else p
            k = sum(rng.random() < q for _ in range(n))
            rows.append({"step": 100 * t, "tokens_seen": 1000 * t, "skill": "s", "metric": "exact_match",
                         "value": k / n, "n": n, "prompt_variant": f"template{j}"})
    return rows, truth


def test_latent_error_is_below_the_single_template_error_and_covers_the_truth():
    err_raw = err_latent = covered = total = 0
    for seed in range(20):
        rows, truth = simulate(seed)
        est = estimate(rows, 1000)["s"]
        assert [e["step"] for e in est] == [100 * t for t in range(len(truth))]
        for e, p in zip(est, truth):
            raw = next(r["value"] for r in rows if r["step"] == e["step"] and r["prompt_variant"] == "template0")
            err_raw += abs(raw - p)
            err_latent += abs(e["score"] - p)
            covered += e["lo"] <= p <= e["hi"]
            total += 1
    assert err_latent < 0.7 * err_raw
    assert covered / total >= 0.9


def test_interval_narrows_with_more_items():
    rows_small, _ = simulate(1, n=20)
    rows_big, _ = simulate(1, n=500)
    small = estimate(rows_small, 1000)["s"][-1]
    big = estimate(rows_big, 1000)["s"][-1]
    assert (big["hi"] - big["lo"]) < (small["hi"] - small["lo"])


def test_zero_scores_stay_near_zero_with_a_finite_interval():
    rows = [{"step": s, "tokens_seen": s, "skill": "s", "metric": "exact_match", "value": 0.0, "n": 50}
            for s in range(0, 500, 100)]
    est = estimate(rows, 100)["s"]
    assert all(e["score"] < 0.01 and 0 <= e["lo"] <= e["score"] <= e["hi"] < 0.2 for e in est)


def test_slope_is_positive_while_learning_and_its_interval_excludes_zero():
    rows, truth = simulate(3, n=200)
    est = estimate(rows, 1000)["s"]
    mid = next(e for e in est if e["step"] == 800)  # on the steep part of the curve
    assert mid["slope"] > 0 and mid["slope_lo"] > 0
    assert mid["slope_per_token"] == pytest.approx(mid["slope"] / 1000)


def test_template_spread_widens_the_interval():
    even, _ = simulate(5, templates=(0.0, 0.0, 0.0))
    spread, _ = simulate(5, templates=(-1.5, 0.0, 1.5))
    assert template_spread([[(r["value"], r["n"]) for r in spread if r["step"] == s]
                            for s in range(0, 1400, 100)]) > 0.3
    e_even = estimate(even, 1000)["s"][7]
    e_spread = estimate(spread, 1000)["s"][7]
    assert (e_spread["hi"] - e_spread["lo"]) > (e_even["hi"] - e_even["lo"])


def test_observation_pools_template_counts():
    y, r = observation([(0.5, 50), (0.5, 50)], tau2=0.0)
    assert y == pytest.approx(0.0)
    # each template asks its own 50 items: the 100 answers pool
    assert r == pytest.approx(1 / (101 * 0.25))
    y1, r1 = observation([(0.5, 50)], tau2=0.0)
    assert r1 == pytest.approx(1 / (51 * 0.25))
    # the spread across templates is added once per template pooled
    assert observation([(0.5, 50), (0.5, 50)], tau2=0.4)[1] == pytest.approx(r + 0.2)


def test_estimate_is_causal():
    rows, _ = simulate(7)
    full = estimate(rows, 1000)["s"]
    early = estimate([r for r in rows if r["step"] <= 500], 1000)["s"]
    # later checkpoints never change an earlier estimate (the loop acts on these)
    for a, b in zip(early, full):
        assert a == b
    assert len(early) == 6


def test_other_metrics_and_unlisted_skills_are_ignored():
    rows, _ = simulate(2, checkpoints=3)
    rows.append({**rows[0], "metric": "ll_acc", "value": 1.0})
    rows.append({**rows[0], "skill": "other"})
    assert set(estimate(rows, 1000, skills=["s"])) == {"s"}
    assert kalman([], 1000) == []
