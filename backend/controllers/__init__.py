"""Controller strategies behind one interface, from one registry.

A strategy (the `Strategy` protocol) proposes RAW weights with a reason per
domain, and forecasts what a mixture does to each steer skill. The loop
never calls it directly: `propose(strategy, history, current, constraints)`
enforces what every proposal must obey, once for every strategy:

    raw = strategy.propose(history less the skills in history.blocked, current)
    Goodhart hold: a domain feeding a skill in history.blocked gains no weight
    shared constraints (smoothing toward uniform, floor, cap, max change,
    and the objective's share of each domain)
    forecast = strategy.forecast(history, current, final weights)
    the objective's constraints (backend.objective.violations): a proposal
    that breaks one raises Refused naming it, and is not stored
    rationale line per domain: "old -> new: reason; objective term that drove it",
        and a flag for each skill it feeds that gives one constant answer to every item

Built-in strategies register with `@register_strategy(name, settings=...)`
exactly as a user's would; `make_strategy(controller_cfg)` builds the
configured one with its own settings dataclass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol, runtime_checkable

from backend.objective import DEFAULT, Objective, driver, share_note, violations
from backend.registry import Registry


@dataclass
class Proposal:
    weights: dict[str, float]
    """New mixture weights. From a strategy: raw (>= 0, any scale); from
    `propose`: final (constrained, sum 1)."""
    rationale: dict[str, str]
    """One line per domain. From a strategy: the reason with its numbers;
    from `propose`: "old -> new: reason"."""
    forecast: dict[str, dict] = field(default_factory=dict)
    """Per steer skill: {score, expected, basis}, the current score and the
    expected score at the next checkpoint (filled in by `propose`)."""


@dataclass
class History:
    """What a strategy may see: steer skills only (held-out skills are never
    shown to the controller)."""

    domains: list[str]
    skill_domains: dict[str, list[str]]
    """Steer skill -> domains that stream it."""
    scores: dict[str, list[dict]]
    """Steer skill -> [{step, tokens_seen, value, stderr, n}] by step."""
    domain_loss: dict[str, list[dict]] = field(default_factory=dict)
    """Domain -> [{step, tokens_seen, value, stderr, n}] held-out loss by step."""
    checkpoint_tokens: int = 0
    """Tokens between checkpoints (for forecasts)."""
    estimates: dict[str, list[dict]] = field(default_factory=dict)
    """Steer skill -> latent capability estimates by step (backend.capability):
    score, lo, hi, slope, slope_lo, slope_hi. Computed from `scores` when empty."""
    blocked: dict[str, str] = field(default_factory=dict)
    """Steer skills the Goodhart guard holds back (skill -> alert message)."""
    mixtures: list[dict] = field(default_factory=list)
    """[{step, tokens_seen, weights}] by checkpoint: the mixture trained in
    the stretch that ended at that checkpoint (step 0: the initial one)."""
    unsteerable: dict[str, str] = field(default_factory=dict)
    """Steer skills measured but not steered (skill -> why): no domain is
    declared to feed them, or their metric is not a [0, 1] score where
    higher is better. Not in `skill_domains`; each proposal's forecast says
    why it leaves them alone."""
    latest: dict[str, float] = field(default_factory=dict)
    """Latest latent score of each unsteerable skill (for its forecast line)."""
    chance: dict[str, float] = field(default_factory=dict)
    """Steer skill -> its chance level (a uniform guess or the best constant
    answer): a score there is a guess, so a rise counts only above it."""
    objective: Objective | None = None  # the researcher's objective (backend.objective); None: the default
    heldout: dict[str, list[dict]] = field(default_factory=dict)
    """Held-out skill -> latent estimates by step: never steered by, only
    read by the objective's held-out rule (Objective.heldout_mean_nondecreasing)."""
    constant: dict[str, str] = field(default_factory=dict)
    """Steer skill -> the one answer it gave to every item at the latest
    checkpoint (backend.evaluation.tasks.constant_response): no skill, a
    guess scoring about chance; each proposal's rationale says so."""
    affinity: dict[str, dict[str, dict]] = field(default_factory=dict)
    """Steer skill -> domain -> {mean, lo, hi, sd, prior, source}: how much
    each domain feeds each skill (backend.affinity: declared links are its
    prior, the run's history refines it, pins override). Computed from the
    declared links and the history when empty."""
    alignment: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    """Steer skill -> domain -> [{step, value, stderr}] by step: the centred
    cosine of the domain's gradient with the skill's answer gradient at each
    checkpoint (backend.evaluation.alignment); backend.affinity takes its
    prior from it with the links hidden, and how firm the declared prior is
    with them declared."""

    def latent(self) -> dict[str, list[dict]]:
        """`estimates`, or the latent estimates computed from `scores`."""
        if self.estimates:
            return self.estimates
        from backend.capability import estimate

        rows = [{**m, "skill": s, "metric": "exact_match"} for s, ms in self.scores.items() for m in ms]
        return estimate(rows, self.checkpoint_tokens or 1, chance=self.chance)

    def feeders(self) -> dict[str, list[str]]:
        """Steer skill -> the domains that feed it: its declared links, or,
        where none are declared (links learned), the affinity's first-ranked
        domain and every domain whose interval stands above
        affinity.NEGLIGIBLE. What the Goodhart hold holds back and what the
        rationale names."""
        from backend.affinity import NEGLIGIBLE, ranked

        out = {s: list(ds) for s, ds in self.skill_domains.items() if ds}
        for s, links in self.links().items():
            if s not in out and links:
                top = ranked(links)[0]
                out[s] = [d for d in links if d == top or links[d]["lo"] > NEGLIGIBLE]
        return out

    def links(self) -> dict[str, dict[str, dict]]:
        """`affinity`, or the affinity estimated from the declared links and
        the history (backend.affinity.estimate, no pins)."""
        if self.affinity:
            return self.affinity
        from backend.affinity import estimate

        return estimate(self)


