"""The published anchors (doremi, odm, mixing-law) on hand-built histories:
the rule each paper gives, the shared constraints, a rationale and a
forecast per proposal, and no state between calls."""

import copy
import math
import re

import numpy as np
import pytest
from conftest import check_constraints, check_rationale_lines

from backend.config import ConfigError, ControllerConfig, preset
from backend.controllers import STRATEGIES, History, make_strategy, propose
from backend.controllers.constraints import apply_constraints
from backend.controllers.forecast import SLOPE_BASIS
from backend.controllers.mixing_law import RIDGE, MixingLaw, MixingLawSettings, predict
from backend.controllers.odm import ALPHA, exploration

DOMAINS = ["strings", "arithmetic", "noise"]
SKILL_DOMAINS = {"copy": ["strings"], "add2": ["arithmetic"]}
UNIFORM = dict.fromkeys(DOMAINS, 1 / 3)
ANCHORS = ["doremi", "odm", "mixing-law"]
FREE = {"smoothing": 0.0, "floor": 0.0, "cap": 1.0, "max_change": 1.0}  # constraints that change nothing
TOKENS = 1000  # tokens per checkpoint; checkpoints every 10 steps


def series(*values, n=200):
    return [{"step": 10 * i, "tokens_seen": TOKENS * i, "value": v, "stderr": 0.05, "n": n}
            for i, v in enumerate(values)]


def losses(**per_domain):
    """Domain -> held-out loss per checkpoint (steps 0, 10, 20, ...)."""
    return {d: [{"step": 10 * i, "tokens_seen": TOKENS * i, "value": v, "stderr": 0.01, "n": 16}
                for i, v in enumerate(vs)] for d, vs in per_domain.items()}


def mixtures(*weights):
    """The mixture trained in the stretch ending at each checkpoint (step 0: the initial one)."""
    return [{"step": 10 * i, "tokens_seen": TOKENS * i, "weights": dict(zip(DOMAINS, w))}
            for i, w in enumerate(weights)]


def history(scores=None, domain_loss=None, mix=None, estimates=None, **kw) -> History:
    return History(domains=DOMAINS, skill_domains=SKILL_DOMAINS, scores=scores or {},
                   domain_loss=domain_loss or {}, checkpoint_tokens=TOKENS, mixtures=mix or [],
                   estimates=estimates or {}, **kw)


def rich_history() -> History:
    """Four checkpoints with scores, domain losses and varied mixtures:
    enough for every anchor to act."""
    return history(
        scores={"copy": series(0.1, 0.3, 0.4, 0.55), "add2": series(0.1, 0.15, 0.3, 0.35)},
        domain_loss=losses(strings=[3.0, 2.6, 2.3, 2.1], arithmetic=[3.0, 2.8, 2.9, 3.0],
                           noise=[4.0, 3.9, 3.9, 3.9]),
        mix=mixtures((1 / 3, 1 / 3, 1 / 3), (0.5, 0.3, 0.2), (0.3, 0.5, 0.2), (0.4, 0.3, 0.3)),
    )


def strategy(name, **kw):
    cfg = ControllerConfig(**{"strategy": name, **kw})
    return make_strategy(cfg), cfg


def proposal(strategy_cfg, h, current):
    """What the loop stores: the strategy's proposal through controllers.propose."""
    strat, cfg = strategy_cfg
    return propose(strat, h, current, cfg)


# -- every anchor -------------------------------------------------------------------


def test_anchors_are_registered_and_configurable():
    assert set(ANCHORS) <= set(STRATEGIES)
    for name in ANCHORS:
        assert make_strategy(ControllerConfig(strategy=name)).name == name
        d = preset("tiny").to_dict()
        d["controller"]["strategy"] = name
        preset("tiny").replace(controller=d["controller"])  # validates


@pytest.mark.parametrize("step, message", [
    (-10, "controller.reference_step: must be >= 0"),
    (15, "controller.reference_step: 15 is not a checkpoint"),  # tiny: checkpoints every 10 steps
    (30, "controller.reference_step: 30 is not a checkpoint"),  # the last one steers nothing
])
def test_reference_step_must_be_a_checkpoint_to_steer_from(step, message):
    d = preset("tiny").to_dict()
    d["controller"].update(strategy="doremi", reference_step=step)
    with pytest.raises(ConfigError, match=message):
        preset("tiny").replace(controller=d["controller"])
    d["controller"]["reference_step"] = 20
    assert preset("tiny").replace(controller=d["controller"]).controller.reference_step == 20


