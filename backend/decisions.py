"""Decisions: the rules a person's (or the policy's) choice must obey before
the store records it. The CLI, the dashboard pages and the loop all call
these functions; the store only keeps what they decide.

- `decide`: approve, reject or edit a pending proposal. A decision on a
  proposal that is no longer pending is refused (exactly one of two people
  deciding at once wins), and edited weights obey the one weights rule
  (backend/mixture.py).
- `set_mixture`: a person's manual mixture, stored as an approved `manual`
  proposal that applies at the next checkpoint like any other (see
  Store.apply_approved for what wins a checkpoint boundary).
- A mixture a person approves, edits or sets must have a checkpoint left
  to apply at (`applies_at`), and must not take a domain past its
  max_epochs where the data counted so far already shows it would
  (`within_max_epochs`, under data.on_max_epochs = refuse). What only the
  checkpoint can tell is judged there: RunClient.apply rejects an approved
  mixture that breaks max_epochs (`refuse_approved`), the policy's
  approvals included.
- `set_policy`: auto | human, audited; a switch to the policy in force
  writes nothing.
- `send_command`: pause / resume / stop, as the run's state allows.
- `pin_link`: pin a (skill, domain) affinity link on or off, or clear it.
- A policy switch or a pin needs a checkpoint left to steer (`applies_at`),
  as a mixture does.
- `set_objective`: a person's objective for a running run (the newest
  applies from the next proposal on).

Every refusal raises a named error (DecisionError, CommandError, or the
store's NotFound) and changes nothing.
"""

from __future__ import annotations

import dataclasses
import time

from backend.mixture import WeightsError, validate_weights
from backend.status import applies_at
from backend.store import AUTO, Store, StoreError
from backend.vocab import COMMANDS, POLICIES, TERMINAL_STATES, config_tokens_per_step, next_boundary

ACTIONS = {"approve": "approved", "reject": "rejected", "edit": "edited"}


class DecisionError(StoreError):
    """A decision was refused: the proposal is no longer pending, or the
    weights are invalid. Nothing was changed."""


class CommandError(StoreError):
    """An unknown command, or one that does not fit the run's state."""


def decide(store: Store, proposal_id: int, action: str, *, weights: dict | None = None,
           by: str, reason: str | None = None) -> dict:
    """approve | reject | edit a pending proposal; returns it updated.

    Refused with DecisionError (and nothing changed) when the action is
    unknown, the proposal is not pending any more, edited weights are
    invalid, or an approved or edited mixture cannot apply (no checkpoint is
    left, or it breaks max_epochs: `check_applies`); NotFound when there is
    no such proposal."""
    if action not in ACTIONS:
        raise DecisionError(f"unknown action {action!r} ({', '.join(ACTIONS)})")
    p = store.proposal(proposal_id)
    final = None
    if action == "edit":
        if weights is None:
            raise DecisionError("edit needs weights")
        try:
            final = validate_weights(weights, list(p["current_weights"]))
        except WeightsError as e:
            raise DecisionError(f"edited weights refused: {e}") from None
    elif action == "approve":
        final = p["weights"]
    if final is not None:
        check_applies(store, p["run_id"], final, f"proposal {proposal_id} {ACTIONS[action]}")
    return _record(store, p, action, final, by=by, reason=reason)


def _record(store: Store, p: dict, action: str, final: dict | None, *, by: str, reason: str | None) -> dict:
    """Store a decision on proposal `p` if it is still pending."""
    status = ACTIONS[action]
    with store.transaction():
        # inside the write lock, so of two deciders exactly one sees it pending
        now_p = store.proposal(p["id"])
        if now_p["status"] != "pending":
            who = f" by {now_p['decided_by']}" if now_p["decided_by"] else ""
            raise DecisionError(f"proposal {p['id']} is {now_p['status']}{who}, not pending: decision refused")
        store.update_proposal(p["id"], status=status, decision=status, decided_by=by, decided_at=time.time(),
                              decision_reason=reason, final_weights=final)
        store.log_event(p["run_id"], status, f"proposal {p['id']} {status}" + (f": {reason}" if reason else ""),
                        actor=by, proposal_id=p["id"], before=p["current_weights"], after=final)
    return store.proposal(p["id"])


def auto_approve(store: Store, proposal_id: int) -> dict:
    """The `auto` policy approves a proposal; returns it as it now stands. A
    person who decided it first (between the worker's look at the policy and
    this call) keeps their decision: that is not an error. The policy
    approves at the checkpoint where the proposal applies, so max_epochs is
    judged there (RunClient.apply), not here."""
    p = store.proposal(proposal_id)
    try:
        return _record(store, p, "approve", p["weights"], by=AUTO, reason=None)
    except DecisionError:
        p = store.proposal(proposal_id)
        if p["status"] == "pending":
            raise
        return p


