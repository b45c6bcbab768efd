"""backend/controllers: the registry, `static` and `deficit` on hand-built histories."""

import math
import re

import pytest
from conftest import check_constraints, check_rationale_lines

from backend.config import ControllerConfig
from backend.controllers import (
    STRATEGIES,
    History,
    Proposal,
    Strategy,
    make_strategy,
    propose,
    register_strategy,
)
from backend.controllers.constraints import apply_constraints

DOMAINS = ["strings", "arithmetic", "noise"]
SKILL_DOMAINS = {"copy": ["strings"], "add2": ["arithmetic"]}
UNIFORM = dict.fromkeys(DOMAINS, 1 / 3)


def series(*values, every=1000, n=50):
    return [{"step": 10 * i, "tokens_seen": every * i, "value": v, "stderr": 0.05, "n": n}
            for i, v in enumerate(values)]


def history(scores: dict) -> History:
    return History(domains=DOMAINS, skill_domains=SKILL_DOMAINS, scores=scores, checkpoint_tokens=1000)


# -- registry -------------------------------------------------------------------


def test_built_in_strategies_are_registered():
    assert {"deficit", "static"} <= set(STRATEGIES)
    assert make_strategy(ControllerConfig()).name == "deficit"
    for name in STRATEGIES:
        assert isinstance(make_strategy(ControllerConfig(strategy=name)), Strategy)


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(KeyError) as e:
        make_strategy(ControllerConfig(strategy="greedy"))
    msg = str(e.value)
    assert "'greedy'" in msg and "deficit" in msg and "static" in msg


def test_registering_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("static")(type("Other", (), {}))
    assert STRATEGIES.get("static").__name__ == "Static"


def test_a_users_strategy_registers_like_a_built_in():
    @register_strategy("test-all-on-first")
    class AllOnFirst:
        def __init__(self, cfg):
            self.cfg = cfg

        def propose(self, history, current):
            raw = {d: float(i == 0) for i, d in enumerate(current)}
            return Proposal(weights=raw, rationale={d: "first" for d in current})

        def forecast(self, history, current, weights):
            return {}

    try:
        cfg = ControllerConfig(strategy="test-all-on-first")  # config validation sees it too
        p = propose(make_strategy(cfg), history({}), UNIFORM, cfg)
        assert max(p.weights, key=p.weights.get) == "strings"
        check_constraints(p.weights, UNIFORM, cfg)  # the loop's constraints, not the strategy's
        check_rationale_lines(p, UNIFORM)
    finally:
        STRATEGIES.remove("test-all-on-first")


# -- static ---------------------------------------------------------------------


def test_static_keeps_the_weights():
    current = {"strings": 0.5, "arithmetic": 0.3, "noise": 0.2}
    cfg = ControllerConfig(strategy="static")
    p = propose(make_strategy(cfg), history({"copy": series(0.1, 0.5)}), current, cfg)
    assert p.weights == current and p.weights is not current
    assert set(p.rationale) == set(DOMAINS)
    assert "0.500" in p.rationale["strings"]


# -- deficit ----------------------------------------------------------------------


def deficit(**kw):
    cfg = ControllerConfig(**{"strategy": "deficit", **kw})
    return make_strategy(cfg), cfg


def test_weight_leaves_a_domain_that_feeds_no_steer_skill():
    strat, cfg = deficit()
    p = propose(strat, history({"copy": series(0.2), "add2": series(0.2)}), UNIFORM, cfg)
    check_constraints(p.weights, UNIFORM, cfg)
    assert p.weights["noise"] < 1 / 3 - 0.05
    assert p.weights["strings"] > 1 / 3 and p.weights["arithmetic"] > 1 / 3
    # equal skills, equal treatment
    assert p.weights["strings"] == pytest.approx(p.weights["arithmetic"])


def test_weight_moves_toward_a_big_deficit_with_progress():
    strat, cfg = deficit()
    # add2 is far from the target and surely rising; copy is nearly there and surely flat
    h = history({"copy": series(*[0.85] * 5, n=500), "add2": series(0.1, 0.2, 0.3, 0.4, 0.5, n=500)})
    p = propose(strat, h, UNIFORM, cfg)
    check_constraints(p.weights, UNIFORM, cfg)
    assert p.weights["arithmetic"] > 1 / 3 > p.weights["strings"]
    assert p.weights["arithmetic"] > p.weights["strings"] > p.weights["noise"]
    assert "learning" in p.rationale["arithmetic"] and "stalled" in p.rationale["strings"]