@pytest.mark.parametrize("name", ANCHORS)
@pytest.mark.parametrize("current", [
    UNIFORM,
    {"strings": 0.7, "arithmetic": 0.28, "noise": 0.02},
    {"strings": 0.02, "arithmetic": 0.02, "noise": 0.96},  # already above the cap
])
def test_weights_sum_to_one_and_obey_constraints(name, current):
    strat, cfg = strategy(name, floor=0.02, cap=0.7, max_change=0.25)
    for h in (rich_history(), history()):  # with history and with none
        p = propose(strat, h, current, cfg)
        assert abs(sum(p.weights.values()) - 1) < 1e-12
        assert all(cfg.floor - 1e-9 <= v <= cfg.cap + 1e-9 for v in p.weights.values())
        if max(current.values()) <= cfg.cap:  # an infeasible current mixture drops the step limit
            check_constraints(p.weights, current, cfg)


@pytest.mark.parametrize("name", ANCHORS)
def test_same_history_same_proposal(name):
    # stateless: a resumed worker (a fresh instance on the same History) proposes the same
    h = rich_history()
    first = proposal(strategy(name), h, UNIFORM)
    again = proposal(strategy(name), copy.deepcopy(h), dict(UNIFORM))
    same_instance, cfg = strategy(name)
    propose(same_instance, h, UNIFORM, cfg)
    third = propose(same_instance, h, UNIFORM, cfg)
    assert first.weights == again.weights == third.weights
    assert first.rationale == again.rationale and first.forecast == again.forecast


@pytest.mark.parametrize("name", ANCHORS)
def test_rationale_has_one_line_per_domain_with_the_change(name):
    p = proposal(strategy(name), rich_history(), UNIFORM)
    check_rationale_lines(p, UNIFORM)
    assert all(re.match(r"\d\.\d{3} -> \d\.\d{3}: ", line) for line in p.rationale.values())


@pytest.mark.parametrize("name", ANCHORS)
def test_forecast_per_steer_skill(name):
    h = rich_history()
    p = proposal(strategy(name), h, UNIFORM)
    latent = h.latent()
    assert set(p.forecast) == {"copy", "add2"}
    for s, f in p.forecast.items():
        assert f["score"] == pytest.approx(latent[s][-1]["score"])
        assert 0.0 <= f["expected"] <= 1.0
        assert isinstance(f["basis"], str) and f["basis"]


# -- doremi ----------------------------------------------------------------------------


def test_doremi_raises_the_domain_with_the_largest_excess_loss():
    strat, cfg = strategy("doremi")
    # reference: step 10; by step 20 strings fell, arithmetic rose most, noise a little
    h = history(domain_loss=losses(strings=[4.0, 3.0, 2.5], arithmetic=[4.0, 3.0, 3.4], noise=[4.5, 4.0, 4.1]),
                mix=mixtures(*[(1 / 3,) * 3] * 3))
    p = propose(strat, h, UNIFORM, cfg)
    check_constraints(p.weights, UNIFORM, cfg)
    assert p.weights["arithmetic"] > 1 / 3
    assert p.weights["arithmetic"] > p.weights["noise"] > p.weights["strings"]
    assert "excess +0.400, clipped 0.400" in p.rationale["arithmetic"]
    assert "excess -0.500, clipped 0.000" in p.rationale["strings"]
    assert "reference 3.000 (step 10)" in p.rationale["strings"]