def refuse_approved(store: Store, p: dict, why: str) -> None:
    """An approved (or edited) proposal the worker cannot apply: `rejected`,
    `why` added to its reason, with an event `rejected` saying why; the
    mixture in force stays."""
    reason = f"{p['decision_reason']}; {why}" if p["decision_reason"] else why
    with store.transaction():
        store.update_proposal(p["id"], status="rejected", decision_reason=reason)
        store.log_event(p["run_id"], "rejected", f"proposal {p['id']} rejected: {why}", actor="worker",
                        proposal_id=p["id"], after=p["final_weights"])


def _steered_at(store: Store, run_id: int, run: dict, what: str, left: str) -> int:
    """applies_at, or DecisionError "`what` refused: run N is STATUS at step
    S of STEPS; no checkpoint is left `left`"."""
    at = applies_at(store, run)
    if at is None:
        raise DecisionError(f"{what} refused: run {run_id} is {run['status']} at step {run['step']} of "
                            f"{run['config']['train']['steps']}; no checkpoint is left {left}")
    return at


def check_applies(store: Store, run_id: int, weights: dict[str, float], what: str) -> None:
    """DecisionError, starting with `what`, when a mixture decided now
    cannot apply: no checkpoint is left (the error names the run and its
    state), or from the checkpoint where it would apply to the next a domain
    would pass its max_epochs on the data counted so far and
    data.on_max_epochs is refuse (the error names the domain, the epochs it
    would reach and its limit)."""
    run = store.run(run_id)
    at = _steered_at(store, run_id, run, what, "to apply a mixture")
    train = run["config"]["train"]
    counted = [c for c in store.checkpoints(run_id) if c["step"] <= at]
    if not counted:
        return
    end = next_boundary(at, train["checkpoint_every"], train["steps"])
    # the data counted at an earlier checkpoint is a lower bound: more trains before `at`
    trained, said = within_max_epochs(run["config"], counted[-1]["domain_usage"], weights,
                                      (end - at) * config_tokens_per_step(run["config"]),
                                      at_least=counted[-1]["step"] < at)
    if trained is None:
        raise DecisionError(f"{what} refused: from step {at} to {end}, {said}")


def within_max_epochs(config: dict, usage: dict | None, weights: dict[str, float], stretch_tokens: int, *,
                      at_least: bool = False) -> tuple[dict[str, float] | None, str]:
    """Whether `weights` may train a stretch of `stretch_tokens` training
    tokens under the domains' max_epochs (data.on_max_epochs).

    :param config: the run's resolved config, as stored.
    :param usage: a checkpoint's domain_usage ({domain: {"tokens",
        "epochs", "train_tokens"}}): the data trained up to it; a domain it
        does not count (None: a run whose trainer reports none) is not checked.
    :param at_least: `usage` is from a checkpoint before the stretch (the
        words say "at least").
    :return: (weights, "") when no domain would pass its max_epochs; else
        (what may train, what would pass and why, in words): the weights of
        backend.data.sampler.cap_weights under cap, None under refuse or when
        no other domain can take the rest."""
    usage = usage or {}
    sizes = {d: u.get("train_tokens") or (u["tokens"] / u["epochs"] if u.get("epochs") else None)
             for d, u in usage.items()}
    limits = {d["name"]: d["max_epochs"] for d in config["data"]["domains"]
              if d.get("max_epochs") is not None and sizes.get(d["name"])}
    if not limits:
        return weights, ""
    from backend.data.sampler import cap_weights

    capped, over = cap_weights(weights, {d: u["tokens"] for d, u in usage.items()}, sizes, limits, stretch_tokens)
    if not over:
        return weights, ""
    least = "at least " if at_least else ""
    said = "; ".join(f"{d} would reach {least}{e:.2f} epochs (max_epochs {limits[d]:g})" for d, e in over.items())
    if config["data"]["on_max_epochs"] == "refuse":
        return None, f"{said} (data.on_max_epochs = refuse)"
    if capped is None:
        return None, f"{said} (no other domain can take the rest)"
    return capped, said


def manual_rationale(current: dict[str, float], final: dict[str, float], by: str) -> dict[str, str]:
    """One line per domain for a manual mixture: "0.167 -> 0.300: set by NAME"."""
    return {d: f"{current[d]:.3f} -> {final[d]:.3f}: set by {by}" for d in final}