@runtime_checkable
class Strategy(Protocol):
    """What a controller strategy implements. Stateless between calls: a
    resumed worker builds a fresh instance and must propose what an
    uninterrupted one would, so everything comes from `History`.

    Built with one argument, an instance of the settings dataclass given to
    `register_strategy`, kept as `self.settings`.
    """

    name: ClassVar[str]
    """The registered name (set by `register_strategy`)."""
    constrained: ClassVar[bool]
    """Whether the shared constraints apply (set by `register_strategy`)."""

    def propose(self, history: History, current: dict[str, float]) -> Proposal:
        """Raw new weights and the reason per domain.

        :param history: the run so far, steer skills only, less the skills
            the Goodhart guard holds back (still named in `history.blocked`).
        :param current: domain -> weight trained now (sums to 1, every domain
            of `history.domains`).
        :return: Proposal with `weights` domain -> raw weight (>= 0, any
            scale, every domain) and `rationale` domain -> one line giving the
            numbers behind it (no "old -> new" prefix, no newline); `forecast`
            left empty. No constraints, no Goodhart hold: the module function
            `propose` applies both.
        """
        ...

    def forecast(self, history: History, current: dict[str, float],
                 weights: dict[str, float]) -> dict[str, dict]:
        """What training on `weights` instead of `current` is expected to do.

        :param history: the run so far, every steer skill (held back or not).
        :param weights: the FINAL weights (after the hold and the constraints).
        :return: steer skill -> {"score": latent score now, "expected": score
            expected at the next checkpoint (within [0, 1]), "basis": one line
            saying how it was forecast}; skills without estimates left out.
        """
        ...


STRATEGIES: Registry[type] = Registry("strategy")
"""Strategy name -> class."""


@dataclass(kw_only=True)
class NoSettings:
    """Settings of a strategy that has none."""

    def validate(self, path: str, run_cfg=None) -> None:
        """Nothing to check."""


def register_strategy(name: str, settings: type = NoSettings, *,
                      constrained: bool = True) -> Callable[[type], type]:
    """Class decorator: register a strategy under `name` with its keyword-only
    settings dataclass (`settings`, with `validate(path, run_cfg=None)`).
    constrained=False exempts it from the shared constraints (a strategy
    whose proposal is the current mixture by definition: `static`); the
    Goodhart hold applies to every strategy."""

    def deco(cls: type) -> type:
        STRATEGIES.add(name, cls)
        cls.name = name
        cls.settings_class = settings
        cls.constrained = constrained
        return cls

    return deco


def make_strategy(controller_cfg) -> Strategy:
    """An instance of the configured strategy (controller_cfg.strategy) with
    its settings (controller.options, built by ControllerConfig.settings); an
    unknown name raises UnknownName listing what exists."""
    return STRATEGIES.get(controller_cfg.strategy)(controller_cfg.settings)


