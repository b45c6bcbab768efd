"""The client API: what any training script calls at a checkpoint to put its
run under the closed loop (dashboard, proposals, approvals), without
letting this project own training. The built-in loop (backend.loop) is
itself a user of it: both paths share one set of rules.

    client = RunClient.register(store, cfg)           # or RunClient(store, run_id)
    weights = client.mixture_at(0)                     # train on these
    ... train to step k ...
    client.report_steps([{"step": s, "loss": ..., "lr": ...}, ...])  # optional: training curves
    client.report_checkpoint(k, tokens_seen)
    client.evaluate(k, model, tokenizer)               # or report_measurements(k, rows)
    client.boundary(k)                                 # estimate, guard, apply, propose
    weights = client.mixture_at(k)                     # train on these from step k on
                                                       # (stretch_weights(k): within max_epochs)

`boundary` is idempotent per checkpoint: the newest approved proposal is
applied exactly once (Store.apply_approved: audited; a second call at the
same checkpoint changes nothing), and a proposal is stored once per
checkpoint (Store.add_proposal). Each report checks all it is given before it
writes, in one transaction: a refused call (StoreError naming the field)
writes nothing; the checkpoints go forward (none before one whose boundary
is done), a boundary needs its checkpoint's measurements, and a finished
run takes no boundary.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import operator
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

from backend import config as config_mod
from backend import affinity, controllers, decisions, guard, objective, vocab
from backend.config import ConfigError, RunConfig
from backend.controllers import History
from backend.forecast_errors import record_forecast_errors
from backend.mixture import validate_weights
from backend.store import TRAIN_LOG_KEYS, Store, StoreError

DOMAIN_KEYS = ("name", "source", "skills", "size_tokens", "tokens_per_doc")
"""The keys of a domain row given to RunClient.register / set_domains."""
MEASUREMENT_KEYS = ("task", "skill", "domain", "metric", "value", "stderr", "n", "prompt_variant", "decoding",
                    "scorer")
"""The keys of a measurement row given to RunClient.report_measurements."""
SAMPLE_KEYS = ("task", "doc_id", "prompt", "target", "response", "correct")
"""The keys of a per-item sample given to RunClient.report_measurements."""
MEASUREMENT_FACETS = ("task", "metric", "prompt_variant", "decoding", "scorer")
"""What identifies a measurement at a step (the measurements table's key)."""
TRAIN_LOG_ROWS = 2_000
"""Training-curve rows a run keeps at most (about): StepLog sums each
window of ceil(train.steps / TRAIN_LOG_ROWS) steps into one row, so a
10,000-step run logs every 5th step's window and a demo logs every step."""


def task_specs(cfg: RunConfig) -> list:
    """evaluation.tasks, without held-out tasks when evaluation.holdout is off."""
    if cfg.evaluation.holdout:
        return list(cfg.evaluation.tasks)
    return [dataclasses.replace(t, holdout=None) for t in cfg.evaluation.tasks]


def skill_kinds(cfg: RunConfig) -> list[str]:
    """The skill kinds a run evaluates: steer, and holdout unless switched off."""
    return list(vocab.SKILL_KINDS) if cfg.evaluation.holdout else ["steer"]


def initial_weights(cfg: RunConfig, domains: list[dict]) -> dict[str, float]:
    """The first mixture: uniform, natural (by each domain's size_tokens) or
    the configured weights. domains: rows with name and size_tokens."""
    names = [d["name"] for d in domains]
    init = cfg.mixture.initial
    if init == "uniform":
        return {n: 1 / len(names) for n in names}
    if init == "natural":
        total = sum(d["size_tokens"] for d in domains)
        return {d["name"]: d["size_tokens"] / total for d in domains}
    return validate_weights(init, names)


def skill_rows(cfg: RunConfig, domains: list[dict], task_configs: list[dict]) -> list[dict]:
    """The skills table of a run: every synthetic steer skill and every
    evaluation.tasks skill, each with its held-out twin where evaluated, the
    domains that feed it, its tasks (from `task_configs`: {"task", "metadata":
    {"skill", and for lm-eval tasks "metric", "higher_is_better", "chance"}}),
    metric, direction and chance level."""
    from backend.data.skills import get_skill
    from backend.evaluation.tasks import constant_answer_rate

    def tasks_of(name: str) -> list[str]:
        return [t["task"] for t in task_configs if t["metadata"]["skill"] == name]

    rows = []
    for base in cfg.steer_skills:
        feeds = [d["name"] for d in domains if base in d["skills"]]
        for kind in skill_kinds(cfg):
            name = vocab.skill_name(base, kind)
            rows.append({"name": name, "base": base, "kind": kind, "domains": feeds, "tasks": tasks_of(name),
                         "difficulty": get_skill(base).difficulty, "metric": "exact_match",
                         "higher_is_better": 1, "chance": constant_answer_rate(base, kind, cfg.seed)})
    facts: dict[str, list[dict]] = {}  # skill -> its tasks' metadata (one metric and direction: resolve_tasks)
    for t in task_configs:
        if "metric" in t["metadata"]:
            facts.setdefault(t["metadata"]["skill"], []).append(t["metadata"])
    for spec in task_specs(cfg):
        for kind in ("steer", "holdout") if spec.holdout else ("steer",):
            name = vocab.skill_name(spec.skill, kind)
            metas = facts.get(name, [])
            meta = metas[0] if metas else {}
            # the skill's score is the unweighted mean of its tasks' scores: so is its chance
            chances = [m.get("chance") for m in metas]
            chance = sum(chances) / len(chances) if chances and None not in chances else None
            rows.append({"name": name, "base": spec.skill, "kind": kind, "domains": list(spec.domains),
                         "tasks": tasks_of(name), "difficulty": None, "metric": meta.get("metric"),
                         "higher_is_better": int(meta.get("higher_is_better", True)), "chance": chance})
    return rows


def evaluation_tasks(cfg: RunConfig, run_dir: Path) -> tuple[list[dict], object | None]:
    """The run's evaluation tasks, without a model: the synthetic skills'
    lm-eval task configs (their items written under run_dir/evaldata) and the
    TaskSet of evaluation.tasks (None when there are none)."""
    from backend.evaluation.lmeval_tasks import resolve_tasks
    from backend.evaluation.tasks import build_tasks

    synthetic = []
    if cfg.steer_skills:
        synthetic = build_tasks(cfg.steer_skills, skill_kinds(cfg), run_dir / "evaldata",
                                cfg.evaluation.items_per_skill, cfg.seed, cfg.evaluation.max_gen_toks,
                                cfg.evaluation.loglikelihood, cfg.evaluation.item_rounds)
    taskset = resolve_tasks(task_specs(cfg)) if cfg.evaluation.tasks else None
    return synthetic, taskset


def taskset_configs(taskset) -> list[dict]:
    """The task configs of a TaskSet as the skills table reads them (task
    name, skill, metric, direction, chance)."""
    return [{"task": leaf.name, "metadata": {
        "skill": leaf.skill, "metric": leaf.metric, "higher_is_better": leaf.higher_is_better,
        "chance": leaf.chance}} for leaf in taskset.leaves] if taskset is not None else []


class EpochLimitError(StoreError):
    """The mixture in force at a checkpoint would repeat a domain past its
    max_epochs by the next one, and data.on_max_epochs is refuse (or no
    other domain can take the rest); the message names the domain."""


def _no_stage(stage: str) -> None:
    """The default on_stage: nothing to show."""


class StepLog:
    """Per-step training values, summed into one train_log row per window
    of `every` optimizer steps (mean loss, mean grad norm, the lr at the
    window's last step, tokens per wall second over the window) and
    written through `RunClient.report_steps` about every `flush_s` seconds.

    The grad norm may be a 0-dim tensor: it is averaged as given and turned
    into a float once per window, so a GPU syncs once per window, not per
    step. Build one per training stretch (`RunClient.step_log`): its clock
    starts when built, so the time between stretches (evaluation) is not
    counted as training, and `close()` at the stretch's end writes the
    last, partial window."""

    def __init__(self, client: RunClient, every: int, flush_s: float = 1.0):
        self.client, self.every, self.flush_s = client, max(1, every), flush_s
        self.rows: list[dict] = []  # closed windows not yet written
        self.window: list[tuple] = []  # (loss, grad_norm) of the open window's steps
        self.step, self.lr = None, None  # the open window's last step and its lr
        self.started = self.flushed = time.perf_counter()  # wall seconds

    def add(self, step: int, loss: float, *, lr: float | None = None, grad_norm=None) -> None:
        """One optimizer step just done: `step` is the step count after it;
        `loss` and `grad_norm` may stay 0-dim tensors (read once per window)."""
        self.window.append((loss, grad_norm))
        self.step, self.lr = step, lr
        if step % self.every == 0:
            self._close_window()
        if self.rows and time.perf_counter() - self.flushed >= self.flush_s:
            self._write()

    def close(self) -> None:
        """Write everything, the open window included."""
        self._close_window()
        self._write()

    def _close_window(self) -> None:
        if not self.window:
            return
        now = time.perf_counter()
        norms = [g for _, g in self.window if g is not None]
        self.rows.append({
            "step": self.step, "loss": float(sum(l for l, _ in self.window) / len(self.window)), "lr": self.lr,
            "grad_norm": float(sum(norms) / len(norms)) if norms else None,
            "tokens_per_s": len(self.window) * self.client.tokens_per_step / max(now - self.started, 1e-9)})
        self.window, self.started = [], now

    def _write(self) -> None:
        if self.rows:
            self.client.report_steps(self.rows)
        self.rows, self.flushed = [], time.perf_counter()


class RunClient:
    """One run in the store, seen from the training script that trains it.

    `RunClient(store, run_id)` opens an existing run (NotFound lists the
    runs); `RunClient.register(store, cfg)` creates one."""

    def __init__(self, store: Store, run_id: int):
        self.store = store
        self.run_id = run_id
        row = store.run(run_id)
        self.config = row["config"]  # as stored (resolved)
        self.cfg = config_mod.from_dict(row["config"])
        self.replay = row["replay_schedule"]
        self.strategy = controllers.make_strategy(self.cfg.controller)
        self.tokens_per_step = vocab.tokens_per_step(self.cfg.train.batch_size, self.cfg.data.context_length)
        self.checkpoint_tokens = self.cfg.train.checkpoint_every * self.tokens_per_step
        self._evaluator = None  # (model, ModelEvaluator) built by `evaluate` on first use

    # -- registering ------------------------------------------------------------
    @classmethod
    def register(cls, store: Store, cfg: RunConfig, *, domains: list[dict] | None = None) -> RunClient:
        """Create a run from a validated config: its domains, its skills (the
        synthetic skills and evaluation.tasks, with their lm-eval tasks), its
        strategy and policy (from cfg.controller and cfg.policy), and the
        first mixture segment at step 0. The run is `running` from here on.

        :param domains: rows {"name", "source", "skills" (list), "size_tokens",
            "tokens_per_doc" (optional)}, one per cfg.data.domains, in any
            order; None builds them from the config (backend.data.domains).
        :return: the client of the new run (its id: `.run_id`).
        ConfigError naming the field when a domain row does not fit the
        config or a task cannot run here; nothing is written then."""
        from backend.loop import check_tasks, run_dir_for

        if domains is None:
            from backend.data.domains import build_domains

            domains = [{"name": d.name, "source": d.source, "skills": list(d.skills), "size_tokens": d.size_tokens}
                       for d in build_domains(cfg.data.domains, seed=cfg.seed)]
        rows = _check_domains(domains, cfg)
        check_tasks(cfg)  # a task that cannot run here is refused before anything is written
        run_id = store.create_run(cfg.to_dict())
        client = cls(store, run_id)
        run_dir = run_dir_for(store, run_id)
        synthetic, taskset = evaluation_tasks(cfg, run_dir)
        client.set_domains(rows)
        client.set_skills(synthetic + taskset_configs(taskset))
        client.start(initial_weights(cfg, rows))
        store.update_run(run_id, status="running", run_dir=str(run_dir))
        store.log_event(run_id, "client", f"run {run_id} registered by a training script (backend.client)")
        return client

    def set_domains(self, domains: list[dict]) -> None:
        """Write the run's domains (rows as in `register`)."""
        self.store.set_domains(self.run_id, [{k: d.get(k) for k in DOMAIN_KEYS} for d in domains])

    def set_skills(self, task_configs: list[dict]) -> None:
        """Write the run's skills (skill_rows) from its evaluation task configs."""
        self.store.set_skills(self.run_id, skill_rows(self.cfg, self.store.domains(self.run_id), task_configs))

    def start(self, weights: dict[str, float]) -> None:
        """The first segment at step 0 when the run has none yet: `weights`,
        or the first segment of the schedule a replay run follows."""
        if self.store.schedule(self.run_id):
            return
        source, by = "initial", None
        if self.replay is not None:  # who approved it travels with it, as in follow_replay
            first = self.replay["segments"][0]
            weights, source, by = first["weights"], "replay", first.get("approved_by")
        self.store.add_segment(self.run_id, from_step=0, tokens_at=0, weights=weights, source=source,
                               proposal_id=None, decided_by=by)

    # -- reporting ----------------------------------------------------------------
    def report_checkpoint(self, step: int, tokens_seen: int, *, train_loss: float | None = None,
                          tokens_per_domain: dict[str, int] | None = None, path: str | None = None,
                          weights: dict[str, float] | None = None, wall_time: float | None = None,
                          tokens_per_s: float | None = None) -> None:
        """Record a checkpoint the script has taken at optimizer step `step`.

        :param tokens_seen: training tokens so far.
        :param train_loss: recent mean training loss (nats/token).
        :param tokens_per_domain: domain -> tokens trained so far (kept as an
            audit event `tokens_per_domain`).
        :param path: where the checkpoint's files are ("" if none).
        :param weights: the mixture that trained the stretch ending here
            (default: the segment in force at the previous step).
        Idempotent: a second call for the same step only updates its path.
        StoreError naming the field, with nothing written, for a step that
        is not an integer in [0, train.steps] or lies before a checkpoint
        whose boundary is done (the schedule has moved on from there),
        tokens_seen that is not an integer >= 0 or goes backwards against
        the run's other checkpoints, a train_loss that is not a number,
        weights that are not a mixture of the run's domains summing to 1,
        tokens_per_domain with an unknown domain or a count that is not an
        integer >= 0 (numpy integers are taken as int). A NaN or infinite
        train_loss is a training event (divergence), not bad input: it is
        stored as None with an event `train_loss`."""
        step = _integer(step, "step")
        if step > self.cfg.train.steps:
            raise StoreError(f"step: {step} is past the run's last step (train.steps {self.cfg.train.steps})")
        self._check_not_before_done(step)
        tokens_seen = _integer(tokens_seen, "tokens_seen")
        for c in self.store.checkpoints(self.run_id):
            earlier, later = c["step"] < step, c["step"] > step
            if (earlier and c["tokens_seen"] > tokens_seen) or (later and c["tokens_seen"] < tokens_seen):
                raise StoreError(f"tokens_seen: {tokens_seen} at step {step} goes backwards against checkpoint "
                                 f"{c['step']} ({c['tokens_seen']} tokens)")
        diverged = None
        if train_loss is not None:
            if isinstance(train_loss, numbers.Real) and not isinstance(train_loss, bool) \
                    and not math.isfinite(train_loss):
                diverged, train_loss = float(train_loss), None
            else:
                train_loss = _number(train_loss, "train_loss")
        if weights is None:
            weights = self.store.weights_at(self.run_id, max(step - 1, 0))
        else:
            try:
                checked = validate_weights(weights, self.cfg.domain_names)
            except ValueError as e:
                raise StoreError(f"weights: {e}") from None
            if not math.isclose(sum(weights.values()), 1.0, abs_tol=1e-6):
                raise StoreError(f"weights: sum to {sum(weights.values()):g}, not 1")
            weights = checked
        if tokens_per_domain is not None:
            if not isinstance(tokens_per_domain, dict):
                raise StoreError(f"tokens_per_domain: expected an object, got {type(tokens_per_domain).__name__}")
            for d in tokens_per_domain:
                if d not in self.cfg.domain_names:
                    raise StoreError(f"tokens_per_domain.{d}: unknown domain (domains: "
                                     f"{', '.join(self.cfg.domain_names)})")
            tokens_per_domain = {d: _integer(v, f"tokens_per_domain.{d}") for d, v in tokens_per_domain.items()}
        run = self.store.run(self.run_id)
        wall = wall_time if wall_time is not None else time.time() - run["created_at"]
        with self.store.transaction():
            self.store.add_checkpoint(self.run_id, step=step, tokens_seen=tokens_seen, train_loss=train_loss,
                                      wall_time=wall, tokens_per_s=tokens_per_s if tokens_per_s is not None
                                      else run["tokens_per_s"], path=path or "", weights=weights)
            self.store.heartbeat(self.run_id, step=step, tokens_seen=tokens_seen)
            if diverged is not None:
                self.store.log_event(self.run_id, "train_loss", f"training loss at step {step} is {diverged} "
                                     "(diverged?); stored as unknown")
            if tokens_per_domain is not None:
                self.store.log_event(self.run_id, "tokens_per_domain", f"tokens per domain at step {step}",
                                     after=tokens_per_domain)

    def _check_not_before_done(self, step: int) -> None:
        """StoreError when a checkpoint after `step` has its boundary done:
        the schedule moved on from there, and a stale step must not rewrite it."""
        done = [c["step"] for c in self.store.checkpoints(self.run_id) if c["boundary_done"] and c["step"] > step]
        if done:
            raise StoreError(f"step: {step} is before checkpoint {max(done)}, whose boundary is done; "
                             "a run reports its checkpoints in order (a resume repeats the latest)")

    def report_steps(self, rows: list[dict]) -> None:
        """Training-curve rows for the Training page, at any cadence (each
        optimizer step, or one row per logging window).

        :param rows: {"step" (optimizer step, required), "tokens_seen"
            (default step x tokens per step), "loss" (mean training loss over
            the window, nats/token), "lr", "grad_norm" (global norm before
            clipping), "tokens_per_s" (training tokens per wall second)};
            a missing value is None.
        StoreError naming the row and key for an unknown key or a missing
        step; nothing is written then. A row for a step already logged
        replaces it (a resumed run retrains a stretch)."""
        out = []
        for i, r in enumerate(rows):
            unknown = [k for k in r if k not in TRAIN_LOG_KEYS]
            if unknown:
                raise StoreError(f"rows[{i}].{unknown[0]}: unknown key (keys: {', '.join(TRAIN_LOG_KEYS)})")
            if not isinstance(r.get("step"), int) or r["step"] < 0:
                raise StoreError(f"rows[{i}].step: an optimizer step (int >= 0) is required, got {r.get('step')!r}")
            out.append({"tokens_seen": r["step"] * self.tokens_per_step, **r})
        self.store.add_train_log(self.run_id, out)

    def step_log(self) -> StepLog:
        """A StepLog for one training stretch, its window sized so that the
        whole run keeps about TRAIN_LOG_ROWS rows."""
        return StepLog(self, -(-self.cfg.train.steps // TRAIN_LOG_ROWS))

    def report_measurements(self, step: int, rows: list[dict], samples: list[dict] | None = None) -> None:
        """Measurements computed elsewhere, for the checkpoint at `step`
        (report_checkpoint first).

        :param rows: per skill {"skill" (a stored skill name), "task", "metric",
            "value", "stderr" (None if unknown), "n", and the facets
            "prompt_variant", "decoding", "scorer"}; per domain held-out loss
            {"domain", "task", "metric": "loss", "value", "stderr", "n"}.
        :param samples: per-item results {"task", "doc_id", "prompt", "target",
            "response", "correct"} (optional).
        StoreError naming the row (or sample) index and key for an unknown
        skill, domain or key, a repeated row, or a value that is not what
        the key holds: "value" a finite number; "stderr" a finite number
        >= 0 or None; "n" a positive integer (None only on a domain's loss
        row); "task", "metric" non-empty strings; a sample's "doc_id" an
        integer >= 0. Nothing is written then. Once the checkpoint's boundary
        is done its measurements stay as the boundary used them: a call with
        the same rows (replayed) changes nothing, other rows are refused.
        Otherwise rows and samples are written together and the checkpoint
        is marked evaluated."""
        ck = self._checkpoint(step)
        kinds = {s["name"]: s["kind"] for s in self.store.skills(self.run_id)}
        domains = {d["name"] for d in self.store.domains(self.run_id)}
        out, seen = [], {}
        for i, r in enumerate(rows):
            row = _measurement_row(i, r, kinds, domains, self.run_id)
            key = tuple(row[k] for k in MEASUREMENT_FACETS)
            if key in seen:
                raise StoreError(f"rows[{i}]: the same task, metric and facets as rows[{seen[key]}] ({key})")
            seen[key] = i
            out.append({**row, "step": step, "tokens_seen": ck["tokens_seen"]})
        samples = [_sample_row(j, r) for j, r in enumerate(samples or [])]
        if ck["boundary_done"]:
            if _same_measurements(out, self.store.measurements(self.run_id, since_step=step)):
                return  # a replayed call: what the boundary used is stored already
            raise StoreError(f"step: the boundary of checkpoint {step} is done and acted on its measurements; "
                             "they are kept as they were (a replayed call must report the same rows)")
        with self.store.transaction():
            self.store.add_measurements(self.run_id, out)
            if samples:
                self.store.add_samples(self.run_id, step, samples)
            self.store.mark_checkpoint(self.run_id, step, evaluated=True)

    def record_evaluation(self, step: int, evaluator, on_progress: Callable | None = None) -> None:
        """Evaluate with an Evaluator (backend.loop.Evaluator: per skill and
        per-domain held-out loss) on the items of this checkpoint, and store
        the results (report_measurements)."""
        measurements, samples = evaluator.evaluate(step // self.cfg.train.checkpoint_every, on_progress=on_progress)
        rows = list(measurements)
        for d, r in evaluator.domain_losses().items():
            rows.append({"domain": d, "task": f"heldout_loss/{d}", "metric": "loss", "scorer": "nll", **r})
        self.report_measurements(step, rows, samples)
        if self.cfg.evaluation.gradient_alignment and hasattr(evaluator, "alignment"):
            steer = {s["name"] for s in self.store.skills(self.run_id) if s["kind"] == "steer"}
            self.store.add_alignment(self.run_id, step, evaluator.alignment(measurements, samples, steer))

    def evaluate(self, step: int, model, tokenizer, *, device="cpu") -> None:
        """Evaluate the model in memory at checkpoint `step` with the run's
        tasks, through the same lm-eval path as the built-in loop (the
        synthetic skills with HarnessEvaluator, evaluation.tasks with
        TaskEvaluator, per-domain held-out loss), and store the results.
        The evaluator is built once per model and reused."""
        if self._evaluator is None or self._evaluator[0] is not model:
            from backend.data.cache import cache_root
            from backend.data.domains import build_domains
            from backend.data.sampler import MixtureSampler
            from backend.loop import build_evaluator, run_dir_for

            run_dir = run_dir_for(self.store, self.run_id)
            domains = build_domains(self.cfg.data.domains, seed=self.cfg.seed)
            sampler = MixtureSampler(domains, tokenizer, self.cfg.data.context_length, self.cfg.seed,
                                     cache_dir=cache_root(self.cfg.data.cache_dir, run_dir))
            self._evaluator = (model, build_evaluator(self.cfg, run_dir, model, tokenizer, device, sampler))
        self.record_evaluation(step, self._evaluator[1])

    # -- the boundary -------------------------------------------------------------
    def boundary(self, step: int, *, on_phase: Callable[[str, int], None] | None = None,
                 on_stage: Callable[[str], None] = _no_stage) -> None:
        """The rest of checkpoint `step`'s boundary, after its evaluation:
        estimate latent capability and run the Goodhart guard, estimate and
        record the affinity (Store.record_affinity), score the last forecast, then (before the last step) apply the newest approved
        proposal exactly once and let the strategy propose (policy auto
        approves and applies it at once); a replay run follows its schedule
        instead. Idempotent: a checkpoint whose boundary is done is left alone.
        StoreError on a finished run, for a step before a checkpoint whose
        boundary is done (it would rewrite the schedule from there), and for
        a checkpoint without measurements (report_measurements or evaluate
        first: the estimate and the proposal are made from them); nothing is
        written then.

        on_phase(phase, step) is called after "estimate", "apply", "propose"
        (backend.loop.PHASES); on_stage(words) when a long stage starts."""
        on_phase = on_phase or (lambda phase, s: None)
        if self.store.run(self.run_id)["status"] == "finished":
            raise StoreError(f"run {self.run_id} is finished: no boundary at step {step}")
        self._check_not_before_done(step)
        ck = self._checkpoint(step)
        if ck["boundary_done"]:
            return
        if not ck["evaluated"]:
            raise StoreError(f"step: checkpoint {step} of run {self.run_id} has no measurements; report them first "
                             f"(report_measurements({step}, rows) or evaluate({step}, model, tokenizer))")
        tokens = ck["tokens_seen"]
        on_stage("estimating")
        estimates = self.estimate_and_guard(step)
        history = self.history(estimates)
        self.store.record_affinity(self.run_id, step, affinity.rows(history.affinity))
        record_forecast_errors(self.store, self.run_id, step)  # how far the last forecast was off
        on_phase("estimate", step)
        if step < self.cfg.train.steps:  # nothing to steer after the last checkpoint
            if self.replay is not None:
                self.follow_replay(step, tokens)
            else:
                self.apply(step)
                on_phase("apply", step)
                on_stage("proposing")
                self.propose(step, history)
                on_phase("propose", step)
        self.store.mark_checkpoint(self.run_id, step, boundary_done=True)

    def mixture_at(self, step: int) -> dict[str, float]:
        """The weights to train from `step` on (domain -> weight, sum 1): the
        segment in force at `step`, after the boundary there was run."""
        return self.store.weights_at(self.run_id, step)

    def apply(self, step: int) -> dict | None:
        """Apply the newest approved (or edited) proposal at checkpoint
        `step` (Store.apply_approved: audited, idempotent); returns the
        proposal that owns the segment from `step`, or None. A waiting
        proposal whose mixture cannot train from `step` (within_max_epochs)
        is rejected first, with an event saying why, so it never enters the
        schedule and the mixture in force stays."""
        tokens = self._checkpoint(step)["tokens_seen"]
        with self.store.transaction():
            for p in self.store.proposals(self.run_id):
                if p["status"] in ("approved", "edited"):
                    trained, said = self.within_max_epochs(step, p["final_weights"])
                    if trained is None:
                        decisions.refuse_approved(self.store, p, f"its mixture cannot train from step {step}: {said}")
            return self.store.apply_approved(self.run_id, step=step, tokens_at=tokens)

    def within_max_epochs(self, step: int, weights: dict[str, float]) -> tuple[dict[str, float] | None, str]:
        """decisions.within_max_epochs of `weights` for the stretch from
        checkpoint `step` to the next, on the data that checkpoint counted
        (its domain_usage)."""
        end = vocab.next_boundary(step, self.cfg.train.checkpoint_every, self.cfg.train.steps)
        return decisions.within_max_epochs(self.config, self._checkpoint(step)["domain_usage"], weights,
                                           (end - step) * self.tokens_per_step)

    def stretch_weights(self, step: int) -> dict[str, float]:
        """The weights to train from checkpoint `step` (its boundary done) to
        the next: the mixture in force, or, where a domain would pass its
        max_epochs by then, under data.on_max_epochs = cap the capped weights
        (an event `max_epochs`). Under refuse (or when no other domain can
        take the rest): an event `max_epochs` saying why, the boundary at
        `step` reopened, so that a mixture set meanwhile applies there when
        the run resumes, and EpochLimitError."""
        weights = self.mixture_at(step)
        trained, said = self.within_max_epochs(step, weights)
        if not said:
            return weights
        end = vocab.next_boundary(step, self.cfg.train.checkpoint_every, self.cfg.train.steps)
        if trained is None:
            msg = (f"mixture refused for steps {step}-{end}: {said}; set a mixture that fits (set-mixture "
                   f"{self.run_id}) to go on from step {step}")
            with self.store.transaction():
                self.store.log_event(self.run_id, "max_epochs", msg, before=weights)
                self.store.mark_checkpoint(self.run_id, step, boundary_done=False)
            raise EpochLimitError(msg)
        self.store.log_event(self.run_id, "max_epochs", f"mixture capped for steps {step}-{end}: {said}",
                             before=weights, after=trained)
        return trained

    def finish(self, step: int) -> None:
        """The run ended at `step`: what is still open expires, status finished."""
        self.store.expire_open(self.run_id, f"the run finished at step {step}; no checkpoint is left to apply it")
        self.store.update_run(self.run_id, status="finished", phase="finished", phase_started=time.time(),
                              tokens_per_s=None)
        self.store.log_event(self.run_id, "finished", f"finished at step {step}")

    def _checkpoint(self, step: int) -> dict:
        ck = self.store.checkpoint(self.run_id, step)
        if ck is None:
            raise StoreError(f"step: run {self.run_id} has no checkpoint at step {step} (report_checkpoint first)")
        return ck

    def estimate_and_guard(self, step: int) -> dict[str, list[dict]]:
        """Latent capability of every skill at this checkpoint, then the
        Goodhart guard on each steer skill against its held-out variant.
        Returns the estimates (skill -> by step)."""
        from backend.capability import estimate

        # each skill in its own metric and direction (the skills table)
        groups: dict[tuple[str, bool], list[str]] = {}
        for s in self.store.skills(self.run_id):
            key = (s["metric"] or "exact_match", s["higher_is_better"] in (None, 1))
            groups.setdefault(key, []).append(s["name"])
        ms = self.store.measurements(self.run_id)
        chance = {s["name"]: s["chance"] for s in self.store.skills(self.run_id) if s.get("chance") is not None}
        est = {}
        for (metric, hib), names in groups.items():
            est.update(estimate(ms, self.checkpoint_tokens, skills=names, metric=metric, higher_is_better=hib,
                                chance=chance))
        self.store.set_capability(self.run_id, [{**e, "skill": s} for s, es in est.items()
                                                for e in es if e["step"] == step])
        for s in self.store.skills(self.run_id):
            held = vocab.holdout_name(s["name"])
            if s["kind"] != "steer" or s["name"] not in est or held not in est:
                continue  # a skill without an estimate (a value outside its metric's range) has nothing to guard
            since = guard.last_ack_step(self.store, self.run_id, s["name"]) or 0
            alert = guard.check(est[s["name"]], est[held], since)
            if alert:
                guard.raise_alert(
                    self.store, self.run_id, step=step, skill=s["name"], data=alert,
                    message=(f"Goodhart guard: {s['name']} rose {alert['steer_rise']:+.2f} since step "
                             f"{alert['from_step']} but {held} only {alert['holdout_rise']:+.2f} "
                             f"(gap {alert['gap']:.2f} > 2 x {alert['gap_sd']:.2f}); the controller "
                             f"stops pushing {s['name']} until a person acknowledges"))
        return est

    def history(self, estimates: dict[str, list[dict]]) -> History:
        """What the strategy may see: steer skills only, with their latent
        `estimates` (skill -> by step) and the affinity estimated from them
        (backend.affinity, the run's pins applied). A skill no domain is
        declared to feed (unless controller.links is "learned"), or whose
        metric is not a [0, 1] score where higher is better (a perplexity,
        BLEU: vocab.is_score), or that reported a value outside [0, 1] (no
        estimate since: capability.estimate), is measured and shown but not
        steered: `unsteerable` says why. With the declared links hidden,
        `skill_domains` holds none."""
        from backend.capability import off_range

        declared = self.cfg.controller.links == "declared"
        steer = [s for s in self.store.skills(self.run_id) if s["kind"] == "steer"]
        ms = self.store.measurements(self.run_id)
        by_skill_metric = defaultdict(list)  # one pass, not one per skill: runs hold 10^5+ rows
        for m in ms:
            by_skill_metric[m["skill"], m["metric"]].append(m)
        unsteerable = {}
        for s in steer:
            metric, hib = s["metric"] or "exact_match", s["higher_is_better"] in (None, 1)
            if declared and not s["domains"]:
                unsteerable[s["name"]] = "no domain is declared to feed it (evaluation.tasks[].domains)"
            elif not hib or not vocab.is_score(metric):
                unsteerable[s["name"]] = f"its metric {metric} is not a [0, 1] score where higher is better"
            elif off := off_range(by_skill_metric[s["name"], metric], metric):
                unsteerable[s["name"]] = (f"its metric {metric} reported {off['value']:g} at step {off['step']}, "
                                          "outside [0, 1]: not estimated from that checkpoint on")
        skills = [s for s in steer if s["name"] not in unsteerable]
        primary = {s["name"]: s["metric"] or "exact_match" for s in skills}
        scores = {s["name"]: [] for s in skills}
        losses: dict[str, list] = {}
        for m in ms:
            if m["kind"] == "steer" and m["skill"] in primary and m["metric"] == primary[m["skill"]]:
                scores[m["skill"]].append(m)
            elif m["kind"] == "domain_loss":
                losses.setdefault(m["domain"], []).append(m)
        history = History(
            domains=self.cfg.domain_names,
            skill_domains={s["name"]: s["domains"] if declared else [] for s in skills},
            scores=scores, domain_loss=losses,
            checkpoint_tokens=self.checkpoint_tokens,
            estimates={s["name"]: estimates.get(s["name"], []) for s in skills},
            blocked={k: e["message"] for k, e in guard.open_alerts(self.store, self.run_id).items()},
            mixtures=[{"step": c["step"], "tokens_seen": c["tokens_seen"], "weights": c["weights"]}
                      for c in self.store.checkpoints(self.run_id)],
            unsteerable=unsteerable,
            latest={k: estimates[k][-1]["score"] for k in unsteerable if estimates.get(k)},
            chance={s["name"]: s["chance"] for s in skills if s.get("chance") is not None},
            objective=objective.for_run(self.cfg, self.store.objective(self.run_id)),
            heldout={k: v for k, v in estimates.items() if vocab.is_holdout(k)},
            constant=self.constant_answers(skills, estimates),
        )
        for r in self.store.alignment(self.run_id):
            if r["skill"] in primary:
                history.alignment.setdefault(r["skill"], {}).setdefault(r["domain"], []).append(
                    {"step": r["step"], "value": r["value"], "stderr": r["stderr"]})
        pins = self.store.pins(self.run_id)
        history.affinity = affinity.estimate(history, pins, declared=declared)
        return history

    def constant_answers(self, skills: list[dict], estimates: dict[str, list[dict]]) -> dict[str, str]:
        """Skill -> the one answer it gave to every item at the latest
        estimated checkpoint, for the `skills` (rows) that did."""
        from backend.evaluation.tasks import constant_response

        last = max((e["step"] for es in estimates.values() for e in es), default=None)
        if last is None:
            return {}
        by_task: dict[str, list[dict]] = {}
        for r in self.store.samples(self.run_id, last):
            by_task.setdefault(r["task"], []).append(r)
        out = {}
        for s in skills:
            answer = constant_response([r for t in s["tasks"] for r in by_task.get(t, [])])
            if answer is not None:
                out[s["name"]] = answer
        return out

    def propose(self, step: int, history: History) -> int | None:
        """The strategy's proposal from `history` (RunClient.history) through
        the shared guarantees (controllers.propose), stored pending; policy
        auto approves and applies it at once. Returns the proposal id, or
        None when it breaks a constraint of the objective: then an event
        `refused` says which and why, and the mixture stays."""
        current = self.store.current_weights(self.run_id)
        try:
            p = controllers.propose(self.strategy, history, current, self.cfg.controller)
        except controllers.Refused as e:
            self.store.log_event(self.run_id, "refused", f"{self.strategy.name} at step {step}: {e}",
                                 actor="worker", before=current, after=e.proposal.weights)
            return None
        pid = self.store.add_proposal(self.run_id, step=step, strategy=self.strategy.name,
                                      current_weights=current, weights=p.weights,
                                      rationale=p.rationale, forecast=p.forecast)
        policy = self.store.run(self.run_id)["policy"]  # a person may switch it while running
        if policy == "auto":
            decisions.auto_approve(self.store, pid)  # a person who decided it first keeps their decision
            self.apply(step)
        return pid

    def follow_replay(self, step: int, tokens: int) -> None:
        """A replay run switches to the schedule's next segment where it starts."""
        for seg in self.replay["segments"]:
            if seg["from_step"] == step and step > 0:
                self.store.add_segment(self.run_id, from_step=step, tokens_at=tokens,
                                       weights=seg["weights"], source="replay",
                                       proposal_id=None, decided_by=seg.get("approved_by"))


def _check_domains(domains: list[dict], cfg: RunConfig) -> list[dict]:
    """Domain rows as register takes them, checked against the config's
    domains; ConfigError names the row and key."""
    if not isinstance(domains, list):
        raise ConfigError(f"domains: expected a list of rows, got {type(domains).__name__}")
    rows = []
    for i, d in enumerate(domains):
        if not isinstance(d, dict):
            raise ConfigError(f"domains[{i}]: expected an object")
        for k in d:
            if k not in DOMAIN_KEYS:
                raise ConfigError(f"domains[{i}].{k}: unknown key (keys: {', '.join(DOMAIN_KEYS)})")
        if d.get("name") not in cfg.domain_names:
            raise ConfigError(f"domains[{i}].name: {d.get('name')!r} is not a domain of the config "
                              f"(data.domains: {', '.join(cfg.domain_names)})")
        rows.append({"source": "", "skills": [], "size_tokens": None, "tokens_per_doc": None, **d})
    missing = sorted(set(cfg.domain_names) - {r["name"] for r in rows})
    if missing or len(rows) != len(cfg.domain_names):
        raise ConfigError(f"domains: expected one row per data.domains entry; missing {missing or 'none'}, "
                          f"{len(rows)} rows for {len(cfg.domain_names)} domains")
    return rows


def _integer(v, field: str, *, low: int = 0) -> int:
    """An integer >= low (numpy integers too, as int); StoreError names `field`."""
    try:
        if isinstance(v, bool):
            raise TypeError
        v = operator.index(v)
    except TypeError:
        raise StoreError(f"{field}: expected an integer, got {v!r}") from None
    if v < low:
        raise StoreError(f"{field}: expected an integer >= {low}, got {v}")
    return v


def _number(v, field: str, *, low: float | None = None) -> float:
    """A finite real number (>= low when given) as float; StoreError names `field`."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise StoreError(f"{field}: expected a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise StoreError(f"{field}: expected a finite number, got {v}")
    if low is not None and v < low:
        raise StoreError(f"{field}: expected a number >= {low:g}, got {v:g}")
    return v


def _measurement_row(i: int, r: dict, kinds: dict[str, str], domains: set[str], run_id: int) -> dict:
    """Measurement row `i` as report_measurements takes it, checked, with its
    kind and the stored defaults of the facets; StoreError names the row and key."""
    if not isinstance(r, dict):
        raise StoreError(f"rows[{i}]: expected an object, got {type(r).__name__}")
    unknown = [k for k in r if k not in MEASUREMENT_KEYS]
    if unknown:
        raise StoreError(f"rows[{i}].{unknown[0]}: unknown key (keys: {', '.join(MEASUREMENT_KEYS)})")
    if r.get("skill") is not None:
        if r["skill"] not in kinds:
            raise StoreError(f"rows[{i}].skill: unknown skill {r['skill']!r} (skills: {', '.join(kinds)})")
        kind, what = kinds[r["skill"]], f"rows[{i}] (skill {r['skill']})"
    elif r.get("domain") in domains:
        kind, what = "domain_loss", f"rows[{i}] (domain {r['domain']})"
    else:
        raise StoreError(f"rows[{i}].domain: {r.get('domain')!r} is not a domain of run {run_id} "
                         f"(domains: {', '.join(sorted(domains))}); a skill row needs `skill`")
    row = {"skill": None, "domain": None, "prompt_variant": "", "decoding": "", "scorer": "", **r, "kind": kind}
    for k in ("task", "metric"):
        if not isinstance(row.get(k), str) or not row[k].strip():
            raise StoreError(f"{what}.{k}: expected a non-empty string, got {row.get(k)!r}")
    for k in ("prompt_variant", "decoding", "scorer"):
        row[k] = "" if row[k] is None else row[k]
        if not isinstance(row[k], str):
            raise StoreError(f"{what}.{k}: expected a string, got {row[k]!r}")
    row["value"] = _number(row.get("value"), f"{what}.value")
    if row.get("stderr") is not None:
        row["stderr"] = _number(row["stderr"], f"{what}.stderr", low=0)
    if row.get("n") is not None or kind != "domain_loss":  # a score's n counts its items: the estimate needs it
        row["n"] = _integer(row.get("n"), f"{what}.n", low=1)
    return row


def _sample_row(j: int, r: dict) -> dict:
    """Per-item sample `j`, checked; StoreError names the sample and key."""
    if not isinstance(r, dict):
        raise StoreError(f"samples[{j}]: expected an object, got {type(r).__name__}")
    unknown = [k for k in r if k not in SAMPLE_KEYS]
    if unknown:
        raise StoreError(f"samples[{j}].{unknown[0]}: unknown key (keys: {', '.join(SAMPLE_KEYS)})")
    if not isinstance(r.get("task"), str) or not r["task"]:
        raise StoreError(f"samples[{j}].task: expected a non-empty string, got {r.get('task')!r}")
    return {**r, "doc_id": _integer(r.get("doc_id"), f"samples[{j}].doc_id")}


def _same_measurements(rows: list[dict], stored: list[dict]) -> bool:
    """Whether every row of `rows` is stored with the same values at its step."""
    by_key = {(m["step"], *(m[k] for k in MEASUREMENT_FACETS)): m for m in stored}
    for r in rows:
        m = by_key.get((r["step"], *(r[k] for k in MEASUREMENT_FACETS)))
        if m is None or any(m[k] != r.get(k) for k in ("skill", "domain", "value", "stderr", "n")):
            return False
    return True