def test_stalled_skill_gets_less_than_a_rising_one_with_the_same_deficit():
    strat, cfg = deficit()
    h = history({"copy": series(*[0.4] * 5, n=500), "add2": series(0.05, 0.1, 0.2, 0.3, 0.4, n=500)})
    p = propose(strat, h, UNIFORM, cfg)
    assert p.weights["arithmetic"] > p.weights["strings"]


def test_a_stalled_skill_data_has_moved_keeps_more_than_one_it_never_moved():
    strat, cfg = deficit(smoothing=0.0)
    # both sit flat at 0.5 now; copy got there from 0 (data moves it), add2 was there from the start
    h = history({"copy": series(0.0, 0.3, 0.5, 0.5, 0.5, 0.5, 0.5, n=500), "add2": series(*[0.5] * 7, n=500)})
    p = propose(strat, h, UNIFORM, cfg)
    check_constraints(p.weights, UNIFORM, cfg)
    assert p.weights["strings"] > p.weights["arithmetic"] > p.weights["noise"]
    assert "it has risen since its first checkpoint" in p.rationale["strings"]
    assert "it has never risen since its first checkpoint" in p.rationale["arithmetic"]
    # gains: deficit 0.5 x learnability 0.5 vs 0.5 x 0.1
    assert "gain 0.250" in p.rationale["strings"] and "gain 0.050" in p.rationale["arithmetic"]


def test_small_priorities_still_move_weight_off_a_domain_that_feeds_nothing():
    strat, cfg = deficit(smoothing=0.0)
    # nothing has risen yet: every priority is 1 x 0.1, and noise feeds no skill at all
    h = history({"copy": series(0.0, 0.0, n=50), "add2": series(0.0, 0.0, n=50)})
    p = propose(strat, h, UNIFORM, cfg)
    check_constraints(p.weights, UNIFORM, cfg)
    assert p.weights["strings"] == pytest.approx(p.weights["arithmetic"])
    # deficit 1.00 x 0.1: fifty checkpoints of 0/50 put the latent score at 0.000
    assert "never risen" in p.rationale["strings"] and "gain 0.100" in p.rationale["strings"]
    # gains 0.100 vs 0, scaled by the floor 0.25: noise's weight times exp(-2 x 0.100 / 0.25), then renormalised
    kept = math.exp(-2 * 0.100 / 0.25)
    assert p.weights["noise"] == pytest.approx(kept / (2 + kept), rel=0.05)


def test_slopes_within_noise_move_nothing():
    strat, cfg = deficit(smoothing=0.0)
    # a rise of 2 of 12 items is within noise: counted as stalled, like a flat skill
    h = history({"copy": series(0.17, 0.33, n=12), "add2": series(0.33, 0.33, n=12)})
    p = propose(strat, h, {"strings": 0.4, "arithmetic": 0.4, "noise": 0.2}, cfg)
    assert "within noise" in p.rationale["strings"] and "within noise" in p.rationale["arithmetic"]
    assert p.weights["strings"] == pytest.approx(p.weights["arithmetic"], abs=0.03)
    assert p.weights["noise"] < 0.2  # it streams no steer skill: that is no noise


def test_weight_leaves_a_saturated_skills_domain():
    strat, cfg = deficit(saturation=0.9)
    h = history({"copy": series(0.8, 0.96, 0.97, n=200), "add2": series(0.1, 0.2, 0.3, 0.4, n=500)})
    p = propose(strat, h, UNIFORM, cfg)
    check_constraints(p.weights, UNIFORM, cfg)
    # saturated: deficit 0, so `strings` is treated like the noise domain
    assert p.weights["strings"] < 1 / 3 < p.weights["arithmetic"]
    assert p.weights["strings"] == pytest.approx(p.weights["noise"])
    assert "saturat" in p.rationale["strings"]


def test_goodhart_guard_stops_pushing_a_skill():
    strat, cfg = deficit()
    scores = {"copy": series(0.1, 0.2, 0.3, 0.4, n=500), "add2": series(0.1, 0.2, 0.3, 0.4, n=500)}
    free = propose(strat, history(scores), UNIFORM, cfg)
    assert free.weights["strings"] == pytest.approx(free.weights["arithmetic"])
    h = history(scores)
    h.blocked = {"copy": "Goodhart guard: copy rose, copy_holdout did not"}
    held = propose(strat, h, UNIFORM, cfg)
    assert held.weights["strings"] < held.weights["arithmetic"]
    assert "Goodhart guard" in held.rationale["strings"]