def test_doremi_is_the_papers_rule_time_averaged():
    strat, cfg = strategy("doremi", **FREE)
    h = History(domains=["a", "b"], skill_domains={}, scores={}, checkpoint_tokens=TOKENS,
                domain_loss={"a": [{"step": s, "value": v} for s, v in [(0, 5.0), (10, 2.0), (20, 3.0), (30, 2.5)]],
                             "b": [{"step": s, "value": v} for s, v in [(0, 5.0), (10, 2.0), (20, 1.5), (30, 2.0)]]},
                mixtures=[{"step": 0, "tokens_seen": 0, "weights": {"a": 0.6, "b": 0.4}}])
    eta, c = 1.0, 1e-3
    alpha, alphas = np.array([0.6, 0.4]), []
    for lam in ([1.0, 0.0], [0.5, 0.0]):  # excess over step 10, clipped at 0
        alpha = alpha * np.exp(eta * np.array(lam))
        alpha = (1 - c) * alpha / alpha.sum() + c / 2
        alphas.append(alpha)
    expected = np.mean(alphas, axis=0)
    p = propose(strat, h, {"a": 0.5, "b": 0.5}, cfg)
    assert [p.weights["a"], p.weights["b"]] == pytest.approx(list(expected), abs=1e-12)
    assert "time average over 2 checkpoints" in p.rationale["a"]


def test_doremi_reference_the_model_has_passed_everywhere_gives_no_signal():
    strat, cfg = strategy("doremi")
    # every loss fell since the reference: the EG iterates stay at the initial mixture
    initial = (0.5, 0.3, 0.2)
    h = history(domain_loss=losses(strings=[4, 3, 2.5, 2.2], arithmetic=[4, 3, 2.8, 2.7], noise=[4.5, 4, 4, 4]),
                mix=mixtures(initial, (0.4, 0.4, 0.2), (0.4, 0.4, 0.2), (0.4, 0.4, 0.2)))
    current = {"strings": 0.4, "arithmetic": 0.4, "noise": 0.2}
    p = propose(strat, h, current, cfg)
    assert p.weights == pytest.approx(apply_constraints(dict(zip(DOMAINS, initial)), current, cfg), abs=1e-3)
    assert all("clipped 0.000" in line for line in p.rationale.values())


def test_doremi_waits_for_its_reference():
    strat, cfg = strategy("doremi")
    current = {"strings": 0.5, "arithmetic": 0.3, "noise": 0.2}
    p = propose(strat, history(domain_loss=losses(strings=[4], arithmetic=[4], noise=[4])), current, cfg)
    assert p.weights == pytest.approx(apply_constraints(current, current, cfg))
    assert "waiting for the reference checkpoint (the first checkpoint after step 0)" in p.rationale["noise"]
    at_ref = history(domain_loss=losses(strings=[4, 3], arithmetic=[4, 3], noise=[4, 3]))
    assert "no checkpoint after it yet" in propose(strat, at_ref, current, cfg).rationale["strings"]


def test_doremi_configured_reference_step():
    strat, cfg = strategy("doremi", reference_step=20)
    h = history(domain_loss=losses(strings=[4, 3, 2.5, 2.6], arithmetic=[4, 3, 2.8, 2.7], noise=[4.5, 4, 4, 4]),
                mix=mixtures(*[(1 / 3,) * 3] * 4))
    p = propose(strat, h, UNIFORM, cfg)
    assert "vs reference 2.500 (step 20): excess +0.100" in p.rationale["strings"]
    assert p.weights["strings"] > p.weights["arithmetic"]
    early = proposal(strategy("doremi", reference_step=30), h, UNIFORM)
    assert "no checkpoint after it yet" in early.rationale["strings"]
    assert "waiting for the reference checkpoint (step 40)" in \
        proposal(strategy("doremi", reference_step=40), h, UNIFORM).rationale["strings"]


def test_doremi_with_a_separately_trained_reference_steps_at_every_checkpoint():
    ref = {"strings": 2.0, "arithmetic": 2.9, "noise": 3.9}
    strat, cfg = strategy("doremi", reference_losses=ref, **FREE)
    h = history(domain_loss=losses(strings=[4, 3], arithmetic=[4, 3], noise=[4, 3.9]),
                mix=mixtures(UNIFORM.values()))
    # excess over the reference model: strings 1.0 and 2.0 before that, arithmetic 0.1 then 1.1, noise 0.1 then 0
    alpha, alphas = np.full(3, 1 / 3), []
    for lam in ([2.0, 1.1, 0.1], [1.0, 0.1, 0.0]):
        alpha = alpha * np.exp(np.array(lam))
        alpha = (1 - 1e-3) * alpha / alpha.sum() + 1e-3 / 3
        alphas.append(alpha)
    p = propose(strat, h, UNIFORM, cfg)
    assert [p.weights[d] for d in DOMAINS] == pytest.approx(list(np.mean(alphas, axis=0)), abs=1e-12)
    assert "vs reference 2.000 (reference model): excess +1.000" in p.rationale["strings"]
    waiting = propose(strat, history(mix=mixtures(UNIFORM.values())), UNIFORM, cfg)
    assert "no held-out domain losses of this run yet" in waiting.rationale["noise"]


