"""backend/capability.py: the latent estimate on simulated measurements with
a known truth (binomial sampling of a logistic learning curve)."""

import math
import random

import pytest

from backend import capability
from backend.capability import estimate, kalman, template_offsets


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


def test_template_offsets_recover_a_harder_and_an_easier_template():
    rows, _ = simulate(5, n=200, templates=(-1.0, 0.0, 1.0))
    history = [[(round(r["value"] * r["n"]), r["n"]) for r in rows if r["step"] == s] for s in range(0, 1400, 100)]
    b = template_offsets(history)
    assert sum(b) == pytest.approx(0.0, abs=1e-9)
    assert b[0] < -0.6 and abs(b[1]) < 0.3 and b[2] > 0.6
    # nothing is learnt about offsets from checkpoints where every template scores 0
    assert template_offsets([[(0, 50), (0, 50), (0, 50)]] * 5) == pytest.approx([0.0, 0.0, 0.0])


def test_the_score_is_what_the_templates_ask_on_average():
    # with unequal templates the truth is the mean of the templates' scores
    err_raw3 = err_latent = 0.0
    for seed in range(10):
        rows, _ = simulate(seed, templates=(-1.5, 0.0, 1.5))
        est = estimate(rows, 1000)["s"]
        for t, e in enumerate(est):
            x = math.log(max(curve(t), 1e-9) / (1 - curve(t)))
            truth = sum(1 / (1 + math.exp(-(x + b))) for b in (-1.5, 0.0, 1.5)) / 3
            err_latent += abs(e["score"] - truth)
            err_raw3 += abs(e["raw_mean"] - truth)
    assert err_latent < err_raw3


def test_zero_counts_accumulate_toward_zero():
    rows = [{"step": s, "tokens_seen": s, "skill": "s", "metric": "exact_match", "value": 0.0, "n": 150}
            for s in range(0, 1000, 100)]
    est = estimate(rows, 100)["s"]
    # the estimate is the dead kind's mode, 0; its interval narrows as the zeros accumulate, with
    # no pseudo-count floor: ten checkpoints of 0/150 say less than 1/(2 x 150)
    assert all(e["score"] == 0.0 == e["lo"] for e in est)
    assert est[-1]["hi"] < est[0]["hi"] and est[-1]["hi"] < 1 / 300


def loss_rows(seed: int, checkpoints: int = 14):
    """One skill measured by a lower-is-better, unbounded metric: a loss
    falling from 3 to 0.5 nats/token, each checkpoint's mean over 50 items
    with its stderr."""
    rng = random.Random(seed)
    rows, truth = [], []
    for t in range(checkpoints):
        mu = 0.5 + 2.5 * math.exp(-t / 4)
        truth.append(mu)
        se = 0.5 * mu / math.sqrt(50)  # per-item losses spread half as much as their mean
        rows.append({"step": 100 * t, "tokens_seen": 1000 * t, "skill": "s", "metric": "answer_nll",
                     "value": mu + rng.gauss(0, se), "stderr": se, "n": 50})
    return rows, truth


def test_a_lower_is_better_metric_keeps_its_units_and_direction():
    err_raw = err_latent = covered = total = 0
    for seed in range(10):
        rows, truth = loss_rows(seed)
        est = estimate(rows, 1000, metric="answer_nll")["s"]
        assert all(not e["higher_is_better"] and e["lo"] <= e["score"] <= e["hi"] for e in est)
        # the loss falls, so its slope is negative while it falls
        assert all(e["slope"] < 0 for e in est[1:6])
        for e, r, mu in zip(est, rows, truth):
            err_raw += abs(r["value"] - mu)
            err_latent += abs(e["score"] - mu)
            covered += e["lo"] <= mu <= e["hi"]
            total += 1
    # a look this precise leaves smoothing little to gain; it must not cost much either
    assert err_latent < 1.1 * err_raw
    assert covered / total >= 0.9