def test_every_skill_saturated_keeps_the_mixture():
    strat, cfg = deficit()
    current = {"strings": 0.5, "arithmetic": 0.3, "noise": 0.2}
    p = propose(strat, history({"copy": series(0.97), "add2": series(0.99)}), current, cfg)
    # all gains are zero: only the smoothing toward uniform moves the weights
    cfg = ControllerConfig()
    assert p.weights == pytest.approx(apply_constraints(current, current, cfg))


def test_rationale_has_one_line_per_domain_with_numbers():
    strat, cfg = deficit()
    p = propose(strat, history({"copy": series(0.6, 0.7), "add2": series(0.1, 0.3)}), UNIFORM, cfg)
    # the change, as "old -> new", with the new weight the proposal carries
    check_rationale_lines(p, UNIFORM)
    assert "streams no steer skill" in p.rationale["noise"]
    # latent score with its interval and slope
    assert re.search(r"add2 0\.\d\d \[0\.\d\d, 0\.\d\d\] slope [+-]\d\.\d{3}/ckpt", p.rationale["arithmetic"])
    assert re.search(r"copy 0\.\d\d \[0\.\d\d, 0\.\d\d\] slope", p.rationale["strings"])


def test_first_checkpoint_slope_is_na():
    strat, cfg = deficit()
    p = propose(strat, history({"copy": series(0.2), "add2": series(0.2)}), UNIFORM, cfg)
    assert "slope n/a: no slope yet" in p.rationale["strings"]


def test_forecast_per_steer_skill():
    strat, cfg = deficit()
    h = history({"copy": series(*[0.7] * 4, n=500), "add2": series(0.1, 0.2, 0.3, 0.4, n=500)})
    p = propose(strat, h, UNIFORM, cfg)
    assert set(p.forecast) == {"copy", "add2"}
    latent = h.latent()
    for s in ("copy", "add2"):
        assert p.forecast[s]["score"] == pytest.approx(latent[s][-1]["score"])
        assert 0.0 <= p.forecast[s]["expected"] <= 1.0
    # a rising skill that gets more data is forecast to rise, a flat one barely moves
    assert p.forecast["add2"]["expected"] > p.forecast["add2"]["score"] + 0.05
    assert abs(p.forecast["copy"]["expected"] - p.forecast["copy"]["score"]) < 0.03


def test_skills_without_measurements_are_ignored():
    strat, cfg = deficit()
    p = propose(strat, history({"copy": series(0.2), "add2": []}), UNIFORM, cfg)
    assert set(p.forecast) == {"copy"}
    assert "streams no steer skill" in p.rationale["arithmetic"]
    assert p.weights["strings"] > p.weights["arithmetic"]


@pytest.mark.parametrize("step_size", [0.5, 2.0, 8.0, 50.0])
@pytest.mark.parametrize("current", [
    UNIFORM,
    {"strings": 0.7, "arithmetic": 0.28, "noise": 0.02},
    {"strings": 0.02, "arithmetic": 0.02, "noise": 0.96},  # already above the cap
])
def test_result_always_sums_to_one_and_respects_constraints(step_size, current):
    strat, cfg = deficit(step_size=step_size, floor=0.02, cap=0.7, max_change=0.25)
    p = propose(strat, history({"copy": series(0.1, 0.4), "add2": series(0.5, 0.5)}), current, cfg)
    assert abs(sum(p.weights.values()) - 1) < 1e-12
    assert all(cfg.floor - 1e-9 <= v <= cfg.cap + 1e-9 for v in p.weights.values())
    if current is not UNIFORM and max(current.values()) > cfg.cap:
        return  # an infeasible current mixture drops the step limit
    assert all(abs(p.weights[d] - current[d]) <= cfg.max_change + 1e-9 for d in DOMAINS)


def test_domain_feeding_two_skills_uses_their_mean_priority():
    strat, cfg = deficit(smoothing=0.0, max_change=1.0, cap=1.0, floor=0.0)
    h = History(domains=["ab", "c"], skill_domains={"copy": ["ab"], "add2": ["ab"], "sort": ["c"]},
                scores={"copy": series(0.0), "add2": series(1.0), "sort": series(0.5)})
    # ab: mean(deficit ~1, saturated 0) ~ 0.5 ~ c's priority, so (nearly) nothing moves
    p = propose(strat, h, {"ab": 0.5, "c": 0.5}, cfg)
    assert p.weights == pytest.approx({"ab": 0.5, "c": 0.5}, abs=0.01)