@pytest.mark.parametrize("losses_, message", [
    ({"strings": 2.0, "add2": 1.0}, r"controller.reference_losses: needs exactly the domains .*unknown \['add2'\]"),
    ({"strings": 2.0, "arithmetic": 2.0, "noise": 2.0, "recall": 2.0, "logic": -1.0, "code": 1.0},
     "controller.reference_losses.logic: must be a finite loss > 0"),
    ({"strings": 2.0, "arithmetic": 2.0, "noise": float("nan"), "recall": 2.0, "logic": 1.0, "code": 1.0},
     "controller.reference_losses.noise: expected a finite number"),
])
def test_reference_losses_are_checked(losses_, message):
    d = preset("tiny").to_dict()
    d["controller"].update(strategy="doremi", reference_losses=losses_)
    with pytest.raises(ConfigError, match=message):
        preset("tiny").replace(controller=d["controller"])
    names = [x["name"] for x in d["data"]["domains"]]
    d["controller"]["reference_losses"] = dict.fromkeys(names, 2.5)
    assert preset("tiny").replace(controller=d["controller"]).controller.reference_losses["noise"] == 2.5


# -- odm ---------------------------------------------------------------------------------


def test_odm_exploration_decays_as_in_the_paper():
    k = 3
    assert exploration(k, 0) == 1 / k  # eps_0
    # full exploration until sqrt(ln K / (K t)) < 1/K, i.e. t > K ln K (3.3 steps)
    assert [exploration(k, t) for t in (1, 2, 3)] == [1 / k] * 3
    later = [exploration(k, t) for t in (4, 10, 100, 1000)]
    assert later == sorted(later, reverse=True) and later[0] < 1 / k
    assert exploration(k, 100) == pytest.approx(math.sqrt(math.log(3) / 300))


def test_odm_at_step_zero_explores_uniformly():
    strat, cfg = strategy("odm")
    current = {"strings": 0.6, "arithmetic": 0.3, "noise": 0.1}
    p = propose(strat, history(domain_loss=losses(strings=[5], arithmetic=[5], noise=[5])), current, cfg)
    assert p.weights == pytest.approx(apply_constraints(UNIFORM, current, cfg))
    assert "exploration 0.3333 at step 0" in p.rationale["strings"]


def test_odm_a_domain_with_higher_loss_gains_probability():
    strat, cfg = strategy("odm")
    h = history(domain_loss=losses(strings=[5, 2.0, 1.8], arithmetic=[5, 2.2, 2.0], noise=[5, 4.0, 4.0]),
                mix=mixtures(*[(1 / 3,) * 3] * 3))
    p = propose(strat, h, UNIFORM, cfg)
    check_constraints(p.weights, UNIFORM, cfg)
    assert p.weights["noise"] > 1 / 3 > p.weights["strings"]
    assert p.weights["noise"] > p.weights["arithmetic"] > p.weights["strings"]
    # the same losses 10x later in training: exploration eps_t has decayed, and
    # so has the eps_{t-1} that scales the (smoothed, not summed) reward in the
    # exponent, so the policy sits closer to uniform (see the module docstring)
    late = history(domain_loss={d: [{**m, "step": m["step"] * 10} for m in ms] for d, ms in h.domain_loss.items()},
                   mix=[{**m, "step": m["step"] * 10} for m in h.mixtures])
    q = propose(strat, late, UNIFORM, cfg)
    assert f"exploration {exploration(3, 20):.4f} at step 20" in p.rationale["noise"]
    assert f"exploration {exploration(3, 200):.4f} at step 200" in q.rationale["noise"]
    assert 1 / 3 < q.weights["noise"] < p.weights["noise"]