def test_a_bounded_mean_metric_with_its_stderr_stays_within_0_and_1():
    rows, _ = simulate(4, checkpoints=10, templates=(0.0,))
    rows = [{**r, "metric": "ll_acc", "stderr": math.sqrt(max(r["value"] * (1 - r["value"]), 1e-4) / 50)}
            for r in rows]
    est = estimate(rows, 1000, metric="ll_acc")["s"]
    assert all(0 <= e["lo"] <= e["score"] <= e["hi"] <= 1 and e["higher_is_better"] for e in est)
    assert est[-1]["score"] > est[0]["score"] + 0.5


def looks(metric: str, values: list[float], stderrs: list[float | None]) -> list[dict]:
    """One skill's rows of `metric`, one per checkpoint."""
    return [{"step": 100 * t, "tokens_seen": 1000 * t, "skill": "s", "metric": metric, "value": v, "stderr": se,
             "n": 200} for t, (v, se) in enumerate(zip(values, stderrs))]


def as_the_loop_sees_it(rows: list[dict], **kw) -> list[dict]:
    """The estimate of each checkpoint from the rows up to it (what the
    worker stores at that checkpoint)."""
    return [estimate([r for r in rows if r["step"] <= last["step"]], 1000, **kw)["s"][-1] for last in rows]


def test_bleu_is_estimated_on_its_own_scale_from_the_first_checkpoint():
    rows = looks("bleu", [0, 0.4, 12, 25, 30, 62], [0.2, 0.3, 1.5, 2, 2, 2.5])
    stored = as_the_loop_sees_it(rows, metric="bleu")
    # one scale at every step: the stored estimates are the full history's, and (Gaussian on the
    # raw scale) symmetric about the score, not a logit's squeezed into [0, 1]
    assert stored == estimate(rows, 1000, metric="bleu")["s"]
    for e, r in zip(stored, rows):
        assert e["hi"] - e["score"] == pytest.approx(e["score"] - e["lo"])
        assert abs(e["score"] - r["value"]) < 2 * r["stderr"]
    assert stored[0]["lo"] < 0 < stored[0]["hi"] < 1  # BLEU 0 +- 0.2, not a score's [0, 0.98]
    assert stored[-1]["hi"] > 60


def test_a_lower_is_better_metric_that_reaches_0_is_estimated_as_reported():
    rows = looks("ter", [231, 120, 0, 80], [10, 8, 0.5, 5])
    est = estimate(rows, 1000, metric="ter", higher_is_better=False)["s"]
    assert all(math.isfinite(e[k]) for e in est for k in ("score", "lo", "hi", "slope"))
    assert [not e["higher_is_better"] for e in est] == [True] * 4
    assert est[0]["score"] == pytest.approx(231, abs=1) and est[2]["lo"] < 0 < est[2]["hi"] < 2
    assert est[3]["slope"] < 0  # TER falling
    # without stderrs (10% of the value: a 0 is a sharp look) it still runs
    assert estimate(looks("ter", [0, 0, 50], [None] * 3), 1000, metric="ter", higher_is_better=False)["s"]


def test_mcc_of_either_sign_is_estimated_as_reported():
    rows = looks("mcc", [0.2, 0.3, -0.1, 0.4], [0.05] * 4)
    stored = as_the_loop_sees_it(rows, metric="mcc")
    assert stored == estimate(rows, 1000, metric="mcc")["s"]  # no logit while every value was in [0, 1]
    assert stored[2]["lo"] < stored[2]["score"] < 0.05