def test_large_step_size_does_not_overflow():
    strat, cfg = deficit(step_size=1000.0)
    current = {"strings": 0.02, "arithmetic": 0.02, "noise": 0.96}
    p = propose(strat, history({"copy": series(0.0), "add2": series(0.0)}), current, cfg)
    assert abs(sum(p.weights.values()) - 1) < 1e-12
    assert p.weights["noise"] < current["noise"]


# -- the guarantees controllers.propose enforces for every strategy ------------------


LOW_STRINGS = {"strings": 0.1, "arithmetic": 0.45, "noise": 0.45}  # smoothing alone would raise strings


@pytest.mark.parametrize("name", ["deficit", "doremi", "odm", "mixing-law", "static"])
def test_the_goodhart_hold_applies_to_every_strategy(name):
    cfg = ControllerConfig(strategy=name)
    losses = {d: [{"step": 10 * i, "tokens_seen": 1000 * i, "value": v, "stderr": 0.01, "n": 16}
                  for i, v in enumerate(vs)]
              for d, vs in {"strings": [4.0, 3.0, 3.5], "arithmetic": [4.0, 3.0, 2.0], "noise": [4.0, 4.0, 4.0]}.items()}
    h = History(domains=DOMAINS, skill_domains=SKILL_DOMAINS, checkpoint_tokens=1000, domain_loss=losses,
                scores={"copy": series(0.1, 0.2, 0.3, n=500), "add2": series(0.5, 0.5, 0.5, n=500)},
                mixtures=[{"step": 10 * i, "tokens_seen": 1000 * i, "weights": LOW_STRINGS} for i in range(3)])
    free = propose(make_strategy(cfg), h, LOW_STRINGS, cfg)
    h.blocked = {"copy": "Goodhart guard: copy rose, copy_holdout did not"}
    held = propose(make_strategy(cfg), h, LOW_STRINGS, cfg)
    assert held.weights["strings"] <= LOW_STRINGS["strings"] + 1e-12
    if name != "static":  # without the hold the constraints (or the strategy) raise it
        assert free.weights["strings"] > LOW_STRINGS["strings"]
        check_constraints(held.weights, LOW_STRINGS, cfg)
    assert "held back by the Goodhart guard: copy" in held.rationale["strings"]
    assert "Goodhart" not in held.rationale["arithmetic"]
    check_rationale_lines(held, LOW_STRINGS)
    # the forecast still covers the held-back skill
    assert set(held.forecast) == set(free.forecast)


def test_static_is_exempt_from_the_shared_constraints():
    cfg = ControllerConfig(strategy="static", floor=0.2)
    current = {"strings": 0.05, "arithmetic": 0.5, "noise": 0.45}  # below the floor, kept
    assert propose(make_strategy(cfg), history({}), current, cfg).weights == current


def test_make_strategy_takes_the_configs_settings_where_it_has_them():
    from types import SimpleNamespace

    from backend.controllers.deficit import DeficitSettings

    strat = make_strategy(SimpleNamespace(strategy="deficit", settings=DeficitSettings(step_size=3.0)))
    assert strat.settings == DeficitSettings(step_size=3.0)
    # today's flat ControllerConfig: the matching fields, and only those
    assert make_strategy(ControllerConfig(step_size=4.0, target=0.9)).settings == \
        DeficitSettings(step_size=4.0, target=0.9)


@pytest.mark.parametrize("name, field, value, message", [
    ("deficit", "step_size", 0.0, "controller.options.step_size: must be > 0"),
    ("deficit", "saturation", 1.5, r"controller.options.saturation: must be within \[0, 1\]"),
    ("mixing-law", "step_size", -1.0, "controller.options.step_size: must be > 0"),
    ("doremi", "reference_step", -10, "controller.options.reference_step: must be >= 0"),
    ("doremi", "reference_losses", {"strings": 0.0}, r"controller.options.reference_losses.strings: must be"),
])
def test_each_strategys_settings_name_the_bad_field(name, field, value, message):
    from backend.config import ConfigError

    settings = STRATEGIES.get(name).settings_class(**{field: value})
    with pytest.raises(ConfigError, match=message):
        settings.validate("controller.options")