def test_odm_importance_weights_the_reward_by_the_share_trained():
    strat, cfg = strategy("odm", **FREE)
    # equal losses, but strings was trained at a small share: a larger reward estimate
    h = history(domain_loss=losses(strings=[5, 3.0], arithmetic=[5, 3.0], noise=[5, 3.0]),
                mix=mixtures((1 / 3,) * 3, (0.1, 0.45, 0.45)))
    p = propose(strat, h, UNIFORM, cfg)
    assert p.weights["strings"] > p.weights["arithmetic"] == pytest.approx(p.weights["noise"])
    # ten steps of smoothing from 0 toward loss / share = 3.0 / 0.1
    assert f"at share 0.100, reward estimate {(1 - ALPHA ** 10) * 30:.2f}" in p.rationale["strings"]


def test_odm_is_the_papers_rule():
    strat, cfg = strategy("odm", **FREE)
    h = History(domains=["a", "b"], skill_domains={}, scores={}, checkpoint_tokens=TOKENS,
                domain_loss={"a": [{"step": s, "value": v} for s, v in [(0, 6.0), (10, 3.0), (20, 2.0)]],
                             "b": [{"step": s, "value": v} for s, v in [(0, 6.0), (10, 2.0), (20, 2.5)]]},
                mixtures=[{"step": 0, "weights": {"a": 0.5, "b": 0.5}}, {"step": 10, "weights": {"a": 0.5, "b": 0.5}},
                          {"step": 20, "weights": {"a": 0.6, "b": 0.4}}])
    decay = ALPHA ** 10  # ten steps per stretch, one update per step
    r = np.array([(1 - decay) * 3.0 / 0.5, (1 - decay) * 2.0 / 0.5])
    r = decay * r + (1 - decay) * np.array([2.0 / 0.6, 2.5 / 0.4])
    eps, eps_prev = math.sqrt(math.log(2) / 40), math.sqrt(math.log(2) / 38)
    g = np.exp(eps_prev * r)
    pi = (1 - 2 * eps) * g / g.sum() + eps
    p = propose(strat, h, {"a": 0.6, "b": 0.4}, cfg)
    assert [p.weights["a"], p.weights["b"]] == pytest.approx(list(pi), abs=1e-12)


def test_odm_a_domain_not_trained_keeps_its_estimate():
    strat, cfg = strategy("odm")
    h = history(domain_loss=losses(strings=[5, 3.0], arithmetic=[5, 3.0], noise=[5, 9.0]),
                mix=mixtures((1 / 3,) * 3, (0.5, 0.5, 0.0)))
    p = propose(strat, h, {"strings": 0.5, "arithmetic": 0.5, "noise": 0.0}, cfg)
    assert "at share 0.000, reward estimate 0.00" in p.rationale["noise"]
    assert all(math.isfinite(v) for v in p.weights.values())


# -- mixing-law --------------------------------------------------------------------------


def planted_history(n_stretches=8, seed=0, noise=0.0) -> tuple[History, dict]:
    """Latent estimates that follow a planted law in logit space. copy gains
    from `noise` and loses from `strings`, against the domains that stream it
    (so the fit must beat its prior); add2 gains from `arithmetic`."""
    rng = np.random.default_rng(seed)
    law = {"copy": (0.2, {"strings": -2.0, "arithmetic": 0.0, "noise": 3.0}),
           "add2": (0.3, {"strings": 0.0, "arithmetic": 4.0, "noise": 0.0})}
    weights = [np.full(3, 1 / 3)] + [rng.dirichlet([4, 4, 4]) for _ in range(n_stretches)]
    est, level = {s: [] for s in law}, {"copy": -2.0, "add2": -3.0}
    for i, w in enumerate(weights):
        for s, (a, b) in law.items():
            if i > 0:
                level[s] += a + sum(b[d] * (w[j] - 1 / 3) for j, d in enumerate(DOMAINS)) + noise * rng.normal()
            p = 1 / (1 + math.exp(-level[s]))
            est[s].append({"step": 10 * i, "tokens_seen": TOKENS * i, "score": p, "lo": p, "hi": p,
                           "slope": 0.0, "slope_lo": 0.0, "slope_hi": 0.0})
    mix = [{"step": 10 * i, "tokens_seen": TOKENS * i, "weights": dict(zip(DOMAINS, map(float, w)))}
           for i, w in enumerate(weights)]
    return history(estimates=est, mix=mix), law


