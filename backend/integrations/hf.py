"""Hugging Face Trainer under the closed loop: a mixture dataset and a
callback, so an HF `Trainer` script steers with a few added lines:

    client = RunClient.register(store, cfg)               # or RunClient(store, run_id)
    dataset = MixtureDataset.for_run(client, tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      callbacks=[ClosedLoopCallback(client, dataset, tokenizer)])
    trainer.train()

At step 0 and at each save (or evaluation) the callback reports the
checkpoint, evaluates the model in memory with the run's tasks (the built-in
loop's lm-eval path), runs the client's boundary (estimate, guard, apply the
newest approved proposal exactly once, propose) and sets the dataset's
weights to `client.mixture_at(step)`.

When the new weights start: with the first sequence the dataset draws after
the boundary. HF's dataloader (accelerate) draws one batch ahead, so the
batch of the step right after a boundary was drawn before it, with the old
weights; `MixtureDataset.segments` records exactly which sequence each
mixture started at, and the checkpoint's `tokens_per_domain` what was drawn.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from backend.client import RunClient
from backend.mixture import validate_weights


class MixtureDataset(torch.utils.data.IterableDataset):
    """Endless causal-LM examples from the run's domains by mixture weights:
    {"input_ids", "labels"}, each a (context_length,) int64 tensor (the
    model shifts labels itself).

    Sequence i is a pure function of (seed, i, weights) (MixtureSampler):
    the state is the sequences drawn and the weights in force. Single
    process only (dataloader_num_workers=0): the weights a callback sets
    live in this process."""

    def __init__(self, sampler, weights: dict[str, float]):
        self.sampler = sampler
        self.weights = validate_weights(weights, sampler.names)
        self.segments: list[dict] = [{"from_sequence": sampler.sequences_drawn, "weights": dict(self.weights),
                                      "step": None}]
        """Each mixture drawn from: the first sequence index drawn with it, its
        weights, and the step of the boundary that set it (None: the first)."""
        self.sequences = dict.fromkeys(sampler.names, 0)
        """Domain -> sequences drawn so far."""

    @classmethod
    def for_run(cls, client: RunClient, tokenizer) -> MixtureDataset:
        """The dataset of a run: its configured domains, the run's seed and
        context length, drawing from the mixture in force at step 0."""
        from backend.data.cache import cache_root
        from backend.data.domains import build_domains
        from backend.data.sampler import MixtureSampler
        from backend.loop import run_dir_for

        cfg = client.cfg
        domains = build_domains(cfg.data.domains, seed=cfg.seed)
        sampler = MixtureSampler(domains, tokenizer, cfg.data.context_length, cfg.seed,
                                 cache_dir=cache_root(cfg.data.cache_dir, run_dir_for(client.store, client.run_id)))
        return cls(sampler, client.mixture_at(0))

    def set_weights(self, weights: dict[str, float], step: int) -> None:
        """Draw every later sequence from `weights` (set at the boundary of
        checkpoint `step`); no change when they are the weights in force."""
        weights = validate_weights(weights, self.sampler.names)
        if weights == self.weights:
            return
        self.weights = weights
        self.segments.append({"from_sequence": self.sampler.sequences_drawn, "weights": dict(weights), "step": step})

    def tokens_per_domain(self) -> dict[str, int]:
        """Domain -> training tokens drawn so far (sequences x context length)."""
        return {d: n * self.sampler.length for d, n in self.sequences.items()}

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("MixtureDataset: set dataloader_num_workers=0 (the callback's weights live in the "
                               "main process)")
        while True:
            ids, counts = self.sampler.batch(self.weights, 1)  # (1, T + 1) tokens
            for d, n in counts.items():
                self.sequences[d] += n
            x = torch.from_numpy(ids[0, :-1])  # (T,)
            yield {"input_ids": x, "labels": x.clone()}


class ClosedLoopCallback(TrainerCallback):
    """Runs the run's checkpoint boundary inside an HF Trainer: at train
    begin (checkpoint 0, the untrained model), at each save and each
    evaluation; at train end the run finishes.

    The TrainingArguments must match the run's config: max_steps ==
    train.steps, save_steps == train.checkpoint_every, and
    per_device_train_batch_size x gradient_accumulation_steps ==
    train.batch_size (ValueError naming the argument otherwise), so steps
    and tokens mean the same in the store as in the trainer."""

    def __init__(self, client: RunClient, dataset: MixtureDataset, tokenizer):
        self.client = client
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.losses: list[float] = []  # training losses logged since the last checkpoint (nats/token)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Check the arguments against the run's config; checkpoint 0."""
        train = self.client.cfg.train
        got = {"max_steps": (args.max_steps, train.steps, "train.steps"),
               "save_steps": (args.save_steps, train.checkpoint_every, "train.checkpoint_every"),
               "per_device_train_batch_size x gradient_accumulation_steps": (
                   args.per_device_train_batch_size * args.gradient_accumulation_steps, train.batch_size,
                   "train.batch_size")}
        for name, (value, want, field) in got.items():
            if value != want:
                raise ValueError(f"TrainingArguments.{name}: {value} differs from the run's {field} {want}")
        self._boundary(state.global_step, model, path="")

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Keep the training loss for the next checkpoint, and log it (with
        the learning rate and grad norm HF logs beside it) as a training-curve row."""
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
            self.client.report_steps([{"step": state.global_step, "loss": float(logs["loss"]),
                                       "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm")}])

    def on_save(self, args, state, control, model=None, **kwargs):
        """The checkpoint HF just wrote: report it, evaluate, run the boundary."""
        self._boundary(state.global_step, model, path=f"{args.output_dir}/checkpoint-{state.global_step}")

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        """An evaluation is a checkpoint boundary too (once per step)."""
        self._boundary(state.global_step, model, path="")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """The last checkpoint, if it was not saved, then the run finishes."""
        self._boundary(state.global_step, model, path="")
        self.client.finish(state.global_step)

    def _boundary(self, step: int, model, path: str) -> None:
        ck = self.client.store.checkpoint(self.client.run_id, step)
        if ck is not None and ck["boundary_done"]:
            # done before (the Trainer resumed from its checkpoint here): draw from what it set
            self.dataset.set_weights(self.client.mixture_at(step), step)
            return
        loss = sum(self.losses[-10:]) / len(self.losses[-10:]) if self.losses else None
        self.client.report_checkpoint(step, step * self.client.tokens_per_step, train_loss=loss,
                                      tokens_per_domain=self.dataset.tokens_per_domain(), path=path,
                                      weights=self.dataset.weights)
        self.client.evaluate(step, model, self.tokenizer, device=model.device)
        self.client.boundary(step)
        self.dataset.set_weights(self.client.mixture_at(step), step)