def test_doremi_settings_check_the_run_they_belong_to():
    from backend.config import ConfigError, preset
    from backend.controllers.doremi import DoReMiSettings

    run = preset("tiny")  # checkpoints every 10 steps up to 30
    DoReMiSettings(reference_step=20).validate("controller.options", run)
    with pytest.raises(ConfigError, match="controller.options.reference_step: 15 is not a checkpoint"):
        DoReMiSettings(reference_step=15).validate("controller.options", run)
    with pytest.raises(ConfigError, match=r"controller.options.reference_losses: needs exactly the domains"):
        DoReMiSettings(reference_losses={"strings": 2.0}).validate("controller.options", run)


def test_a_constant_answer_at_chance_is_never_counted_as_risen_or_learning():
    """The parity story: garbage at first (0), then "even" to every item
    (about 0.5, the chance level). Without the chance level the jump reads as
    a rise; with it, the skill is at chance and the reason says so."""
    from backend.config import preset
    from backend.controllers import make_strategy

    deficit = make_strategy(preset("tiny").controller)

    def est(score, sd=0.03, slope=0.0, slope_sd=0.02):
        return {"score": score, "lo": max(0.0, score - 1.96 * sd), "hi": min(1.0, score + 1.96 * sd),
                "slope": slope, "slope_lo": slope - 1.96 * slope_sd, "slope_hi": slope + 1.96 * slope_sd}

    flat_at_chance = [est(0.0, 0.01), est(0.49, slope=0.49, slope_sd=0.2), est(0.51), est(0.5)]
    blind = deficit.skill_signal(flat_at_chance)
    assert "has risen" in blind["why"]  # what the old reasoning said
    aware = deficit.skill_signal(flat_at_chance, chance=0.5)
    assert "at chance" in aware["why"] and "risen" not in aware["why"].replace("never risen above chance", "")
    assert aware["learnable"] < blind["learnable"]
    # rising toward chance with a sure slope is not "learning" either
    rising = deficit.skill_signal([est(0.0, 0.01), est(0.25, slope=0.25, slope_sd=0.02),
                                   est(0.45, slope=0.2, slope_sd=0.02)], chance=0.5)
    assert rising["why"].startswith("rising only to chance")
    # above chance beyond noise it is learning, and a skill that rose above chance has risen
    above = deficit.skill_signal([est(0.0, 0.01), est(0.5), est(0.7, slope=0.2, slope_sd=0.02)], chance=0.5)
    assert above["why"] == "learning"
    risen = deficit.skill_signal([est(0.0, 0.01), est(0.7), est(0.71)], chance=0.5)
    assert "has risen" in risen["why"]


# -- a constant answer to every item ------------------------------------------------


def parity_answering_even(constant: bool) -> History:
    """parity (chance 0.5) answering "even" to every item: 0 at step 0, then
    a little above chance (more "even" items than odd in those samples), with
    150 items a checkpoint; brackets, on the same domain, learns."""
    def counts(*values, n=150):
        return [{"step": 10 * i, "tokens_seen": 1000 * i, "value": v, "stderr": math.sqrt(max(v * (1 - v), 1e-4) / n),
                 "n": n} for i, v in enumerate(values)]

    weights = {"logic": 0.5, "noise": 0.5}
    return History(
        domains=["logic", "noise"], skill_domains={"parity": ["logic"], "brackets": ["logic"]},
        scores={"parity": counts(0.0, 0.58, 0.6, 0.6, 0.61), "brackets": counts(0.0, 0.3, 0.5, 0.7, 0.8)},
        checkpoint_tokens=1000, chance={"parity": 0.5, "brackets": 0.5},
        mixtures=[{"step": 10 * i, "tokens_seen": 1000 * i, "weights": weights} for i in range(5)],
        constant={"parity": "even"} if constant else {})