def set_mixture(store: Store, run_id: int, weights, *, by: str, reason: str | None = None,
                step: int | None = None) -> int:
    """A person's manual mixture: validated against the run's current
    domains, stored as an approved `manual` proposal made at `step` (default:
    the run's current step), applied at the next checkpoint. Returns its id.
    DecisionError names the bad domain, or why it cannot apply
    (`check_applies`: no checkpoint left, max_epochs); StoreError when the
    run has no mixture yet. Nothing is stored when refused."""
    current = store.current_weights(run_id)
    try:
        final = validate_weights(weights, list(current))
    except WeightsError as e:
        raise DecisionError(f"manual mixture refused: {e}") from None
    check_applies(store, run_id, final, "manual mixture")
    if step is None:
        step = store.run(run_id)["step"]
    return store.add_manual_proposal(run_id, step=step, current_weights=current, weights=final,
                                     rationale=manual_rationale(current, final, by), by=by, reason=reason)


def set_policy(store: Store, run_id: int, policy: str, *, by: str) -> None:
    """Switch a run between auto and human approval (audited); the policy
    in force already writes nothing. DecisionError when no checkpoint is
    left to steer (`applies_at`: the run finished, or only its last
    checkpoint is left); StoreError for an unknown policy; NotFound for an
    unknown run."""
    if policy not in POLICIES:
        raise StoreError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    with store.transaction():  # the look and the write together: of two same switches at once, one writes
        run = store.run(run_id)
        _steered_at(store, run_id, run, f"policy {policy}", "to steer")
        if run["policy"] != policy:
            store.record_policy(run_id, policy, by=by)


def command_fits(status: str, command: str) -> bool:
    """Whether `command` may be sent to a run in `status`: a run that is over
    (stopped, failed, finished) takes only `stop`; it is resumed by starting
    a worker (`run --resume`), not by a command."""
    return command in COMMANDS and (status not in TERMINAL_STATES or command == "stop")


def send_command(store: Store, run_id: int, command: str, *, by: str) -> int:
    """Queue pause / resume / stop for the worker that owns the run; returns
    the command id. CommandError for an unknown command or one that does not
    fit the run's state; NotFound for an unknown run."""
    if command not in COMMANDS:
        raise CommandError(f"unknown command {command!r} (known: {', '.join(COMMANDS)})")
    status = store.run(run_id)["status"]
    if not command_fits(status, command):
        raise CommandError(f"run {run_id} is {status}; use `run --resume {run_id}` to continue it")
    return store.add_command(run_id, command, by=by)


def pin_link(store: Store, run_id: int, skill: str, domain: str, on: bool | None, *, by: str,
             reason: str = "") -> None:
    """Pin the link "domain feeds skill" on (True) or off (False), or clear
    the pin (None): the affinity estimate then keeps that link at 1 or 0
    whatever the run's history says. Audited (event `pin`). DecisionError
    names an unknown steer skill or domain, or says that no checkpoint is
    left to steer (`applies_at`) (nothing changed); NotFound for an unknown
    run."""
    _steered_at(store, run_id, store.run(run_id), "pin", "to steer")
    skills = [s["name"] for s in store.skills(run_id) if s["kind"] == "steer"]
    domains = [d["name"] for d in store.domains(run_id)]
    if skill not in skills:
        raise DecisionError(f"pin refused: unknown skill {skill!r} (steer skills of run {run_id}: "
                            f"{', '.join(skills) or 'none'})")
    if domain not in domains:
        raise DecisionError(f"pin refused: unknown domain {domain!r} (domains of run {run_id}: "
                            f"{', '.join(domains) or 'none'})")
    if on not in (True, False, None):
        raise DecisionError(f"pin refused: on must be true, false or none (clear), got {on!r}")
    store.set_pin(run_id, skill, domain, on, by=by, reason=reason)


def set_objective(store: Store, run_id: int, objective: dict, *, by: str, reason: str = "") -> int:
    """A person's objective for a run that is not finished (a stopped or
    failed one may be resumed), in the shape of the
    config's [objective] table: validated against the run's config, stored
    resolved (every default filled in), audited (event `objective`, before
    and after); the next proposal steers by it. Returns its id.
    DecisionError names the field (objective.skills.copy.priority: ...)
    and changes nothing."""
    from backend.config import ConfigError, from_dict
    from backend.objective import parse

    run = store.run(run_id)
    if run["status"] == "finished":
        raise DecisionError(f"objective refused: run {run_id} is finished; no proposal is left to steer")
    try:
        cfg = parse(objective, from_dict(run["config"]))
    except ConfigError as e:
        raise DecisionError(f"objective refused: {e}") from None
    return store.add_objective(run_id, dataclasses.asdict(cfg), by=by, reason=reason)
