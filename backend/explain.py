"""Words for a person: what a skill's estimate says against its chance
level (a badge), and what a proposal decides (one sentence).

Pure functions over rows the store returns (skills, latent estimates,
proposals); the dashboard and the report print what they return.
"""

from __future__ import annotations

LEARNING = "learning"
AT_CHANCE = "at chance"
BELOW_CHANCE = "below chance"
"""Badges: the 95% interval lies above, around or below the chance level."""

MOVE_FLOOR = 0.005  # weight change below this is no move worth naming (weights sum to 1)


def badge(lo: float, hi: float, chance: float | None) -> str:
    """A skill's state from its latest 95% interval [lo, hi] against its
    chance level (None: no declared chance; 0 is used, the floor of a
    score): `learning` when the whole interval is above chance, `below
    chance` when it is all below, else `at chance`."""
    level = chance or 0.0
    if lo > level:
        return LEARNING
    if hi < level:
        return BELOW_CHANCE
    return AT_CHANCE


def skill_states(skills: list[dict], estimates: list[dict]) -> dict[str, dict]:
    """Steer skill -> {score, lo, hi, slope, chance, badge} at the newest
    step of `estimates` (store.capability rows) that each skill has."""
    chance = {s["name"]: s.get("chance") for s in skills}
    latest: dict[str, dict] = {}
    for e in estimates:
        if e["skill"] in chance and (e["skill"] not in latest or e["step"] >= latest[e["skill"]]["step"]):
            latest[e["skill"]] = e
    return {s: {"score": e["score"], "lo": e["lo"], "hi": e["hi"], "slope": e.get("slope"),
                "chance": chance[s], "badge": badge(e["lo"], e["hi"], chance[s])}
            for s, e in latest.items()}


FLAT = 0.005  # |slope| below this (score per checkpoint) is read as flat


def _skill_clause(name: str, state: dict | None, short: bool = False) -> str:
    """ "kv_recall is learning, +0.12 per checkpoint", or with `short`
    "kv_recall (learning, +0.12 per checkpoint)"."""
    if state is None:
        return f"{name} (not estimated yet)" if short else f"{name} is not estimated yet"
    slope = state["slope"]
    per = "" if slope is None else (", flat" if abs(slope) < FLAT else f", {slope:+.2f} per checkpoint")
    what = state["badge"]
    if what != LEARNING:
        what += f": {state['score']:.2f} vs {state['chance'] or 0:.2f}"
    return f"{name} ({what}{per})" if short else f"{name} is {what}{per}"


def _domain_skills(domain: str, skills: list[dict]) -> list[str]:
    return [s["name"] for s in skills if s["kind"] == "steer" and domain in (s.get("domains") or [])]


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _why_down(fed: list[str], states: dict[str, dict]) -> str:
    """Why a losing domain can spare weight (the clause after its name)."""
    if not fed:
        return "which feed no steer skill"
    badges = {states[s]["badge"] for s in fed if s in states}
    if badges and badges <= {AT_CHANCE, BELOW_CHANCE}:
        return f"whose skills ({_names(fed)}) sit at chance"
    if badges == {LEARNING}:
        return f"whose skills ({_names(fed)}) are learning already"
    return f"which feed {_names(fed)}"


def decision_sentence(proposal: dict, skills: list[dict], estimates: list[dict]) -> str:
    """The proposal's decision in one sentence, from its weights against
    the mixture it would replace, the domains' steer skills (store.skills
    rows) and their latent estimates (store.capability rows up to the
    proposal's step): e.g. "Moves +0.25 to recall: kv_recall is learning,
    +0.12 per checkpoint; takes it from strings, whose skills (copy and
    reverse) sit at chance.". The two largest gains are explained; the
    losing domains are grouped by why they can spare weight."""
    cur, new = proposal["current_weights"], proposal["weights"]
    delta = {d: new.get(d, 0.0) - cur.get(d, 0.0) for d in cur}
    ups = sorted((d for d in delta if delta[d] >= MOVE_FLOOR), key=lambda d: -delta[d])
    downs = sorted((d for d in delta if delta[d] <= -MOVE_FLOOR), key=lambda d: delta[d])
    if not ups:
        return "Keeps the mixture as it is: no domain's weight changes by 0.005 or more."
    states = skill_states(skills, [e for e in estimates if e["step"] <= proposal["step"]])
    parts = []
    for d in ups[:2]:
        fed = _domain_skills(d, skills)
        if len(ups) == 1:
            parts.append(f"{delta[d]:+.2f} to {d}: " + ("; ".join(_skill_clause(s, states.get(s)) for s in fed)
                                                        or "it feeds no steer skill"))
        else:
            parts.append(f"{delta[d]:+.2f} to {d}" + (f" for {_names([_skill_clause(s, states.get(s), True) for s in fed])}"
                                                      if fed else " (it feeds no steer skill)"))
    line = "Moves " + " and ".join(parts)
    if len(ups) > 2:
        line += f", and more to {_names(ups[2:])}"
    groups: dict[str, list[str]] = {}
    for d in downs:
        groups.setdefault(_why_down(_domain_skills(d, skills), states), []).append(d)
    if groups:
        line += "; takes it from " + "; and from ".join(
            f"{_names([f'{d} ({delta[d]:+.2f})' for d in ds])}, "
            + (why if len(ds) > 1 else why.replace("which feed ", "which feeds ", 1)) for why, ds in groups.items())
    return line + "."
