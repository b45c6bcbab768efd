"""Training throughput: the project's training stretch against a bare
PyTorch loop on the same model and batch size, side by side in one run.

    python bench/throughput.py [--preset demo | --config FILE] [--steps 60] [--rounds 5]
    python bench/throughput.py --config bench/text-domains.toml   # text domains only: token caches
    python bench/throughput.py --steps 10 --blocks 150             # alternated short blocks, total times

Both loops train the same Llama (same init) with AdamW, the same learning
rate schedule and gradient clipping. The bare loop trains on one fixed
pre-built batch; the project's stretch draws every batch from the mixture
sampler (MixtureSampler.batches: text domains as windows of their token
caches, synthetic ones generated and tokenized on the fly; drawn in line on
the CPU, in a background thread on a GPU) through backend.loop.train_stretch,
with the worker's per-step bookkeeping: the training curve's StepLog every
step, a real store heartbeat and command poll once a second. The rounds
alternate (project, bare, project, ...) so machine noise hits both; the
median tokens/s of each and their ratio are printed, the ratio last.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def bare_loop(model, params_model, cfg, trainer, fixed, *, sync_every_step: bool):
    """The bare PyTorch loop both throughput benchmarks compare against: the
    same model (`model`: as called, e.g. compiled; `params_model`: its
    parameters), optimizer, LR schedule, clipping and precision as the
    project's Trainer, on one fixed (B, T+1) batch. Returns steps(n), which
    runs n optimizer steps; `sync_every_step` reads the loss each step (as
    an eager loop that logs it), else once at the end (one wait for a GPU)."""
    import torch
    import torch.nn.functional as F

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
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each loop (alternating)")
    ap.add_argument("--blocks", type=int, default=0,
                    help="instead of rounds: this many short blocks (--steps each), order alternated, "
                         "ratio of total times")
    args = ap.parse_args()

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
    bare_model = copy.deepcopy(model)
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

    # -- the bare PyTorch loop ----------------------------------------------------
    bare_model.to(device).train()
    fixed = torch.from_numpy(sampler.batch(weights, B)[0]).to(device)  # (B, T+1)
    bare_steps = bare_loop(bare_model, bare_model, cfg, trainer, fixed, sync_every_step=True)

    def bare_round() -> float:
        t = time.perf_counter()
        bare_steps(args.steps)
        return args.steps * tokens_per_step / (time.perf_counter() - t)

    print(f"{args.config or 'preset ' + args.preset}: {count_parameters(model) / 1e6:.2f}M parameters, batch {B} x {T} tokens, "
          f"device {device}, torch threads {torch.get_num_threads()}")
    project_round(), bare_round()  # warm-up (allocator, kernels)
    if args.blocks:
        # many short blocks, the order alternated (project, bare, bare, project, ...): both loops see
        # the same host, and the ratio of their total times weighs every block alike
        time_p = time_b = 0.0
        for r in range(args.blocks):
            for f in (project_round, bare_round) if r % 2 == 0 else (bare_round, project_round):
                seconds = args.steps * tokens_per_step / f()
                time_p, time_b = (time_p + seconds, time_b) if f is project_round else (time_p, time_b + seconds)
        print(f"{args.blocks} alternating blocks of {args.steps} steps: ratio project/bare (total time): "
              f"{time_b / time_p:.3f}")
        return
    proj, bare = [], []
    for r in range(args.rounds):
        proj.append(project_round())
        bare.append(bare_round())
        print(f"round {r + 1}: project {proj[-1]:,.0f} tok/s   bare {bare[-1]:,.0f} tok/s")
    p, b = statistics.median(proj), statistics.median(bare)
    print(f"median: project {p:,.0f} tok/s   bare {b:,.0f} tok/s")
    print(f"ratio project/bare: {p / b:.3f}")


if __name__ == "__main__":
    main()