def test_a_score_reported_outside_0_1_ends_its_estimates_there():
    # f1 is a [0, 1] score by name, but squad_v2 reports it in 0-100
    rows = looks("f1", [0.2, 0.35, 45.0, 0.5], [0.03] * 4)
    est = estimate(rows, 1000, metric="f1")["s"]
    assert est == estimate(rows[:2], 1000, metric="f1")["s"]  # the ones before it stand, on the logit scale
    assert capability.off_range(rows, "f1") == rows[2] and capability.off_range(rows[:2], "f1") is None
    assert estimate(rows[2:], 1000, metric="f1") == {}  # nothing in range: no estimate
    nan = looks("acc", [0.2, math.nan, 0.4], [0.03] * 3)
    assert [e["step"] for e in estimate(nan, 1000, metric="acc")["s"]] == [0]


def test_estimate_is_causal():
    rows, _ = simulate(7, templates=(-0.5, 0.0, 0.5))
    full = estimate(rows, 1000, chance={"s": 0.1})["s"]
    early = estimate([r for r in rows if r["step"] <= 500], 1000, chance={"s": 0.1})["s"]
    # later checkpoints never change an earlier estimate (the loop acts on these)
    for a, b in zip(early, full):
        assert a == b
    assert len(early) == 6


def test_other_metrics_and_unlisted_skills_are_ignored():
    rows, _ = simulate(2, checkpoints=3)
    rows.append({**rows[0], "metric": "ll_acc", "value": 1.0})
    rows.append({**rows[0], "skill": "other"})
    assert set(estimate(rows, 1000, skills=["s"])) == {"s"}
    assert estimate(rows, 1000, skills=["s"])["s"] == estimate(rows[:-2], 1000)["s"]
    assert kalman([], 1000) == []


