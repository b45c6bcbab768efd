"""Training throughput: the project's training stretch against a bare
PyTorch loop on the same model and batch size, side by side in one run.

    python bench/throughput.py [--preset demo | --config FILE] [--steps 10] [--blocks 60]
    python bench/throughput.py --config bench/text-domains.toml   # text domains only: token caches

Both loops train the same Llama: the very same module, AdamW optimizer and
learning rate scheduler (bare_loop, shared=True), with the same gradient
clipping. The bare loop trains on one fixed pre-built batch; the project's stretch draws every batch from the mixture
sampler (MixtureSampler.batches: text domains as windows of their token
caches, synthetic ones generated and tokenized on the fly; drawn in line on
the CPU, in a background thread on a GPU) through backend.loop.train_stretch,
with the worker's per-step bookkeeping: the training curve's StepLog every
step, a real store heartbeat and command poll once a second.

The two run in many short blocks of --steps steps each, the order alternated
(project, bare, bare, project, ...), so a slow spell of a shared machine
hits both alike; the ratio is that of their total times, with a 95%
bootstrap interval over the block pairs. (Five rounds of 60 steps with each
side's median, as this benchmark measured before, read 0.94-1.01 for the
same code on 2 shared cores: single rounds swung by +-15%.)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def bare_loop(model, params_model, cfg, trainer, fixed, *, sync_every_step: bool, shared: bool = False):
    """The bare PyTorch loop both throughput benchmarks compare against: the
    same model (`model`: as called, e.g. compiled; `params_model`: its
    parameters), optimizer, LR schedule, clipping and precision as the
    project's Trainer, on one fixed (B, T+1) batch. Returns steps(n), which
    runs n optimizer steps; `sync_every_step` reads the loss each step (as
    an eager loop that logs it), else once at the end (one wait for a GPU).

    shared: params_model is trainer.model, and the loop steps the trainer's
    own optimizer and scheduler: the two loops then work on the very same
    tensors, so where the allocator put them (which moved two identical
    loops on separate copies of the demo model 1-3% apart on 2 CPU cores)
    cannot tell them apart. Otherwise it builds its own, alike."""
    import torch
    import torch.nn.functional as F

    if shared:
        opt, sched = trainer.optimizer, trainer.scheduler
    else:
        decay = [p for p in params_model.parameters() if p.dim() >= 2]
        no_decay = [p for p in params_model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.train.lr, betas=(0.9, 0.95), fused=fixed.device.type == "cuda")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, trainer._lr_factor)

    def steps(n: int) -> None:
        for _ in range(n):
            x, y = fixed[:, :-1], fixed[:, 1:]
            with trainer.autocast:
                logits = model(input_ids=x).logits  # (B, T, V)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params_model.parameters(), cfg.train.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if sync_every_step:
                loss.item()
        if not sync_every_step:
            loss.item()

    return steps

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--config", help="a run config file instead of a preset (its model, data and batch)")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per block")
    ap.add_argument("--blocks", type=int, default=60, help="blocks of each loop (order alternated)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from backend.client import RunClient
    from backend.config import load, preset
    from backend.data.domains import build_domains
    from backend.data.sampler import MixtureSampler
    from backend.data.tokenizer import train_tokenizer
    from backend.loop import POLL_SECONDS, train_stretch
    from backend.model import build_model, count_parameters
    from backend.store import Store
    from backend.trainer import Trainer, pick_device

    cfg = load(args.config) if args.config else preset(args.preset)
    device = pick_device(cfg.train.device)
    tmp = Path(tempfile.mkdtemp())
    domains = build_domains(cfg.data.domains)
    tokenizer = train_tokenizer(domains, cfg.data.tokenizer_vocab, cfg.seed, tmp / "tok")
    model = build_model(cfg.model, len(tokenizer), cfg.data.context_length,
                        eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, seed=cfg.seed)
    sampler = MixtureSampler(domains, tokenizer, cfg.data.context_length, cfg.seed, cache_dir=tmp / "token-cache")
    weights = {d.name: 1 / len(domains) for d in domains}
    B, T = cfg.train.batch_size, cfg.data.context_length
    tokens_per_step = B * T
    store = Store(tmp / "bench.db")
    run_id = store.create_run(cfg.to_dict())

    # -- the project's stretch --------------------------------------------------
    trainer = Trainer(model, cfg.train, device)
    client = RunClient(store, run_id)
    last = {"t": time.time()}

    def project_round() -> float:
        t = time.perf_counter()
        curves = client.step_log()

        def on_step(loss):  # what the worker's loop does per step (Loop._train_stretch)
            curves.add(trainer.step, loss, lr=trainer.last_lr, grad_norm=trainer.last_grad_norm)
            if time.time() - last["t"] >= POLL_SECONDS:
                store.heartbeat(run_id, step=trainer.step, tokens_seen=trainer.step * tokens_per_step)
                store.take_commands(run_id)
                last["t"] = time.time()

        batches = sampler.batches(weights, B, args.steps, background=device.type == "cuda")
        train_stretch(trainer, batches, args.steps, on_step)
        curves.close()
        return args.steps * tokens_per_step / (time.perf_counter() - t)

    # -- the bare PyTorch loop: the same model, optimizer and scheduler objects ----
    fixed = torch.from_numpy(sampler.batch(weights, B)[0]).to(device)  # (B, T+1)
    bare_steps = bare_loop(trainer.model, trainer.model, cfg, trainer, fixed, sync_every_step=True, shared=True)

    def bare_round() -> float:
        t = time.perf_counter()
        bare_steps(args.steps)
        return args.steps * tokens_per_step / (time.perf_counter() - t)

    print(f"{args.config or 'preset ' + args.preset}: {count_parameters(model) / 1e6:.2f}M parameters, batch {B} x {T} tokens, "
          f"device {device}, torch threads {torch.get_num_threads()}")
    project_round(), bare_round()  # warm-up (allocator, kernels)
    seconds = np.zeros((args.blocks, 2))  # per block: project, bare
    for r in range(args.blocks):
        for side in (0, 1) if r % 2 == 0 else (1, 0):
            seconds[r, side] = args.steps * tokens_per_step / (project_round() if side == 0 else bare_round())
        if (r + 1) % 10 == 0 or r + 1 == args.blocks:
            a = r // 10 * 10
            p, b = args.steps * tokens_per_step * (r + 1 - a) / seconds[a:r + 1].sum(axis=0)
            print(f"blocks {a + 1}-{r + 1}: project {p:,.0f} tok/s   bare {b:,.0f} tok/s   ratio {p / b:.3f}")
    p, b = args.blocks * args.steps * tokens_per_step / seconds.sum(axis=0)
    pick = np.random.default_rng(0).integers(0, args.blocks, size=(2000, args.blocks))
    boot = seconds[pick, 1].sum(axis=1) / seconds[pick, 0].sum(axis=1)
    print(f"all {args.blocks} blocks of {args.steps} steps: project {p:,.0f} tok/s   bare {b:,.0f} tok/s   "
          f"95% interval of the ratio (bootstrap over blocks) {np.quantile(boot, 0.025):.3f}-{np.quantile(boot, 0.975):.3f}")
    print(f"ratio project/bare: {p / b:.3f}")

if __name__ == "__main__":
    main()
