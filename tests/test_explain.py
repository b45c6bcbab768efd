"""backend.explain: a skill's badge against chance, and the one sentence
that states a proposal's decision."""

from __future__ import annotations

from backend.explain import AT_CHANCE, BELOW_CHANCE, LEARNING, badge, decision_sentence, skill_states

SKILLS = [
    {"name": "kv_recall", "kind": "steer", "domains": ["recall"], "chance": 0.0},
    {"name": "kv_recall_holdout", "kind": "holdout", "domains": ["recall"], "chance": 0.0},
    {"name": "copy", "kind": "steer", "domains": ["strings"], "chance": 0.0},
    {"name": "reverse", "kind": "steer", "domains": ["strings"], "chance": 0.0},
    {"name": "parity", "kind": "steer", "domains": ["logic"], "chance": 0.5},
]


def est(skill, step, score, lo, hi, slope=None):
    return {"skill": skill, "step": step, "score": score, "lo": lo, "hi": hi, "slope": slope}


ESTIMATES = [
    est("kv_recall", 10, 0.1, 0.0, 0.2, 0.05), est("kv_recall", 20, 0.34, 0.28, 0.40, 0.12),
    est("copy", 20, 0.0, 0.0, 0.02), est("reverse", 20, 0.01, 0.0, 0.03),
    est("parity", 20, 0.52, 0.44, 0.60, 0.02),
    est("kv_recall", 30, 0.9, 0.85, 0.95, 0.3),  # after the proposal: not used
]


def proposal(current, weights, step=20):
    return {"current_weights": current, "weights": weights, "step": step}


def test_badge_compares_the_interval_with_chance():
    assert badge(0.3, 0.4, 0.25) == LEARNING
    assert badge(0.44, 0.60, 0.5) == AT_CHANCE  # a coin flip scoring 0.52 is not learning
    assert badge(0.1, 0.2, 0.5) == BELOW_CHANCE
    assert badge(0.0, 0.02, None) == AT_CHANCE and badge(0.01, 0.1, None) == LEARNING


def test_skill_states_take_each_steer_skills_newest_estimate():
    states = skill_states(SKILLS, ESTIMATES[:-1])
    assert states["kv_recall"]["badge"] == LEARNING and states["kv_recall"]["slope"] == 0.12
    assert states["parity"]["badge"] == AT_CHANCE and "kv_recall_holdout" not in states


def test_the_sentence_names_the_move_why_and_where_from():
    p = proposal({"recall": 0.25, "strings": 0.5, "logic": 0.25}, {"recall": 0.5, "strings": 0.25, "logic": 0.25})
    assert decision_sentence(p, SKILLS, ESTIMATES) == (
        "Moves +0.25 to recall: kv_recall is learning, +0.12 per checkpoint; takes it from strings (-0.25), whose "
        "skills (copy and reverse) sit at chance.")


def test_the_sentence_for_several_moves_and_for_none():
    p = proposal({"recall": 0.2, "strings": 0.4, "logic": 0.2, "noise": 0.2},
                 {"recall": 0.3, "strings": 0.3, "logic": 0.3, "noise": 0.1})
    assert decision_sentence(p, SKILLS, ESTIMATES) == (
        "Moves +0.10 to recall for kv_recall (learning, +0.12 per checkpoint) and +0.10 to logic for parity "
        "(at chance: 0.52 vs 0.50, +0.02 per checkpoint); takes it from strings (-0.10), whose skills (copy and "
        "reverse) sit at chance; and from noise (-0.10), which feeds no steer skill.")
    p = proposal({"strings": 0.4, "noise": 0.3, "code": 0.3}, {"strings": 0.6, "noise": 0.2, "code": 0.2})
    assert decision_sentence(p, SKILLS, ESTIMATES) == (
        "Moves +0.20 to strings: copy is at chance: 0.00 vs 0.00; reverse is at chance: 0.01 vs 0.00; "
        "takes it from noise (-0.10) and code (-0.10), which feed no steer skill.")
    same = proposal({"a": 0.5, "b": 0.5}, {"a": 0.501, "b": 0.499})
    assert decision_sentence(same, SKILLS, ESTIMATES).startswith("Keeps the mixture as it is")
    logic = proposal({"logic": 0.5, "recall": 0.5}, {"logic": 0.7, "recall": 0.3})
    assert decision_sentence(logic, SKILLS, ESTIMATES).startswith(
        "Moves +0.20 to logic: parity is at chance: 0.52 vs 0.50, +0.02 per checkpoint; takes it from recall "
        "(-0.20), whose skills (kv_recall) are learning already.")
