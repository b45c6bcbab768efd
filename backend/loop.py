"""The closed loop, readable as the diagram in DESIGN.md:

    sampler(weights) -> trainer -> checkpoint k
        -> evaluate (lm-eval per skill, per-domain held-out loss) -> store
        -> score the forecast of the proposal that trained the last stretch
        -> apply the newest approved proposal (it trains from step k on)
        -> strategy proposes -> store (pending; `auto` approves and applies it)

Every checkpoint boundary is idempotent: a worker killed anywhere resumes
from its last complete checkpoint, redoes what that boundary had not
finished, and ends with the same schedule as a run never killed.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from backend import config as config_mod
from backend.config import RunConfig
from backend import controllers
from backend.controllers import History
from backend.mixture import validate_weights
from backend.store import Store

# heartbeat and command polling interval, seconds of wall clock (tests that
# must catch a worker mid-stretch shorten it through the environment)
POLL_SECONDS = float(os.environ.get("CLOSED_LOOP_POLL_S", "1.0"))


class Stopped(Exception):
    """A stop command arrived; the run ends at its last checkpoint."""


@dataclass
class Components:
    """Everything built once per worker."""

    cfg: RunConfig
    run_dir: Path
    domains: list
    tokenizer: object
    model: object
    trainer: object
    sampler: object
    evaluator: object
    heldout: dict
    device: object


def run_dir_for(store: Store, run_id: int) -> Path:
    """Run files (tokenizer, checkpoints, eval data) live beside the database,
    named after it, so two databases in one folder never share a run folder:
    runs/closed_loop.db -> runs/closed_loop-run-1/."""
    db = Path(store.path).resolve()
    return db.parent / f"{db.stem}-run-{run_id}"


def build_components(cfg: RunConfig, run_dir: Path) -> Components:
    import torch

    from backend.data.domains import build_domains
    from backend.data.sampler import MixtureSampler
    from backend.data.tokenizer import load_tokenizer, train_tokenizer
    from backend.evaluation.harness import HarnessEvaluator
    from backend.evaluation.tasks import build_tasks
    from backend.model import build_model
    from backend.trainer import Trainer, pick_device

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    # a contaminated domain leaks every item the evaluation can draw
    domains = build_domains(cfg.data.domains, seed=cfg.seed,
                            eval_items_per_skill=cfg.evaluation.items_per_skill * cfg.evaluation.item_rounds)
    tok_dir = run_dir / "tokenizer"
    if cfg.data.tokenizer_path:
        tokenizer = load_tokenizer(cfg.data.tokenizer_path)
    elif (tok_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(tok_dir)  # resume: the run's own tokenizer
    else:
        tokenizer = train_tokenizer(domains, cfg.data.tokenizer_vocab, cfg.seed, tok_dir)
    model = build_model(cfg.model, len(tokenizer), cfg.data.context_length,
                        eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, seed=cfg.seed)
    trainer = Trainer(model, cfg.train, device)
    sampler = MixtureSampler(domains, tokenizer, cfg.data.context_length, cfg.seed)
    kinds = ["steer", "holdout"] if cfg.evaluation.holdout else ["steer"]
    tasks = build_tasks(cfg.steer_skills, kinds, run_dir / "evaldata", cfg.evaluation.items_per_skill,
                        cfg.seed, cfg.evaluation.max_gen_toks, cfg.evaluation.loglikelihood,
                        cfg.evaluation.item_rounds)
    evaluator = HarnessEvaluator(model, tokenizer, tasks, batch_size=cfg.evaluation.batch_size,
                                 max_length=cfg.data.context_length, device=device,
                                 items_per_round=cfg.evaluation.items_per_skill,
                                 rounds=cfg.evaluation.item_rounds)
    heldout = sampler.heldout(cfg.evaluation.heldout_loss_sequences)
    return Components(cfg, run_dir, domains, tokenizer, model, trainer, sampler, evaluator, heldout, device)


def initial_weights(cfg: RunConfig, domains) -> dict[str, float]:
    names = [d.name for d in domains]
    init = cfg.mixture.initial
    if init == "uniform":
        return {n: 1 / len(names) for n in names}
    if init == "natural":
        total = sum(d.size_tokens for d in domains)
        return {d.name: d.size_tokens / total for d in domains}
    return validate_weights(init, names)


class ClosedLoop:
    """One run's loop. `run()` trains to the step budget (or a stop command)."""

    def __init__(self, store: Store, run_id: int, *, progress: bool = True):
        self.store = store
        self.run_id = run_id
        self.progress = progress
        row = store.run(run_id)
        self.cfg = config_mod.from_dict(row["config"])
        self.replay = row["replay_schedule"]
        self.run_dir = run_dir_for(store, run_id)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.c: Components | None = None
        self.wall_offset = 0.0
        self.last_loss: float | None = None

    # -- the loop ----------------------------------------------------------
    def run(self) -> str:
        """Returns the final status: finished or stopped."""
        self.c = build_components(self.cfg, self.run_dir)
        self._register()
        self._resume_or_start()
        total = self.cfg.train.steps
        self._t0 = time.time()
        self._bar = self._progress_bar()
        try:
            while self.c.trainer.step < total:
                end = min(total, (self.c.trainer.step // self.cfg.train.checkpoint_every + 1)
                          * self.cfg.train.checkpoint_every)
                self._poll()  # commands are obeyed at every checkpoint, however short the stretch
                weights = self.store.current_weights(self.run_id)
                self._train_stretch(weights, end)
                self._checkpoint(weights)
                self._at_checkpoint(self.c.trainer.step)
        except Stopped:
            self.store.update_run(self.run_id, status="stopped")
            self.store.log_event(self.run_id, "stopped", f"stopped at step {self.c.trainer.step}; "
                                 f"resumes from the last checkpoint")
            return "stopped"
        finally:
            if self._bar is not None:
                self._bar.close()
        self.store.update_run(self.run_id, status="finished")
        self.store.log_event(self.run_id, "finished", f"finished at step {total}")
        return "finished"

    def _at_checkpoint(self, step: int) -> None:
        """Evaluate, apply what was approved, propose. Idempotent."""
        ck = self.store.checkpoint(self.run_id, step)
        if ck["boundary_done"]:
            return
        tokens = ck["tokens_seen"]
        if not ck["evaluated"]:
            self._evaluate(step, tokens)
            self.store.mark_checkpoint(self.run_id, step, evaluated=True)
        self._estimate_and_guard(step)
        self.store.record_forecast_errors(self.run_id, step)  # how far the last forecast was off
        if step < self.cfg.train.steps:  # nothing to steer after the last checkpoint
            if self.replay is not None:
                self._follow_replay(step, tokens)
            else:
                self.store.apply_approved(self.run_id, step=step, tokens_at=tokens)
                self._propose(step, tokens)
        self.store.mark_checkpoint(self.run_id, step, boundary_done=True)

    # -- pieces ------------------------------------------------------------
    def _register(self) -> None:
        """Domains and skills (steer and held-out) of the run, into the store."""
        from backend.data.skills import get_skill
        from backend.evaluation.tasks import skill_name

        self.store.set_domains(self.run_id, [
            {"name": d.name, "source": d.source, "skills": d.skills, "size_tokens": d.size_tokens}
            for d in self.c.domains])
        rows = []
        kinds = ["steer", "holdout"] if self.cfg.evaluation.holdout else ["steer"]
        for base in self.cfg.steer_skills:
            feeds = [d.name for d in self.c.domains if base in d.skills]
            for kind in kinds:
                tasks = [t["task"] for t in self.c.evaluator.task_configs
                         if t["metadata"]["skill"] == skill_name(base, kind)]
                rows.append({"name": skill_name(base, kind), "base": base, "kind": kind, "domains": feeds,
                             "tasks": tasks, "difficulty": get_skill(base).difficulty})
        self.store.set_skills(self.run_id, rows)

    def _resume_or_start(self) -> None:
        from backend.trainer import load_checkpoint

        done = [ck for ck in self.store.checkpoints(self.run_id) if ck["path"] and Path(ck["path"]).is_dir()]
        if done:
            ck = done[-1]
            meta = load_checkpoint(ck["path"], self.c.model, self.c.trainer)
            self.c.sampler.load_state_dict(meta["sampler"])
            self.wall_offset = meta.get("wall_time", 0.0)
            self.store.log_event(self.run_id, "resumed", f"resumed from checkpoint at step {ck['step']}")
            self.store.heartbeat(self.run_id, status="running", pid=os.getpid(), step=ck["step"],
                                 tokens_seen=ck["tokens_seen"])
            self._at_checkpoint(ck["step"])  # finish that boundary if it was cut short
            return
        if not self.store.schedule(self.run_id):
            if self.replay is not None:
                first = self.replay["segments"][0]
                weights, source, pid = first["weights"], "replay", None
            else:
                weights, source, pid = initial_weights(self.cfg, self.c.domains), "initial", None
            self.store.add_segment(self.run_id, from_step=0, tokens_at=0, weights=weights,
                                   source=source, proposal_id=pid)
        self.store.heartbeat(self.run_id, status="running", pid=os.getpid(), step=0, tokens_seen=0)
        self._checkpoint(self.store.current_weights(self.run_id))  # step 0: the untrained model
        self._at_checkpoint(0)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.train.batch_size * self.cfg.data.context_length

    def _train_stretch(self, weights: dict[str, float], end: int) -> None:
        c = self.c
        batches = prefetch_batches(c.sampler, weights, self.cfg.train.batch_size, end - c.trainer.step,
                                   background=c.device.type == "cuda")
        state = {"last_poll": time.time(), "steps": 0}

        def on_step(loss: float) -> None:
            state["steps"] += 1
            if self._bar is not None:
                self._bar.update(1)
            now = time.time()
            if now - state["last_poll"] >= POLL_SECONDS:
                tps = state["steps"] * self.tokens_per_step / (now - state["last_poll"])
                self._poll(tokens_per_s=tps)
                state["last_poll"], state["steps"] = now, 0
                if self._bar is not None:
                    self._bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")

        losses = train_stretch(c.trainer, batches, end - c.trainer.step, on_step)
        self.last_loss = sum(losses[-10:]) / len(losses[-10:])

    def _poll(self, **fields) -> None:
        """Heartbeat, then obey pause / resume / stop."""
        step = self.c.trainer.step
        self.store.heartbeat(self.run_id, step=step, tokens_seen=step * self.tokens_per_step, **fields)
        paused = False
        while True:
            for cmd in self.store.take_commands(self.run_id):
                if cmd == "stop":
                    raise Stopped()
                paused = cmd == "pause"
                self.store.update_run(self.run_id, status="paused" if paused else "running")
                self.store.log_event(self.run_id, cmd + "d", f"{cmd}d at step {step}", actor="worker")
            if not paused:
                return
            time.sleep(POLL_SECONDS / 2)
            self.store.heartbeat(self.run_id)

    def _checkpoint(self, weights: dict[str, float]) -> None:
        from backend.trainer import save_checkpoint

        c, step = self.c, self.c.trainer.step
        wall = self.wall_offset + time.time() - getattr(self, "_t0", time.time())
        path = save_checkpoint(self.run_dir / "checkpoints", c.model, c.trainer,
                               {"sampler": c.sampler.state_dict(), "wall_time": wall, "weights": weights})
        self.store.add_checkpoint(self.run_id, step=step, tokens_seen=step * self.tokens_per_step,
                                  train_loss=self.last_loss, wall_time=wall,
                                  tokens_per_s=self.store.run(self.run_id)["tokens_per_s"],
                                  path=str(path), weights=weights)
        self.store.heartbeat(self.run_id, step=step, tokens_seen=step * self.tokens_per_step)

    def _evaluate(self, step: int, tokens: int) -> None:
        from backend.evaluation.heldout import domain_losses

        c = self.c
        kinds = {s["name"]: s["kind"] for s in self.store.skills(self.run_id)}
        measurements, samples = c.evaluator.evaluate(step // self.cfg.train.checkpoint_every)
        rows = [{**m, "step": step, "tokens_seen": tokens, "kind": kinds[m["skill"]]} for m in measurements]
        for d, r in domain_losses(c.model, c.heldout, c.device).items():
            rows.append({"step": step, "tokens_seen": tokens, "domain": d, "kind": "domain_loss",
                         "task": f"heldout_loss/{d}", "metric": "loss", "scorer": "nll", **r})
        self.store.add_measurements(self.run_id, rows)
        self.store.add_samples(self.run_id, step, samples)

    @property
    def checkpoint_tokens(self) -> int:
        return self.cfg.train.checkpoint_every * self.tokens_per_step

    def _estimate_and_guard(self, step: int) -> None:
        """Latent capability of every skill at this checkpoint, then the
        Goodhart guard on each steer skill against its held-out variant."""
        from backend import guard
        from backend.capability import estimate

        est = estimate(self.store.measurements(self.run_id), self.checkpoint_tokens)
        self._estimates = est
        self.store.set_capability(self.run_id, [{**e, "skill": s} for s, es in est.items()
                                                for e in es if e["step"] == step])
        for s in self.store.skills(self.run_id):
            held = f"{s['name']}_holdout"
            if s["kind"] != "steer" or held not in est:
                continue
            since = self.store.last_ack_step(self.run_id, s["name"]) or 0
            alert = guard.check(est[s["name"]], est[held], since)
            if alert:
                self.store.raise_alert(
                    self.run_id, step=step, skill=s["name"], data=alert,
                    message=(f"Goodhart guard: {s['name']} rose {alert['steer_rise']:+.2f} since step "
                             f"{alert['from_step']} but {held} only {alert['holdout_rise']:+.2f} "
                             f"(gap {alert['gap']:.2f} > 2 x {alert['gap_sd']:.2f}); the controller "
                             f"stops pushing {s['name']} until a person acknowledges"))

    def history(self) -> History:
        skills = [s for s in self.store.skills(self.run_id) if s["kind"] == "steer"]
        scores = {s["name"]: [] for s in skills}
        losses: dict[str, list] = {}
        for m in self.store.measurements(self.run_id):
            if m["kind"] == "steer" and m["metric"] == "exact_match":
                scores[m["skill"]].append(m)
            elif m["kind"] == "domain_loss":
                losses.setdefault(m["domain"], []).append(m)
        est = getattr(self, "_estimates", None)
        if est is None:
            from backend.capability import estimate

            est = estimate(self.store.measurements(self.run_id), self.checkpoint_tokens)
        return History(
            domains=self.cfg.domain_names,
            skill_domains={s["name"]: s["domains"] for s in skills},
            scores=scores, domain_loss=losses,
            checkpoint_tokens=self.checkpoint_tokens,
            estimates={s["name"]: est.get(s["name"], []) for s in skills},
            blocked={k: e["message"] for k, e in self.store.open_alerts(self.run_id).items()},
            mixtures=[{"step": c["step"], "tokens_seen": c["tokens_seen"], "weights": c["weights"]}
                      for c in self.store.checkpoints(self.run_id)],
        )

    def _propose(self, step: int, tokens: int) -> None:
        strategy = controllers.make_strategy(self.cfg.controller)
        current = self.store.current_weights(self.run_id)
        p = controllers.propose(strategy, self.history(), current, self.cfg.controller)
        pid = self.store.add_proposal(self.run_id, step=step, strategy=strategy.name,
                                      current_weights=current, weights=p.weights,
                                      rationale=p.rationale, forecast=p.forecast)
        policy = self.store.run(self.run_id)["policy"]  # a person may switch it while running
        if policy == "auto" and self.store.proposal(pid)["status"] == "pending":
            self.store.decide(pid, "approve", by="auto")
            self.store.apply_approved(self.run_id, step=step, tokens_at=tokens)

    def _follow_replay(self, step: int, tokens: int) -> None:
        for seg in self.replay["segments"]:
            if seg["from_step"] == step and step > 0:
                self.store.add_segment(self.run_id, from_step=step, tokens_at=tokens,
                                       weights=seg["weights"], source="replay",
                                       proposal_id=None, decided_by=seg.get("approved_by"))

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.train.steps, initial=self.c.trainer.step, unit="step",
                    desc=f"run {self.run_id}", mininterval=1.0)


def train_stretch(trainer, batches, n: int, on_step=None) -> list[float]:
    """n optimizer steps on batches from an iterator; the training stretch
    between two checkpoints (bench/throughput.py times this same function)."""
    losses = []
    for _ in range(n):
        losses.append(trainer.train_step(next(batches)))
        if on_step is not None:
            on_step(losses[-1])
    batches.close()
    return losses


def prefetch_batches(sampler, weights: dict[str, float], batch_size: int, n: int, *, background: bool):
    """n (B, T+1) batches from the sampler. With background=True (a GPU
    computes: the CPU is free) each is drawn in a thread while the trainer
    works on the one before; on the CPU the cores are busy with the training
    step itself, and a drawing thread only fights torch's threads for them
    (measured: 0.91 of bare-loop throughput with the thread on 2 cores), so
    batches are drawn in line."""
    import torch

    def make():
        return torch.from_numpy(sampler.batch(weights, batch_size)[0])

    if background:
        return _prefetch(make, n)
    return (make() for _ in range(n))


def _prefetch(make, n: int):
    """Yield make() n times, producing the next item in a background thread
    while the caller trains on the current one (torch releases the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce():
        try:
            for _ in range(n):
                item = make()
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as e:  # surfaces in the consumer
            q.put(e)

    threading.Thread(target=produce, daemon=True).start()
    try:
        for _ in range(n):
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
