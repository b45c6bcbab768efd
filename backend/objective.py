"""The researcher's objective: what the controller optimises, and the
constraints every proposal must keep.

A run config's `[objective]` section (backend.config.schema.ObjectiveConfig),
or the newest override a person saved from the dashboard (audited like a
decision: backend.decisions.set_objective), becomes one frozen `Objective`:

    priority(skill)           weight of the skill in the controller's objective (default 1)
    target(skill, default)    score the skill should reach (default: the controller's target)
    deadlines                 "skill X at least S by T tokens"
    shares                    domain -> (least, largest) share of the mixture
    heldout_mean_nondecreasing  the mean held-out score must not fall

Strategies read priority and target; `backend.controllers.propose` applies
the shares like the shared constraints, refuses a proposal that would break
a deadline, a share or the held-out rule (`violations`), and says in every
rationale line which term drove the move (`driver`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from backend.vocab import Z95

EPS = 1e-9  # weights within this of a bound keep it (the projection's float error)


@dataclass(frozen=True)
class Deadline:
    """One "skill at least `score` by `tokens` training tokens" constraint."""

    skill: str
    score: float
    """Latent score the skill must reach."""
    tokens: int
    """By this many training tokens seen."""

    def describe(self) -> str:
        """`copy >= 0.60 by 2,000,000 tokens`."""
        return f"{self.skill} >= {self.score:.2f} by {self.tokens:,} tokens"


@dataclass(frozen=True)
class Objective:
    """What the controller optimises (see the module docstring). Built by
    `from_config`; every field empty means the default objective: every
    skill priority 1, toward the controller's one target, no constraint."""

    priorities: dict[str, float] = field(default_factory=dict)
    """Steer skill -> priority weight (skills not named: 1)."""
    targets: dict[str, float] = field(default_factory=dict)
    """Steer skill -> target score (skills not named: the controller's)."""
    deadlines: tuple[Deadline, ...] = ()
    shares: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Domain -> (least, largest) share of the mixture."""
    heldout_mean_nondecreasing: bool = False

    @classmethod
    def from_config(cls, cfg) -> Objective:
        """The objective of an ObjectiveConfig (already validated)."""
        return cls(
            priorities={s: g.priority for s, g in cfg.skills.items() if g.priority != 1.0},
            targets={s: g.target for s, g in cfg.skills.items() if g.target is not None},
            deadlines=tuple(Deadline(s, g.at_least, g.by_tokens) for s, g in cfg.skills.items()
                            if g.at_least is not None),
            shares={d: (b.min, b.max) for d, b in cfg.domains.items() if (b.min, b.max) != (0.0, 1.0)},
            heldout_mean_nondecreasing=cfg.heldout_mean_nondecreasing)

    def priority(self, skill: str) -> float:
        """The skill's priority weight (1 unless the objective names it)."""
        return self.priorities.get(skill, 1.0)

    def target(self, skill: str, default: float) -> float:
        """The skill's target score, or `default` (the controller's own)."""
        return self.targets.get(skill, default)

    def describe(self) -> list[str]:
        """One line per term that differs from the default objective."""
        lines = [f"{s}: priority {p:g}" for s, p in sorted(self.priorities.items())]
        lines += [f"{s}: target {t:.2f}" for s, t in sorted(self.targets.items())]
        lines += [f"deadline: {d.describe()}" for d in self.deadlines]
        lines += [f"domain {d}: share within [{lo:.2f}, {hi:.2f}]" for d, (lo, hi) in sorted(self.shares.items())]
        if self.heldout_mean_nondecreasing:
            lines.append("the held-out mean must not fall")
        return lines


DEFAULT = Objective()
"""The objective of a config without an [objective] section."""


def parse(data: dict, run_cfg):
    """A person's objective (plain data, the [objective] table's shape)
    checked against the run's config: the validated ObjectiveConfig, or
    ConfigError naming the field (objective.skills.copy.priority, ...)."""
    from backend.config import from_dict
    from backend.config.schema import ObjectiveConfig

    cfg = from_dict(data, ObjectiveConfig, path="objective")
    cfg.validate("objective", run_cfg)
    return cfg


def for_run(run_cfg, override: dict | None = None) -> Objective:
    """The objective a run steers by now: the newest override saved from the
    dashboard (`override`, stored already validated), else the config's."""
    return Objective.from_config(parse(override, run_cfg) if override is not None else run_cfg.objective)


# -- what the loop checks at a proposal -----------------------------------------------------


def _latest(series: list[dict]) -> dict | None:
    return series[-1] if series else None


def projected(e: dict, tokens: int) -> float:
    """The latent score `e` extrapolated at its slope per token to `tokens`
    (no further back than now): the trend, not a forecast of the mixture."""
    ahead = max(0, tokens - e["tokens_seen"])
    return e["score"] + (e.get("slope_per_token") or 0.0) * ahead


def behind(deadline: Deadline, latent: dict[str, list[dict]]) -> dict | None:
    """{"score", "projected"} when the skill's trend misses its deadline
    (already past it and below the score, or projected short of it); None
    when on track or not measured yet."""
    e = _latest(latent.get(deadline.skill, []))
    if e is None:
        return None
    p = projected(e, deadline.tokens)
    return {"score": e["score"], "projected": p} if p < deadline.score else None


