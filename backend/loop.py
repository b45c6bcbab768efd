"""The closed loop, readable as the diagram in DESIGN.md:

    sampler(weights) -> trainer -> checkpoint k (save)
        -> evaluate (lm-eval per skill, per-domain held-out loss) -> store
        -> estimate latent capability; Goodhart guard
        -> score the forecast of the proposal that trained the last stretch
        -> apply the newest approved proposal (it trains from step k on)
        -> strategy proposes, through controllers.propose -> store (pending;
           `auto` approves and applies it)

Every checkpoint boundary is idempotent: a worker killed anywhere resumes
from its last complete checkpoint, redoes what that boundary had not
finished, and ends with the same schedule as a run never killed.

What the loop drives (trainer, sampler, evaluator, checkpointer) comes in
as `Components`, behind the small protocols below: `build_components` makes
the real ones (torch, transformers, lm-eval); backend.testing makes fakes.

Under torchrun (backend.distributed) ClosedLoop runs on rank 0 and sends the
other ranks, which run `follow`, each decision they act on: the checkpoint
resumed, each stretch's weights and end, stop or finish.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Protocol, runtime_checkable

from backend import vocab
from backend.client import EpochLimitError, RunClient, evaluation_tasks, initial_weights, task_specs
from backend.config import RunConfig
from backend.distributed import Dist, rank_batches
from backend.store import Store

# heartbeat and command polling interval, seconds of wall clock (tests that
# must catch a worker mid-stretch shorten it through the environment)
POLL_SECONDS = float(os.environ.get("CLOSED_LOOP_POLL_S", "1.0"))

PHASES = ("save", "evaluate", "estimate", "apply", "propose")
"""The phases of a checkpoint boundary, in order (ClosedLoop's on_phase)."""


class Stopped(Exception):
    """A stop command arrived; the run ends at its last checkpoint."""


# -- what the loop drives --------------------------------------------------------


@runtime_checkable
class Trainer(Protocol):
    """Optimizer steps on batches (backend.trainer.Trainer)."""

    step: int
    """Optimizer steps taken so far."""

    def train_step(self, batch):
        """One optimizer step on one batch from Sampler.batches; returns the
        training loss (nats/token): a float, or a 0-dim tensor that float()
        reads (a GPU is waited for only when a loss is reported); step += 1."""
        ...


@runtime_checkable
class Sampler(Protocol):
    """Batches drawn by mixture weights (backend.data.sampler.MixtureSampler)."""

    def batches(self, weights: dict[str, float], batch_size: int, n: int, *, background: bool) -> Iterator:
        """n batches of batch_size sequences, each sequence's domain drawn by
        `weights` (domain -> weight, sum 1); background=True may draw them in
        a thread. The iterator has close()."""
        ...

    def state_dict(self) -> dict:
        """Everything needed to continue drawing exactly where it stands."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict."""
        ...

    def document_tokens(self) -> dict[str, float]:
        """Domain -> mean tokens per whole document (for document-sampling exports)."""
        ...

    def usage(self, weights: dict[str, float]) -> dict[str, dict]:
        """Domain -> {"tokens" trained so far, "epochs" (None: an endless
        stream), "train_tokens" (None: endless)}; sequences drawn since the
        last call count as drawn with `weights`."""
        ...


@runtime_checkable
class Evaluator(Protocol):
    """Per-skill evaluation and per-domain held-out loss at a checkpoint."""

    task_configs: list[dict]
    """One per evaluation task: {"task": task name, "metadata": {"skill":
    stored skill name (vocab.skill_name), ...}}."""

    def evaluate(self, round_index: int, on_progress=None) -> tuple[list[dict], list[dict]]:
        """Evaluate the model as it stands on the items of checkpoint number
        `round_index` (step // checkpoint_every); on_progress(k, n, skill), if
        given, is called before the k-th of n skills (0-based) is evaluated.

        :return: (measurements, samples). A measurement: {"task", "skill"
            (stored name), "metric" (exact_match | ll_acc | answer_nll for the
            synthetic skills; any metric of an lm-eval task), "value", "stderr"
            (None when unknown), "n" (items), "prompt_variant" ("template<j>",
            or the lm-eval task's name), "decoding" (greedy | teacher_forced),
            "scorer"}.
            A sample: {"task", "doc_id", "prompt", "target", "response",
            "correct" (0 | 1)}.
        """
        ...

    def domain_losses(self) -> dict[str, dict]:
        """domain -> {"value": mean next-token loss (nats/token) on its fixed
        held-out sequences, "stderr" (None for one sequence), "n": sequences}."""
        ...


@runtime_checkable
class Checkpointer(Protocol):
    """Model and trainer state on disk, written atomically."""

    def save(self, step: int, meta: dict) -> str:
        """Write the model, the trainer state and `meta` (plain JSON) for
        `step`; returns the checkpoint's path, complete once returned."""
        ...

    def load(self, path: str) -> dict:
        """Restore the model and trainer from `path`; returns its meta."""
        ...

    def problem(self, path: str) -> str | None:
        """None when a complete checkpoint that verifies lies at `path`;
        else why not, in words (resume then falls back to an older one)."""
        ...

    def prune(self, keep_steps: set[int]) -> list[str]:
        """Apply the retention policy (train.keep_checkpoints); never removes
        `keep_steps`. Returns the paths removed."""
        ...


@dataclass
class Components:
    """Everything the loop drives, built once per worker."""

    domains: list
    """Domains with name, source, skills, size_tokens (backend.data.domains)."""
    trainer: Trainer
    sampler: Sampler
    evaluator: Evaluator | None
    """None on the ranks other than 0 (they never evaluate)."""
    checkpointer: Checkpointer
    background: bool = False
    """Draw batches in a background thread (a GPU trains: the CPU is free)."""


def run_dir_for(store: Store | str | os.PathLike, run_id: int) -> Path:
    """Run files (tokenizer, checkpoints, eval data) live beside the database
    (a Store or its path), named after it, so two databases in one folder
    never share a run folder: runs/closed_loop.db -> runs/closed_loop-run-1/."""
    db = Path(store.path if isinstance(store, Store) else store).resolve()
    return db.parent / f"{db.stem}-run-{run_id}"


class ModelEvaluator:
    """The real Evaluator: lm-eval per skill on the model in memory (the
    synthetic skills' tasks through HarnessEvaluator, a run's own lm-eval
    tasks through TaskEvaluator), and the per-domain held-out loss."""

    def __init__(self, parts: list, model, heldout: dict, device, *, tokenizer, max_length: int,
                 probe: dict | None = None):
        self.parts = parts
        self.model = model
        self.probe = probe if probe is not None else heldout  # domain -> held-out sequences for the gradients
        self.tokenizer = tokenizer
        self.max_length = max_length  # tokens of context (the gradient probes are cut to it)
        self.heldout = heldout
        self.device = device
        self.task_configs = [c for part in parts for c in part.task_configs]

    def evaluate(self, round_index: int, on_progress=None) -> tuple[list[dict], list[dict]]:
        """Evaluator.evaluate: one skill (with its held-out twin) at a time,
        so a long evaluation reports which skill it is on."""
        units: list[tuple[object, str]] = []  # (part, base skill), in task order
        for part in self.parts:
            for c in part.task_configs:
                unit = (part, vocab.base_skill(c["metadata"]["skill"]))
                if unit not in units:
                    units.append(unit)
        measurements, samples = [], []
        for k, (part, base) in enumerate(units):
            if on_progress is not None:
                on_progress(k, len(units), base)
            with self._precision():
                m, s = part.evaluate(round_index, skills=[base, vocab.holdout_name(base)])
            measurements += m
            samples += s
        return measurements, samples

    def _precision(self):
        """Evaluate in the precision the model trains in: bf16 autocast on a
        GPU (as backend.trainer.Trainer), plain fp32 on the CPU."""
        import contextlib

        import torch

        if getattr(self.device, "type", str(self.device)) == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def domain_losses(self) -> dict[str, dict]:
        """Evaluator.domain_losses on the fixed held-out sequences."""
        from backend.evaluation.heldout import domain_losses

        return domain_losses(self.model, self.heldout, self.device)

    def alignment(self, measurements: list[dict], samples: list[dict], steer: set[str]) -> list[dict]:
        """Gradient alignment of each domain's held-out sequences with each
        steer skill's answers among the items just evaluated
        (backend.evaluation.alignment)."""
        from backend.evaluation.alignment import gradient_alignment, probes

        return gradient_alignment(self.model, self.tokenizer, self.probe, probes(measurements, samples, steer),
                                  self.device, max_length=self.max_length, precision=self._precision())


class FolderCheckpointer:
    """The real Checkpointer: safetensors + trainer.pt + meta.json folders
    (backend.trainer.save_checkpoint) under `root`."""

    def __init__(self, root: Path, model, trainer, keep_last: int = 0, tokenizer=None):
        self.root = root
        self.model = model
        self.trainer = trainer
        self.keep_last = keep_last
        self.tokenizer = tokenizer  # saved with each checkpoint: lm_eval --model hf loads it as is

    def save(self, step: int, meta: dict) -> str:
        """Checkpointer.save (the trainer's own step names the folder)."""
        from backend.trainer import save_checkpoint

        return str(save_checkpoint(self.root, self.model, self.trainer, meta, tokenizer=self.tokenizer))

    def load(self, path: str) -> dict:
        """Checkpointer.load."""
        from backend.trainer import load_checkpoint

        return load_checkpoint(path, self.model, self.trainer)

    def problem(self, path: str) -> str | None:
        """Checkpointer.problem: the folder's sha256 manifest must verify."""
        from backend.trainer import CheckpointError, verify_checkpoint

        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            return str(e)
        return None

    def prune(self, keep_steps: set[int]) -> list[str]:
        """Checkpointer.prune (backend.trainer.prune_checkpoints)."""
        from backend.trainer import prune_checkpoints

        return [str(p) for p in prune_checkpoints(self.root, self.keep_last, keep_steps)]


def build_components(cfg: RunConfig, run_dir: Path, dist: Dist | None = None) -> Components:
    """The real components: domains, tokenizer, model, trainer, sampler,
    lm-eval tasks; device and threads decided here, once. With `dist` (under
    torchrun) the trainer wraps the model in DDP, and only rank 0 builds an
    evaluator (the others find the tokenizer rank 0 trained in the run folder)."""
    import torch

    from backend.data.cache import cache_root
    from backend.data.domains import build_domains
    from backend.data.sampler import MixtureSampler
    from backend.data.tokenizer import check_fits, load_tokenizer, train_tokenizer
    from backend.model import build_model
    from backend.trainer import Trainer, pick_device

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device)
    # a contaminated domain leaks every item the evaluation can draw
    domains = build_domains(cfg.data.domains, seed=cfg.seed,
                            eval_items_per_skill=cfg.evaluation.items_per_skill * cfg.evaluation.item_rounds)
    tok_dir = run_dir / "tokenizer"
    own = own_tokenizer(cfg)
    if own:
        tokenizer = load_tokenizer(own[0])
    elif (tok_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(tok_dir)  # resume: the run's own tokenizer
    else:
        tokenizer = train_tokenizer(domains, cfg.data.tokenizer_vocab, cfg.seed, tok_dir)
    model = build_model(cfg.model, len(tokenizer), cfg.data.context_length,
                        eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, seed=cfg.seed)
    if cfg.model.pretrained:
        check_fits(tokenizer, model.config.vocab_size, own[1])
    trainer = Trainer(model, cfg.train, device, dist=dist)
    sampler = MixtureSampler(domains, tokenizer, cfg.data.context_length, cfg.seed,
                             cache_dir=cache_root(cfg.data.cache_dir, run_dir), progress=True)
    evaluator = (build_evaluator(cfg, run_dir, model, tokenizer, device, sampler)
                 if dist is None or dist.is_main else None)
    return Components(domains=domains, trainer=trainer, sampler=sampler, evaluator=evaluator,
                      checkpointer=FolderCheckpointer(run_dir / "checkpoints", model, trainer,
                                                     keep_last=cfg.train.keep_checkpoints, tokenizer=tokenizer),
                      background=device.type == "cuda")


def own_tokenizer(cfg: RunConfig) -> tuple[str, str] | None:
    """The folder of the tokenizer a run brings and the field that names it:
    data.tokenizer_path, else your own model's (model.pretrained); None when
    the run trains its own."""
    if cfg.data.tokenizer_path:
        return cfg.data.tokenizer_path, "data.tokenizer_path"
    if cfg.model.pretrained:
        return cfg.model.pretrained, "model.pretrained"
    return None


def check_pretrained(cfg: RunConfig) -> None:
    """Before a run on your own model (model.pretrained) is created: its
    tokenizer loads and the model embeds every id of it (the vocabulary
    read from the model's config.json, its weights not loaded), so the
    worker cannot fail on it. ConfigError names the field."""
    if not cfg.model.pretrained:
        return
    from transformers import AutoConfig

    from backend.config import ConfigError
    from backend.data.tokenizer import check_fits, load_tokenizer

    folder, field = own_tokenizer(cfg)
    try:
        vocab = AutoConfig.from_pretrained(cfg.model.pretrained, local_files_only=True).vocab_size
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.pretrained: no model config loads from {cfg.model.pretrained!r} ({e})") from None
    try:
        check_fits(load_tokenizer(folder), vocab, field)
    except ValueError as e:
        raise ConfigError(str(e) if str(e).startswith(field) else f"{field}: {e}") from None


def build_evaluator(cfg: RunConfig, run_dir: Path, model, tokenizer, device, sampler) -> ModelEvaluator:
    """The real Evaluator of a run on the model in memory: the synthetic
    skills' tasks through HarnessEvaluator, evaluation.tasks through
    TaskEvaluator, and the held-out loss on `sampler`'s fixed held-out
    sequences (backend.data.sampler.MixtureSampler)."""
    from backend.evaluation.harness import HarnessEvaluator
    from backend.evaluation.lmeval_tasks import TaskEvaluator

    synthetic, taskset = evaluation_tasks(cfg, run_dir)
    parts = []
    if synthetic:  # the synthetic skills the domains stream
        parts.append(HarnessEvaluator(model, tokenizer, synthetic, batch_size=cfg.evaluation.batch_size,
                                      max_length=cfg.data.context_length, device=device,
                                      items_per_round=cfg.evaluation.items_per_skill,
                                      rounds=cfg.evaluation.item_rounds))
    if taskset is not None:  # the run's own lm-eval tasks (checked before training: check_tasks)
        parts.append(TaskEvaluator(taskset, model, tokenizer, batch_size=cfg.evaluation.batch_size,
                                   max_length=cfg.data.context_length, device=device, seed=cfg.seed))
    from backend.evaluation.alignment import MAX_SEQUENCES

    n = cfg.evaluation.heldout_loss_sequences
    # one draw serves both: the loss reads the first n sequences, the gradient alignment up to MAX_SEQUENCES
    probe = sampler.heldout(max(n, MAX_SEQUENCES) if cfg.evaluation.gradient_alignment else n)
    return ModelEvaluator(parts, model, {d: ids[:n] for d, ids in probe.items()}, device,
                          tokenizer=tokenizer, max_length=cfg.data.context_length, probe=probe)


def check_tasks(cfg: RunConfig) -> None:
    """Load every lm-eval task of evaluation.tasks (what the worker will
    evaluate) so that a task that cannot run here is refused before any run
    starts: ConfigError naming the field (an unknown task, a missing metric,
    a YAML that does not parse, data not on this machine)."""
    if not cfg.evaluation.tasks:
        return
    from backend.config import ConfigError
    from backend.evaluation.lmeval_tasks import TaskError, resolve_tasks

    try:
        resolve_tasks(task_specs(cfg))
    except TaskError as e:
        raise ConfigError(str(e)) from None


# -- the loop ----------------------------------------------------------------------


class ClosedLoop:
    """One run's loop. `run()` trains to the step budget (or a stop command).

    components: builds the Components from the run's config and folder (the
    real ones by default). on_phase(phase, step): called after each phase of
    a checkpoint boundary (PHASES), where a worker would renew its lease and
    a test injects a crash. dist: this process is rank 0 of a torchrun job
    (backend.distributed); the other ranks `follow` what it sends them."""

    def __init__(self, store: Store, run_id: int, *,
                 components: Callable[[RunConfig, Path], Components] = build_components,
                 progress: bool = True, on_phase: Callable[[str, int], None] | None = None,
                 dist: Dist | None = None):
        self.dist = dist or Dist()
        self.store = store
        self.run_id = run_id
        self.client = RunClient(store, run_id)  # the boundary's rules, shared with outside trainers
        self.cfg = self.client.cfg
        self.dist.check_batch(self.cfg.train.batch_size, self.cfg.train.grad_accum)
        self.run_dir = run_dir_for(store, run_id)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.c = components(self.cfg, self.run_dir)
        self.tokens_per_step = self.client.tokens_per_step
        self.progress = progress
        self.on_phase = on_phase or (lambda phase, step: None)
        self.bar = None  # the tqdm bar while run() trains, with progress=True
        self.started = time.time()  # wall clock of this worker's training (seconds)
        self.wall_offset = 0.0  # wall seconds of earlier workers, from the checkpoint resumed
        self.last_loss: float | None = None  # mean training loss of the last steps trained
        self.resumed_from: str | None = None  # the checkpoint this worker resumed from
        self._in_stretch = False
        self._stop_requested = False  # a SIGTERM that waits for the step's end (request_stop)
        self._followers_told = False  # the other ranks know the run stopped

    def run(self) -> str:
        """Returns the final status: finished or stopped. The other ranks,
        if any, are sent stop or finish however it ends (a crash ends them
        through torchrun)."""
        try:
            status = self._run()
        except Stopped:
            self._release_followers("stop")
            raise
        self._release_followers("stop" if status == "stopped" else "finish")
        return status

    def request_stop(self) -> None:
        """Stop like the stop command (SIGTERM): at once, or, mid-stretch in
        a job of several ranks, after this step, so every rank stops at it."""
        if self.dist.world_size > 1 and self._in_stretch:
            self._stop_requested = True
            return
        raise Stopped()

    def _release_followers(self, what: str) -> None:
        if self.dist.world_size > 1 and not self._followers_told:
            self._followers_told = True
            self.dist.send({what: True})

    def _run(self) -> str:
        self._register()
        self._resume_or_start()
        self.dist.send({"resume": self.resumed_from})
        total, every = self.cfg.train.steps, self.cfg.train.checkpoint_every
        self.started = time.time()
        self.bar = self._progress_bar()
        try:
            while self.c.trainer.step < total:
                self._poll()  # commands are obeyed at every checkpoint, however short the stretch
                # the segment in force at this step (after a fallback resume a
                # later segment may exist already: it starts at its own step),
                # within the domains' max_epochs
                weights = self.client.stretch_weights(self.c.trainer.step)
                end = vocab.next_boundary(self.c.trainer.step, every, total)
                self.dist.send({"train": weights, "end": end})
                self._phase("training")
                self._train_stretch(weights, end)
                self._checkpoint(weights)
                self._at_checkpoint(self.c.trainer.step)
        except (Stopped, EpochLimitError) as e:
            # EpochLimitError: the mixture in force cannot train on; a person sets one that fits
            why = (f": {e}; then resume it (run --resume {self.run_id})" if isinstance(e, EpochLimitError)
                   else "; resumes from the last checkpoint")
            self.store.update_run(self.run_id, status="stopped", phase="stopped", tokens_per_s=None)
            self.store.log_event(self.run_id, "stopped", f"stopped at step {self.c.trainer.step}{why}")
            return "stopped"
        finally:
            if self.bar is not None:
                self.bar.close()
        self.client.finish(total)
        return "finished"

    def _at_checkpoint(self, step: int) -> None:
        """Evaluate, then the client's boundary: estimate, apply what was
        approved, propose. Idempotent."""
        ck = self.store.checkpoint(self.run_id, step)
        if ck["boundary_done"]:
            return
        if not ck["evaluated"]:
            def progress(k: int, n: int, skill: str) -> None:
                self._phase(f"evaluating {skill} ({k + 1} of {n})")

            self.client.record_evaluation(step, self.c.evaluator, on_progress=progress)
        self.on_phase("evaluate", step)
        self.client.boundary(step, on_phase=self.on_phase, on_stage=self._phase)

    # -- pieces ------------------------------------------------------------
    def _register(self) -> None:
        """Domains and skills (steer and held-out) of the run, into the store."""
        per_doc = self.c.sampler.document_tokens()
        self.client.set_domains([
            {"name": d.name, "source": d.source, "skills": d.skills, "size_tokens": d.size_tokens,
             "tokens_per_doc": per_doc.get(d.name)} for d in self.c.domains])
        self.client.set_skills(self.c.evaluator.task_configs)

    def _resume_or_start(self) -> None:
        """Continue from the last complete checkpoint (finishing its boundary),
        or start: the first mixture, and the untrained model's checkpoint 0."""
        ck = None
        for row in reversed(self.store.checkpoints(self.run_id)):
            if not row["path"]:
                continue
            problem = self.c.checkpointer.problem(row["path"])
            if problem is None:
                ck = row
                break
            # a truncated or corrupt checkpoint: fall back to the one before;
            # training is a pure function of (seed, schedule), so the stretch
            # retrained from there reproduces what the bad one held
            self.store.log_event(self.run_id, "checkpoint_skipped",
                                 f"checkpoint at step {row['step']} skipped on resume: {problem}")
        if ck is not None:
            self.resumed_from = ck["path"]
            meta = self.c.checkpointer.load(ck["path"])
            self.c.sampler.load_state_dict(meta["sampler"])
            self.wall_offset = meta.get("wall_time", 0.0)
            self.store.log_event(self.run_id, "resumed", f"resumed from checkpoint at step {ck['step']}")
            self.store.heartbeat(self.run_id, status="running", pid=os.getpid(), step=ck["step"],
                                 tokens_seen=ck["tokens_seen"])
            self._at_checkpoint(ck["step"])  # finish that boundary if it was cut short
            return
        self.client.start(initial_weights(self.cfg, self.store.domains(self.run_id)))
        self.store.heartbeat(self.run_id, status="running", pid=os.getpid(), step=0, tokens_seen=0)
        self._checkpoint(self.store.current_weights(self.run_id))  # step 0: the untrained model
        self._at_checkpoint(0)

    def _phase(self, phase: str) -> None:
        """What the worker does now, for Home, `show` and the progress bar."""
        self.store.update_run(self.run_id, phase=phase, phase_started=time.time())
        if self.bar is not None:
            self.bar.set_description(f"run {self.run_id}: {phase}")

    def _train_stretch(self, weights: dict[str, float], end: int) -> None:
        """Train from the trainer's step to `end` on `weights`, beating and
        obeying commands about every POLL_SECONDS."""
        state = {"last_poll": time.time(), "steps": 0}
        curves = self.client.step_log()  # the Training page's loss, lr, grad norm, tokens/s

        def poll(loss) -> bool:  # True: stop after this step
            trainer = self.c.trainer
            curves.add(trainer.step, loss, lr=trainer.last_lr, grad_norm=trainer.last_grad_norm)
            state["steps"] += 1
            if self.bar is not None:
                self.bar.update(1)
            now = time.time()
            if now - state["last_poll"] >= POLL_SECONDS:
                tps = state["steps"] * self.tokens_per_step / (now - state["last_poll"])
                try:
                    self._poll(tokens_per_s=tps)
                except Stopped:
                    return True
                state["last_poll"], state["steps"] = now, 0
                if self.bar is not None:
                    self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
            return self._stop_requested

        self._in_stretch = True
        try:
            losses = ranked_stretch(self.c, self.dist, weights, end, self.cfg.train.batch_size, self.run_dir, poll)
        except Stopped:
            self._followers_told = True  # they stopped at the same step
            raise
        finally:
            self._in_stretch = False
            curves.close()
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
        """Save model, trainer and sampler state; record the checkpoint with
        the weights that trained the stretch ending here."""
        step = self.c.trainer.step
        wall = self.wall_offset + time.time() - self.started
        usage = {d: {k: u[k] for k in ("tokens", "epochs", "train_tokens")}
                 for d, u in self.c.sampler.usage(weights).items()}
        path = self.c.checkpointer.save(step, {"sampler": self.c.sampler.state_dict(), "wall_time": wall,
                                               "weights": weights})
        self.store.add_checkpoint(self.run_id, step=step, tokens_seen=step * self.tokens_per_step,
                                  train_loss=self.last_loss, wall_time=wall,
                                  tokens_per_s=self.store.run(self.run_id)["tokens_per_s"],
                                  path=path, weights=weights, domain_usage=usage)
        self.store.heartbeat(self.run_id, step=step, tokens_seen=step * self.tokens_per_step)
        # retention: the last train.keep_checkpoints, plus every segment's first
        # step (a schedule restarts there) and doremi's reference checkpoint
        keep = {seg["from_step"] for seg in self.store.schedule(self.run_id)} | {0}
        ref = getattr(getattr(self.client.strategy, "settings", None), "reference_step", None)
        if ref is not None:
            keep.add(ref)
        for removed in self.c.checkpointer.prune(keep):
            self.store.log_event(self.run_id, "checkpoint_pruned", f"removed {removed} (train.keep_checkpoints)")
        self.on_phase("save", step)

    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.train.steps, initial=self.c.trainer.step, unit="step",
                    desc=f"run {self.run_id}", mininterval=1.0)


