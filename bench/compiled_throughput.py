"""Compiled training throughput: the project's training stretch with
train.compile against a bare compiled PyTorch loop of the same model, side
by side in one run (bench/gpu_check.sh runs it on gpu-small on a GPU).

    python bench/compiled_throughput.py [--preset gpu-small] [--steps 50] [--rounds 3]

Both loops torch.compile the same Llama (same init) and train it with fused
AdamW on CUDA, the same LR schedule, clipping and precision (bf16 autocast
on CUDA). The bare loop trains on one fixed batch already on the device and
never waits for the GPU inside a round. The project's stretch is the loop's
own (backend.loop.ranked_stretch: batches from the mixture sampler, drawn
in a background thread on a GPU, pinned and copied without blocking, a real
store heartbeat and command check once a second). Both compile before any
round is timed; rounds alternate (project, bare, ...); the medians and
their ratio are printed, the ratio last. The issue's bar: >= 0.9 on a GPU.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpu-small")
    ap.add_argument("--device", default=None, help="override train.device (cpu for a dry run without a GPU)")
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each loop (alternating)")
    args = ap.parse_args()

    import torch

    from backend.config import preset
    from backend.data.domains import build_domains
    from backend.data.sampler import MixtureSampler
    from backend.data.tokenizer import train_tokenizer
    from backend.distributed import Dist
    from backend.loop import POLL_SECONDS, Components, ranked_stretch
    from backend.model import build_model, count_parameters
    from backend.store import Store
    from backend.trainer import Trainer, pick_device
    from bench.throughput import bare_loop

    cfg = preset(args.preset)
    train = {**cfg.to_dict()["train"], "compile": True, **({"device": args.device} if args.device else {})}
    cfg = cfg.replace(train=train)
    device = pick_device(cfg.train.device)
    cuda = device.type == "cuda"
    tmp = Path(tempfile.mkdtemp())
    domains = build_domains(cfg.data.domains)
    tokenizer = train_tokenizer(domains, cfg.data.tokenizer_vocab, cfg.seed, tmp / "tok")
    model = build_model(cfg.model, len(tokenizer), cfg.data.context_length,
                        eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, seed=cfg.seed)
    bare_model = copy.deepcopy(model)
    sampler = MixtureSampler(domains, tokenizer, cfg.data.context_length, cfg.seed)
    weights = {d.name: 1 / len(domains) for d in domains}
    B, T = cfg.train.batch_size, cfg.data.context_length
    store = Store(tmp / "bench.db")
    run_id = store.create_run(cfg.to_dict())

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    # -- the project's stretch ------------------------------------------------------
    trainer = Trainer(model, cfg.train, device)
    c = Components(domains=domains, trainer=trainer, sampler=sampler, evaluator=None, checkpointer=None,
                   background=cuda)
    last = {"t": time.time()}

    def poll(loss) -> bool:  # what rank 0 does per step: heartbeat and commands once a second
        if time.time() - last["t"] >= POLL_SECONDS:
            store.heartbeat(run_id, step=trainer.step, tokens_seen=trainer.step * B * T)
            store.take_commands(run_id)
            last["t"] = time.time()
        return False

    def project_round(steps: int) -> float:
        sync()
        t = time.perf_counter()
        ranked_stretch(c, Dist(), weights, trainer.step + steps, B, tmp, poll)  # reads the losses: syncs
        return steps * B * T / (time.perf_counter() - t)

    # -- the bare compiled loop ----------------------------------------------------------
    bare_model.to(device).train()
    bare = torch.compile(bare_model)
    fixed = torch.from_numpy(sampler.batch(weights, B)[0]).to(device)  # (B, T+1)
    bare_steps = bare_loop(bare, bare_model, cfg, trainer, fixed, sync_every_step=False)

    def bare_round(steps: int) -> float:
        sync()
        t = time.perf_counter()
        bare_steps(steps)  # reads the loss once: the round's one wait for the GPU
        return steps * B * T / (time.perf_counter() - t)

    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"preset {args.preset}: {count_parameters(model) / 1e6:.2f}M parameters, batch {B} x {T} tokens, "
          f"device {name}, torch {torch.__version__}, compiled (inductor)")
    t = time.perf_counter()
    project_round(3), bare_round(3)  # compile both (and warm the allocator) before timing
    print(f"compile and warm-up: {time.perf_counter() - t:.0f} s")
    proj, base = [], []
    for r in range(args.rounds):
        proj.append(project_round(args.steps))
        base.append(bare_round(args.steps))
        print(f"round {r + 1}: project {proj[-1]:,.0f} tok/s   bare compiled {base[-1]:,.0f} tok/s")
    p, b = statistics.median(proj), statistics.median(base)
    print(f"median: project {p:,.0f} tok/s   bare compiled {b:,.0f} tok/s")
    print(f"ratio project/bare compiled: {p / b:.3f}")


if __name__ == "__main__":
    main()