def test_a_constant_answer_is_flagged_by_every_strategy_and_counted_as_risen_by_none():
    """The planted case: parity's samples at the last checkpoint are all
    "even" and its score sits near chance, a little above. Every strategy's
    rationale flags it on the domain that feeds it; neither strategy that
    reasons about rises (deficit, mixing-law) counts it as one, though
    both would without the flag."""
    from backend.controllers.deficit import UNMOVED
    from backend.evaluation.tasks import constant_response

    samples = [{"task": "cl_parity_t0", "target": ("even", "odd")[i % 2], "response": "even"} for i in range(150)]
    samples += [{"task": "cl_parity_ll_t0", "target": "even", "response": f"loglik -0.{i}"} for i in range(10)]
    assert constant_response(samples) == "even"

    flagged, blind = parity_answering_even(True), parity_answering_even(False)
    current = {"logic": 0.5, "noise": 0.5}
    for name in STRATEGIES:
        p = propose(make_strategy(ControllerConfig(strategy=name)), flagged, current, ControllerConfig())
        assert "parity answers 'even' to every item (at chance)" in p.rationale["logic"], name
        assert "every item" not in p.rationale["noise"], name
        check_rationale_lines(p, current)
        clean = propose(make_strategy(ControllerConfig(strategy=name)), blind, current, ControllerConfig())
        assert "every item" not in clean.rationale["logic"], name

    deficit = make_strategy(ControllerConfig(strategy="deficit"))
    was = deficit.signals(blind)["parity"]
    assert "risen" in was["why"].replace("never risen", "") or was["why"] == "learning"  # the trap
    now = deficit.signals(flagged)["parity"]
    assert now["learnable"] == UNMOVED and "guess, not a rise" in now["why"]
    assert "risen" not in now["why"] and "learning" not in now["why"]
    assert deficit.signals(flagged)["brackets"] == deficit.signals(blind)["brackets"]  # others untouched

    law = make_strategy(ControllerConfig(strategy="mixing-law"))
    assert law.laws(blind.latent(), blind)[0]["parity"]["a"] > 0  # the trap: a "rise" in the logit
    laws, last = law.laws(flagged.latent(), flagged)
    assert "parity" not in laws and "parity" not in last and "brackets" in laws


def test_the_loop_carries_a_constant_answer_from_the_stored_samples_to_the_rationale(tmp_path):
    """RunClient.history reads the latest checkpoint's per-item samples: copy
    answering "a b" to every item is flagged on the domain that streams it;
    at the checkpoint before, when its answers differed, it was not."""
    from backend.client import RunClient
    from backend.config import preset
    from backend.store import Store

    store = Store(tmp_path / "cl.db")
    client = RunClient.register(store, preset("tiny"))
    skills = store.skills(client.run_id)
    task = next(s for s in skills if s["name"] == "copy")["tasks"][0]
    for step, responses in ((0, ["a b", "c d", "b"]), (10, ["a b", "a b", " a b"])):
        client.report_checkpoint(step, step * client.tokens_per_step)
        rows = [{"skill": s["name"], "task": f"ext_{s['name']}", "metric": "exact_match", "value": 0.02,
                 "stderr": 0.02, "n": 36, "prompt_variant": "p0", "decoding": "greedy", "scorer": "exact_match"}
                for s in skills]
        samples = [{"task": task, "doc_id": i, "prompt": f"copy {x} =", "target": x, "response": r, "correct": 0}
                   for i, (x, r) in enumerate(zip(["a c", "b d", "e f"], responses))]
        client.report_measurements(step, rows, samples)
        client.boundary(step)
    first, last = store.proposals(client.run_id)
    assert "every item" not in " ".join(first["rationale"].values())
    assert "copy answers 'a b' to every item (at chance)" in last["rationale"]["strings"]
    assert "every item" not in last["rationale"]["arithmetic"]


def test_a_skill_at_chance_lacks_as_much_as_one_at_zero_where_a_guess_scores_zero():
    strat, _ = deficit()
    at = [{"step": 0, "tokens_seen": 0, "score": 0.5, "lo": 0.45, "hi": 0.55, "slope": None,
           "slope_lo": None, "slope_hi": None}]
    zero = [{**at[0], "score": 0.0, "lo": 0.0, "hi": 0.05}]
    assert strat.skill_signal(at, chance=0.5)["deficit"] == pytest.approx(1.0)
    assert strat.skill_signal(zero, chance=0.0)["deficit"] == pytest.approx(1.0)
    assert strat.skill_signal(at, chance=0.5)["priority"] == strat.skill_signal(zero, chance=0.0)["priority"]
    # halfway from chance to the target: half the deficit; without a chance level, the plain one
    half = [{**at[0], "score": 0.75, "lo": 0.7, "hi": 0.8}]
    assert strat.skill_signal(half, chance=0.5)["deficit"] == pytest.approx(0.5)
    assert strat.skill_signal(half)["deficit"] == pytest.approx(0.25)

