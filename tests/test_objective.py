"""backend/objective.py and how `controllers.propose` enforces it: priorities
and targets, the shares of the mixture, deadlines, the held-out rule, the
objective term named in every rationale line, and a refused proposal that
the client does not store."""

import pytest
from conftest import check_constraints, check_rationale_lines

from backend.client import RunClient
from backend.config import ControllerConfig, preset
from backend.config.schema import ObjectiveConfig, SkillGoal
from backend.controllers import History, Refused, make_strategy, propose
from backend.decisions import set_objective
from backend.objective import DEFAULT, Deadline, Objective, for_run, heldout_fall, violations

DOMAINS = ["strings", "arithmetic", "noise"]
SKILL_DOMAINS = {"copy": ["strings"], "add2": ["arithmetic"]}
UNIFORM = dict.fromkeys(DOMAINS, 1 / 3)
CFG = ControllerConfig(floor=0.02, cap=0.7, max_change=0.25, smoothing=0.0)
TOKENS = 1000  # tokens per checkpoint


def est(*scores, width=0.04, slope=0.0):
    """Latent estimates at steps 0, 10, ... (TOKENS each): score +- width."""
    return [{"step": 10 * i, "tokens_seen": TOKENS * i, "score": s, "lo": s - width, "hi": s + width,
             "slope": slope, "slope_lo": slope - 0.01, "slope_hi": slope + 0.01,
             "slope_per_token": slope / TOKENS} for i, s in enumerate(scores)]


def history(objective=None, *, copy=(0.5, 0.55), add2=(0.1, 0.2), **kw) -> History:
    """copy well along, add2 far behind and learning: deficit moves weight
    from strings to arithmetic."""
    return History(domains=DOMAINS, skill_domains=SKILL_DOMAINS, scores={}, checkpoint_tokens=TOKENS,
                   estimates={"copy": est(*copy, slope=0.05), "add2": est(*add2, slope=0.1)},
                   objective=objective, **kw)


def deficit():
    return make_strategy(ControllerConfig())


# -- the objective itself ------------------------------------------------------------


def test_priority_and_target_default_to_one_and_the_controllers_target():
    obj = Objective.from_config(ObjectiveConfig(skills={"copy": SkillGoal(priority=3.0, target=0.8)}))
    assert obj.priority("copy") == 3.0 and obj.priority("add2") == 1.0
    assert obj.target("copy", 1.0) == 0.8 and obj.target("add2", 0.95) == 0.95
    assert DEFAULT.priority("copy") == 1.0 and DEFAULT.describe() == []
    assert "copy: priority 3" in obj.describe() and "copy: target 0.80" in obj.describe()


def test_the_newest_override_replaces_the_configs_objective():
    cfg = preset("tiny").replace(objective={"skills": {"copy": {"priority": 2.0}}})
    assert for_run(cfg).priority("copy") == 2.0
    over = for_run(cfg, {"skills": {"add2": {"target": 0.5}}, "domains": {"noise": {"max": 0.1}}})
    assert over.priority("copy") == 1.0 and over.target("add2", 1.0) == 0.5
    assert over.shares == {"noise": (0.0, 0.1)}


# -- enforcement in propose() ---------------------------------------------------------


def test_every_rationale_line_names_the_objective_term_that_drove_it():
    obj = Objective(priorities={"copy": 3.0})
    p = propose(deficit(), history(obj), UNIFORM, CFG)
    check_rationale_lines(p, UNIFORM)
    assert "objective: copy (priority 3 x gap 0.45 to target 1.00)" in p.rationale["strings"]
    assert "objective: add2 (priority 1 x gap 0.80 to target 1.00)" in p.rationale["arithmetic"]
    assert "objective: feeds no measured steer skill" in p.rationale["noise"]


def test_a_domains_least_share_is_kept_like_the_floor_and_named():
    obj = Objective(shares={"noise": (0.3, 1.0)})
    free = propose(deficit(), history(), UNIFORM, CFG)
    assert free.weights["noise"] < 0.3  # without the objective, deficit takes weight from noise
    p = propose(deficit(), history(obj), UNIFORM, CFG)
    check_constraints(p.weights, UNIFORM, CFG)
    assert p.weights["noise"] == pytest.approx(0.3)
    assert "constraint: objective.domains.noise.min holds it at its least share 0.300" in p.rationale["noise"]


def test_a_proposal_that_slows_a_skill_behind_its_deadline_is_refused_with_the_reason():
    # copy at 0.55 rising 0.05 per 1,000 tokens reaches 0.65 by 3,000 tokens: short of 0.9
    obj = Objective(deadlines=(Deadline("copy", 0.9, 3000),))
    with pytest.raises(Refused) as e:
        propose(deficit(), history(obj), UNIFORM, CFG)
    (reason,) = e.value.reasons
    assert reason.startswith("constraint copy >= 0.90 by 3,000 tokens: copy is at 0.55")
    assert "trend reaches 0.65" in reason and "expected to slow it" in reason
    assert e.value.proposal.weights["strings"] < UNIFORM["strings"]  # the refused move, kept for the event
    # on track (0.6 by 3,000 tokens), the same move passes and says nothing of the deadline
    ok = propose(deficit(), history(Objective(deadlines=(Deadline("copy", 0.6, 3000),))), UNIFORM, CFG)
    assert "deadline" not in ok.rationale["strings"]


def test_a_static_mixture_that_breaks_a_share_is_refused():
    static = make_strategy(ControllerConfig(strategy="static"))
    with pytest.raises(Refused, match=r"objective.domains.noise.max: noise would get 0.333 of the mixture, "
                                      r"above its largest share 0.100"):
        propose(static, history(Objective(shares={"noise": (0.0, 0.1)})), UNIFORM, CFG)