def held_domains(history: History) -> dict[str, list[str]]:
    """Domain -> the blocked skills it feeds (only domains that feed one)."""
    held: dict[str, list[str]] = {}
    feeders = history.feeders() if history.blocked else {}
    for s in sorted(history.blocked):
        for d in feeders.get(s, []):
            held.setdefault(d, []).append(s)
    return held


def steerable(history: History) -> History:
    """The history a strategy proposes from: without the skills the Goodhart
    guard holds back (`blocked` still names them)."""
    return dataclasses.replace(
        history,
        skill_domains={s: v for s, v in history.skill_domains.items() if s not in history.blocked},
        scores={s: v for s, v in history.scores.items() if s not in history.blocked},
        estimates={s: v for s, v in history.estimates.items() if s not in history.blocked})


@dataclass(frozen=True)
class Bounds:
    """Shared constraints as ControllerConfig carries them, for callers
    without a config."""

    floor: float = 0.0
    cap: float = 1.0
    max_change: float = 1.0
    smoothing: float = 0.0


FREE = Bounds()
"""Constraints that change nothing: a normalised proposal passes unchanged."""


class Refused(Exception):
    """A proposal that would break a constraint of the objective: the loop
    stores no proposal and logs `reasons` (one line per broken constraint)."""

    def __init__(self, reasons: list[str], proposal: Proposal):
        super().__init__("proposal refused: " + "; ".join(reasons))
        self.reasons = reasons
        self.proposal = proposal


def propose(strategy: Strategy, history: History, current: dict[str, float], constraints_cfg) -> Proposal:
    """The proposal the loop stores: the strategy's raw weights under the
    Goodhart hold and the shared constraints (`constraints_cfg`: floor, cap,
    max_change, smoothing) with the objective's domain shares, each
    rationale line as "old -> new: reason; objective term that drove it",
    and the strategy's forecast of the final weights. Raises Refused (with
    the proposal it refuses) when the weights break a constraint of
    `history.objective`."""
    from backend.controllers.constraints import apply_constraints

    objective = history.objective or DEFAULT
    held = held_domains(history)
    raw = strategy.propose(steerable(history), current)
    if strategy.constrained:
        weights = apply_constraints(raw.weights, current, constraints_cfg, held=set(held), shares=objective.shares)
    elif any(raw.weights[d] > current[d] for d in held):
        weights = apply_constraints(raw.weights, current, FREE, held=set(held))
    else:
        weights = dict(raw.weights)  # static: the current mixture, exactly as it was
    latent = history.latent()
    default_target = getattr(getattr(strategy, "settings", None), "target", 1.0)  # deficit's, else 1
    total = sum(max(0.0, v) for v in raw.weights.values()) or 1.0
    rationale = {}
    feeders = history.feeders()
    for d in current:
        line = f"{current[d]:.3f} -> {weights[d]:.3f}: {raw.rationale[d]}"
        if d in held:
            line += f"; held back by the Goodhart guard: {', '.join(held[d])} (its weight may not rise)"
        feeds = [s for s, ds in feeders.items() if d in ds]
        line += "; " + (share_note(objective, d, max(0.0, raw.weights[d]) / total, weights[d])
                        or driver(objective, d, feeds=feeds, latent=latent, default_target=default_target))
        line += "".join(f"; {s} answers {history.constant[s]!r} to every item (at chance)"
                        for s in sorted(history.constant) if d in feeders.get(s, []))
        rationale[d] = line
    forecast = strategy.forecast(history, current, weights)
    for skill, why in history.unsteerable.items():  # measured, shown, not steered: say why
        score = history.latest.get(skill)
        forecast[skill] = {"score": score, "expected": score, "basis": f"not steered: {why}"}
    proposal = Proposal(weights=weights, rationale=rationale, forecast=forecast)
    if objective.deadlines or objective.shares or objective.heldout_mean_nondecreasing:
        on_current = strategy.forecast(history, current, current) if objective.deadlines else {}
        broken = violations(
            objective, weights=weights, current=current, latent=latent,
            expected={s: f["expected"] for s, f in forecast.items() if f.get("expected") is not None},
            expected_now={s: f["expected"] for s, f in on_current.items() if f.get("expected") is not None},
            heldout=history.heldout, mixtures=history.mixtures)
        if broken:
            raise Refused(broken, proposal)
    return proposal


# built-in strategies register on import, like a user's would
from backend.controllers import deficit, doremi, mixing_law, odm, static  # noqa: E402,F401