def train_stretch(trainer: Trainer, batches, n: int, on_step=None) -> list[float]:
    """n optimizer steps on batches from an iterator; the training stretch
    between two checkpoints (bench/throughput.py times this same function).
    on_step(loss) gets each step's loss as train_step returns it; the losses
    are read (float) once, at the end."""
    losses = []
    for _ in range(n):
        losses.append(trainer.train_step(next(batches)))
        if on_step is not None:
            on_step(losses[-1])
    batches.close()
    return [float(loss) for loss in losses]


def ranked_stretch(c: Components, dist: Dist, weights: dict[str, float], end: int, batch_size: int,
                   run_dir: Path, poll: Callable[[object], bool] = lambda loss: False) -> list[float]:
    """One stretch on this rank (every rank runs it with the same weights
    and end): this rank's rows of each global batch, then the global batch's
    per-step losses, also appended to run_dir/train-log-rank<R>.jsonl with
    the weights trained and this process's pid (a resumed run appends the
    stretches it trains again). poll(loss) (rank 0: heartbeat and commands)
    returns True to stop; every rank then raises Stopped after the same step."""
    first = c.trainer.step
    n = end - first
    if dist.world_size == 1:
        batches = c.sampler.batches(weights, batch_size, n, background=c.background)
    else:
        batches = rank_batches(c.sampler, weights, batch_size, n, dist, background=c.background)

    def on_step(loss) -> None:
        if dist.agree_stop(poll(loss)):
            raise Stopped()

    losses = dist.mean(train_stretch(c.trainer, batches, n, on_step))
    with open(run_dir / f"train-log-rank{dist.rank}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"from_step": first, "to_step": end, "world_size": dist.world_size, "pid": os.getpid(),
                             "weights": weights, "losses": losses}) + "\n")
    return losses


def follow(cfg: RunConfig, run_dir: Path, dist: Dist,
           components: Callable[[RunConfig, Path], Components] | None = None) -> str:
    """A rank other than 0 of a torchrun job: train what rank 0 sends (the
    checkpoint to resume, then each stretch's weights and end) until it
    sends stop or finish; returns stopped or finished. Never opens the store
    nor writes a checkpoint. components: build_components for this rank by
    default."""
    c = (components or partial(build_components, dist=dist))(cfg, run_dir)
    while True:
        message = dist.send()
        if "resume" in message:
            if message["resume"] is not None:
                meta = c.checkpointer.load(message["resume"])
                c.sampler.load_state_dict(meta["sampler"])
        elif "train" in message:
            try:
                ranked_stretch(c, dist, message["train"], message["end"], cfg.train.batch_size, run_dir)
            except Stopped:
                return "stopped"
        else:
            return "finished" if "finish" in message else "stopped"