def plateau_rows(scores: list[float], n: int = 50, seed: int = 0) -> list[dict]:
    """Exact-match rows of one skill whose pooled score over 3 templates of
    n items is given per checkpoint (each template its share of the right
    answers; a score of None draws binomial counts at 0.5 instead)."""
    rng = random.Random(seed)
    rows = []
    for t, p in enumerate(scores):
        ks = [sum(rng.random() < 0.5 for _ in range(n)) for _ in range(3)] if p is None else \
            [round(p * 3 * n) // 3 + (j < round(p * 3 * n) % 3) for j in range(3)]
        rows += [{"step": 100 * t, "tokens_seen": 1000 * t, "skill": "s", "metric": "exact_match",
                  "value": k / n, "n": n, "prompt_variant": f"template{j}"} for j, k in enumerate(ks)]
    return rows


def test_a_skill_at_chance_is_estimated_at_chance_with_a_tight_interval():
    # an untrained model answers nothing, then guesses a coin flip's answer for 12 checkpoints
    err_chance = err_blind = err_raw3 = width = 0.0
    for seed in range(10):
        rows = plateau_rows([0.0] + [None] * 12, seed=seed)
        with_chance = estimate(rows, 1000, chance={"s": 0.5})["s"]
        blind = estimate(rows, 1000)["s"]
        for e, b in zip(with_chance[2:], blind[2:]):
            err_chance += abs(e["score"] - 0.5)
            err_blind += abs(b["score"] - 0.5)
            err_raw3 += abs(e["raw_mean"] - 0.5)
            width += (e["hi"] - e["lo"]) / 11 / 10
    assert err_chance < 0.4 * err_raw3 and err_chance < err_blind
    # 150 answers at 0.5 alone give a 95% interval 0.16 wide
    assert width < 0.1


def test_one_noisy_checkpoint_on_a_plateau_is_not_taken_for_a_jump(monkeypatch):
    # 0.5 for eight checkpoints, then 92 of 150 (2.8 binomial sds above), then 0.5 again
    rows = plateau_rows([0.5] * 8 + [92 / 150, 0.5])
    est = estimate(rows, 1000)["s"]
    # under half the way to the reading, its interval still reaching 0.5, and back
    assert est[8]["score"] < 0.56 and est[8]["lo"] < 0.5 and est[9]["score"] < 0.53
    # knowing the skill's chance is 0.5 holds it closer still
    assert estimate(rows, 1000, chance={"s": 0.5})["s"][8]["score"] < 0.54
    # the gated Kalman filters alone (the estimator before the segments) re-based on it
    monkeypatch.setattr(capability, "SEGMENTS", False)
    assert estimate(rows, 1000)["s"][8]["score"] > 0.58


def test_a_blip_near_zero_does_not_linger():
    # nothing right, 2 of 150 once, then nothing right again
    est = estimate(plateau_rows([0.0] * 5 + [2 / 150] + [0.0] * 4), 1000)["s"]
    assert est[5]["lo"] < 2 / 150 < est[5]["hi"]
    assert all(e["score"] < 0.002 and e["hi"] < 0.01 for e in est[7:])


def test_a_long_run_keeps_the_segment_hypotheses_bounded():
    points = capability._binary_points(plateau_rows([None] * 80))
    sizes = [(len(w), len(u)) for w, _, _, _, u, *_ in capability._segments(points, 1000, chance=0.5)]
    # three Beta kinds and the trend per start, starts older than SEGMENT_MEMORY checkpoints merged
    # into one per kind
    assert max(b for b, _ in sizes) <= 3 * (capability.SEGMENT_MEMORY + 2)
    assert max(t for _, t in sizes) <= capability.SEGMENT_MEMORY + 2
    est = estimate(plateau_rows([None] * 80), 1000, chance={"s": 0.5})["s"]
    assert abs(est[-1]["score"] - 0.5) < 0.03 and est[-1]["hi"] - est[-1]["lo"] < 0.1


def test_without_data_every_kind_of_segment_keeps_its_prior_share():
    # a checkpoint that measured nothing moves no weight between the kinds: a segment begun
    # before it is of each kind with the kind's prior probability (the frozen b11d626 gave a
    # fresh trend segment weight 1 - stay instead of (1 - stay) x its share: 0.39, not 0.32)
    points = [{"counts": [(0.0, 0.0)], "tokens_seen": 1000 * t} for t in range(6)]
    trend = (1 - capability.DEAD_PRIOR - capability.CHANCE_PRIOR) * capability.TREND_SHARE
    for ws, _, _, dead, us, *_ in capability._segments(points, 1000, chance=0.5):
        assert ws[dead].sum() == pytest.approx(capability.DEAD_PRIOR)
        assert us.sum() == pytest.approx(trend)
        assert ws.sum() + us.sum() == pytest.approx(1.0)


def climb_rows(seed: int, checkpoints: int = 12, n: int = 50) -> tuple[list[dict], list[float]]:
    """Exact-match rows of a skill at 0.1 for three checkpoints, then
    climbing by 0.04 per checkpoint to 0.5 (kv_recall's steady climb on
    demo seeds 3 and 5), 3 templates of n items each."""
    rng = random.Random(seed)
    rows, truth = [], []
    for t in range(checkpoints):
        p = 0.1 if t < 3 else min(0.1 + 0.04 * (t - 2), 0.5)
        truth.append(p)
        rows += [{"step": 100 * t, "tokens_seen": 1000 * t, "skill": "s", "metric": "exact_match",
                  "value": sum(rng.random() < p for _ in range(n)) / n, "n": n, "prompt_variant": f"template{j}"}
                 for j in range(3)]
    return rows, truth


def test_trend_segments_follow_a_steady_climb(monkeypatch):
    def errors():
        err, err_raw3, covered, total = 0.0, 0.0, 0, 0
        for seed in range(20):
            rows, truth = climb_rows(seed)
            for e, p in zip(estimate(rows, 1000)["s"], truth):
                err += abs(e["score"] - p)
                err_raw3 += abs(e["raw_mean"] - p)
                covered += e["lo"] <= p <= e["hi"]
                total += 1
        return err, err_raw3, covered / total

    err, err_raw3, coverage = errors()
    assert err < 0.9 * err_raw3 and coverage >= 0.9
    # level segments alone lag the climb
    monkeypatch.setattr(capability, "TREND_SHARE", 0.0)
    assert errors()[0] > 1.1 * err