def test_mixing_law_recovers_a_planted_law():
    h, law = planted_history()
    laws, _ = MixingLaw(MixingLawSettings()).laws(h.latent(), h)
    # the weights sum to 1, so only differences between domains are identified
    b = {s: dict(zip(DOMAINS, laws[s]["b"])) for s in laws}
    assert b["copy"]["noise"] > b["copy"]["arithmetic"] > b["copy"]["strings"]
    assert b["add2"]["arithmetic"] > b["add2"]["strings"] and b["add2"]["arithmetic"] > b["add2"]["noise"]
    for s, (a, true) in law.items():
        for w in ([0.6, 0.2, 0.2], [0.2, 0.2, 0.6], [0.1, 0.7, 0.2]):
            planted = a + sum(true[d] * (w[j] - 1 / 3) for j, d in enumerate(DOMAINS))
            assert predict(laws[s], np.array(w)) == pytest.approx(planted, abs=0.15), (s, w)


def test_mixing_law_steps_toward_what_the_law_predicts_best():
    strat, cfg = strategy("mixing-law")
    h, _ = planted_history()
    p = propose(strat, h, UNIFORM, cfg)
    check_constraints(p.weights, UNIFORM, cfg)
    # the law, not the skill-domain map, decides: strings feeds copy but hurts it
    assert p.weights["strings"] < 1 / 3 < p.weights["arithmetic"]
    assert p.weights["noise"] > p.weights["strings"]
    assert "copy b " in p.rationale["noise"] and "add2 b " in p.rationale["noise"]
    # a larger step size (a weaker pull toward the current mixture) moves further
    big = proposal(strategy("mixing-law", step_size=8.0), h, UNIFORM)
    assert big.weights["strings"] < p.weights["strings"]


def test_mixing_law_forecasts_from_the_law():
    strat, cfg = strategy("mixing-law")
    h, _ = planted_history()
    p = propose(strat, h, UNIFORM, cfg)
    laws, last = strat.laws(h.latent(), h)
    w = np.array([p.weights[d] for d in DOMAINS])
    for s in ("copy", "add2"):
        f = p.forecast[s]
        assert f["basis"].startswith("mixing law fitted on 8 stretches") and f"ridge {RIDGE}" in f["basis"]
        logit = math.log(last[s]["score"] / (1 - last[s]["score"]))
        assert f["expected"] == pytest.approx(1 / (1 + math.exp(-(logit + predict(laws[s], w)))))


def test_mixing_law_falls_back_with_too_little_history():
    strat, cfg = strategy("mixing-law")
    current = {"strings": 0.5, "arithmetic": 0.3, "noise": 0.2}
    # one stretch between two checkpoints: no law yet
    h = history(scores={"copy": series(0.1, 0.3), "add2": series(0.1, 0.2)},
                mix=mixtures((1 / 3,) * 3, (0.5, 0.3, 0.2)))
    p = propose(strat, h, current, cfg)
    assert p.weights == pytest.approx(apply_constraints(current, current, cfg))
    assert all("current mixture kept, too little history to fit a mixing law" in line
               for line in p.rationale.values())
    assert all(f["basis"].startswith(SLOPE_BASIS) for f in p.forecast.values())
    # without the mixtures trained, the changes cannot be tied to weights either
    h.scores = {"copy": series(0.1, 0.3, 0.4, 0.5), "add2": series(0.1, 0.2, 0.3, 0.4)}
    h.mixtures = []
    assert "too little history" in propose(strat, h, current, cfg).rationale["strings"]
    assert "no steer skill has an estimate yet" in propose(strat, history(), current, cfg).rationale["noise"]


def test_mixing_law_leaves_a_held_back_skill_out():
    strat, cfg = strategy("mixing-law")
    h, _ = planted_history()
    free = propose(strat, h, UNIFORM, cfg)
    h.blocked = {"add2": "Goodhart guard: add2 rose, add2_holdout did not"}
    held = propose(strat, h, UNIFORM, cfg)
    # without add2 pulling toward arithmetic, only copy's law (noise over strings) is left
    assert held.weights["arithmetic"] < free.weights["arithmetic"]
    assert "held back by the Goodhart guard: add2" in held.rationale["arithmetic"]
    assert "add2 b " not in held.rationale["noise"]