def heldout_fall(heldout: dict[str, list[dict]]) -> dict | None:
    """The mean held-out latent score at the last two checkpoints every
    held-out skill was estimated at, when it fell beyond its noise (the
    drop exceeds Z95 x the standard error of the difference); else None.
    {"from_step", "step", "before", "after", "noise"}."""
    by_step: dict[int, list[dict]] = {}
    for series in heldout.values():
        for e in series:
            by_step.setdefault(e["step"], []).append(e)
    steps = [s for s in sorted(by_step) if len(by_step[s]) == len(heldout)]
    if len(heldout) == 0 or len(steps) < 2:
        return None
    a, b = by_step[steps[-2]], by_step[steps[-1]]

    def mean_se(es: list[dict]) -> tuple[float, float]:
        # each interval is score +- Z95 se; the mean of k independent scores has se sqrt(sum se^2) / k
        se = math.sqrt(sum(((e["hi"] - e["lo"]) / (2 * Z95)) ** 2 for e in es)) / len(es)
        return sum(e["score"] for e in es) / len(es), se

    (m0, s0), (m1, s1) = mean_se(a), mean_se(b)
    noise = Z95 * math.hypot(s0, s1)
    if m0 - m1 <= noise:
        return None
    return {"from_step": steps[-2], "step": steps[-1], "before": m0, "after": m1, "noise": noise}


def _l1(a: dict[str, float], b: dict[str, float]) -> float:
    return sum(abs(a[d] - b.get(d, 0.0)) for d in a)


def violations(objective: Objective, *, weights: dict[str, float], current: dict[str, float],
               latent: dict[str, list[dict]], expected: dict[str, float], expected_now: dict[str, float],
               heldout: dict[str, list[dict]], mixtures: list[dict]) -> list[str]:
    """Why the proposal `weights` breaks the objective (one line per broken
    constraint, naming it); empty when it keeps every one.

    :param latent: steer skill -> latent estimates by step.
    :param expected: steer skill -> score the strategy expects at the next
        checkpoint under `weights`; `expected_now` the same under `current`.
    :param heldout: held-out skill -> latent estimates by step.
    :param mixtures: [{step, weights}] by checkpoint (History.mixtures).
    """
    out = []
    for d, (lo, hi) in sorted(objective.shares.items()):
        w = weights.get(d, 0.0)
        if w < lo - EPS:
            out.append(f"constraint objective.domains.{d}.min: {d} would get {w:.3f} of the mixture, "
                       f"below its least share {lo:.3f}")
        if w > hi + EPS:
            out.append(f"constraint objective.domains.{d}.max: {d} would get {w:.3f} of the mixture, "
                       f"above its largest share {hi:.3f}")
    for dl in objective.deadlines:
        late = behind(dl, latent)
        if late is None or dl.skill not in expected or dl.skill not in expected_now:
            continue
        if expected[dl.skill] < expected_now[dl.skill] - EPS:
            out.append(f"constraint {dl.describe()}: {dl.skill} is at {late['score']:.2f} and its trend reaches "
                       f"{late['projected']:.2f}, short of {dl.score:.2f}; this proposal is expected to slow it "
                       f"({expected[dl.skill]:.3f} at the next checkpoint vs {expected_now[dl.skill]:.3f} "
                       f"on the current mixture)")
    fall = heldout_fall(heldout) if objective.heldout_mean_nondecreasing else None
    if fall is not None:
        trained = {m["step"]: m["weights"] for m in mixtures}
        before = trained.get(fall["from_step"])
        if before is not None and _l1(weights, before) > _l1(current, before) + EPS:
            out.append(f"constraint heldout_mean_nondecreasing: the held-out mean fell from {fall['before']:.3f} "
                       f"to {fall['after']:.3f} between steps {fall['from_step']} and {fall['step']} (beyond "
                       f"its noise, {fall['noise']:.3f}); this proposal moves the mixture further from the one "
                       f"trained before the fall (L1 {_l1(current, before):.3f} -> {_l1(weights, before):.3f})")
    return out


def driver(objective: Objective, domain: str, *, feeds: list[str], latent: dict[str, list[dict]],
           default_target: float) -> str:
    """The objective term that drives `domain`'s weight: of the steer skills
    it feeds, the one with the largest priority x gap to its target, with
    the deadline it is behind, if any."""
    best = None
    for s in feeds:
        e = _latest(latent.get(s, []))
        if e is None:
            continue
        gap = max(0.0, objective.target(s, default_target) - e["score"])
        pull = objective.priority(s) * gap
        if best is None or pull > best[0]:
            best = (pull, s, gap)
    if best is None:
        return "objective: feeds no measured steer skill"
    _, s, gap = best
    line = (f"objective: {s} (priority {objective.priority(s):g} x gap {gap:.2f} to target "
            f"{objective.target(s, default_target):.2f})")
    for dl in objective.deadlines:
        late = behind(dl, latent) if dl.skill in feeds else None
        if late is not None:
            line += f"; deadline {dl.describe()} behind (trend reaches {late['projected']:.2f})"
    return line


def share_note(objective: Objective, domain: str, raw: float, final: float) -> str | None:
    """"constraint: ..." when one of the domain's share bounds holds its
    final weight where the strategy wanted it elsewhere (raw: its share of
    the strategy's normalised proposal); else None."""
    if domain not in objective.shares:
        return None
    lo, hi = objective.shares[domain]
    if abs(final - lo) <= 1e-6 and raw < lo:
        return f"constraint: objective.domains.{domain}.min holds it at its least share {lo:.3f}"
    if abs(final - hi) <= 1e-6 and raw > hi:
        return f"constraint: objective.domains.{domain}.max holds it at its largest share {hi:.3f}"
    return None