def fell(before=0.5, after=0.3):
    """Held-out estimates whose mean fell between steps 10 and 20."""
    return {"copy_holdout": est(0.4, before, after, width=0.03), "add2_holdout": est(0.2, before, after, width=0.03)}


def test_the_held_out_mean_falling_beyond_noise_is_found_and_a_small_dip_is_not():
    fall = heldout_fall(fell())
    assert (fall["from_step"], fall["step"]) == (10, 20)
    assert fall["before"] == pytest.approx(0.5) and fall["after"] == pytest.approx(0.3)
    assert heldout_fall(fell(0.5, 0.49)) is None  # within the noise of two intervals +- 0.03
    assert heldout_fall({}) is None


def test_after_the_held_out_mean_fell_a_move_further_from_the_mixture_before_it_is_refused():
    before = {"strings": 0.5, "arithmetic": 0.25, "noise": 0.25}
    trained = dict(UNIFORM)
    mixtures = [{"step": 10, "weights": before}, {"step": 20, "weights": trained}]
    obj = Objective(heldout_mean_nondecreasing=True)
    kw = dict(current=trained, latent={}, expected={}, expected_now={}, heldout=fell(), mixtures=mixtures)
    (reason,) = violations(obj, weights={"strings": 0.2, "arithmetic": 0.5, "noise": 0.3}, **kw)
    assert reason.startswith("constraint heldout_mean_nondecreasing: the held-out mean fell from 0.500 to 0.300 "
                             "between steps 10 and 20")
    assert violations(obj, weights={"strings": 0.45, "arithmetic": 0.3, "noise": 0.25}, **kw) == []  # back
    assert violations(DEFAULT, weights={"strings": 0.2, "arithmetic": 0.5, "noise": 0.3}, **kw) == []


# -- the client: a refused proposal is not stored ---------------------------------------


def started(store, objective: dict) -> tuple[RunClient, dict]:
    """The client of a tiny run (policy human) with `objective`, its two
    steer skills and a uniform mixture; and that mixture."""
    cfg = preset("tiny").replace(policy="human", objective=objective)
    run_id = store.create_run(cfg.to_dict())
    store.set_domains(run_id, [{"name": d, "source": "synthetic", "skills": []} for d in cfg.domain_names])
    store.set_skills(run_id, [
        {"name": "copy", "base": "copy", "kind": "steer", "domains": ["strings"], "tasks": []},
        {"name": "add2", "base": "add2", "kind": "steer", "domains": ["arithmetic"], "tasks": []}])
    uniform = dict.fromkeys(cfg.domain_names, 1 / len(cfg.domain_names))
    store.add_segment(run_id, from_step=0, tokens_at=0, weights=uniform, source="initial")
    return RunClient(store, run_id), uniform


def test_the_client_stores_no_refused_proposal_and_logs_why(store):
    # copy within noise of saturation (deficit pushes it no more), but short of its deadline's 0.99
    client, uniform = started(store, {"skills": {"copy": {"at_least": 0.99, "by_tokens": 4000}}})
    run_id = client.run_id
    estimates = {"copy": est(0.89, 0.9, width=0.06, slope=0.01), "add2": est(0.1, 0.2, slope=0.1)}
    assert client.propose(10, client.history(estimates)) is None
    assert store.proposals(run_id) == []
    (event,) = store.events(run_id, "refused")
    assert "copy >= 0.99 by 4,000 tokens" in event["message"] and event["before"] == uniform
    assert event["after"]["strings"] < uniform["strings"]
    assert store.current_weights(run_id) == uniform  # the mixture stays


def test_the_client_steers_by_the_newest_objective_a_person_saved(store):
    client, uniform = started(store, {"domains": {"code": {"min": 0.05}}})
    estimates = {"copy": est(0.5, 0.55, slope=0.05), "add2": est(0.1, 0.2, slope=0.1)}
    assert client.history(estimates).objective.shares == {"code": (0.05, 1.0)}
    set_objective(store, client.run_id, {"domains": {"code": {"min": 0.15}}}, by="ana")
    pid = client.propose(10, client.history(estimates))
    p = store.proposal(pid)
    assert p["status"] == "pending" and p["weights"]["code"] == pytest.approx(0.15)
    assert p["rationale"]["code"].endswith("constraint: objective.domains.code.min holds it at its least share 0.150")
    assert "objective: copy (priority 1 x gap 0.45 to target 1.00)" in p["rationale"]["strings"]


def test_a_whole_run_of_the_loop_keeps_the_shares_and_names_the_terms(store):
    """The real ClosedLoop with backend.testing's fakes (no torch, no lm-eval)."""
    from backend.loop import ClosedLoop
    from backend.testing import fake_components

    cfg = preset("tiny").replace(objective={"domains": {"noise": {"max": 0.05}, "code": {"min": 0.3}},
                                            "skills": {"copy": {"priority": 2.0}}})
    run_id = store.create_run(cfg.to_dict())
    assert ClosedLoop(store, run_id, components=fake_components(), progress=False).run() == "finished"
    segments = store.schedule(run_id)[1:]
    assert segments and all(s["weights"]["noise"] <= 0.05 + 1e-9 and s["weights"]["code"] >= 0.3 - 1e-9
                            for s in segments)
    for p in store.proposals(run_id):
        assert "objective: copy (priority 2 x gap" in p["rationale"]["strings"]
        # code feeds no steer skill: deficit would cut it, its least share holds it
        assert p["rationale"]["code"].endswith("constraint: objective.domains.code.min holds it at its least "
                                               "share 0.300")
