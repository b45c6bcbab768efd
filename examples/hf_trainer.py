"""Train the demo model with Hugging Face `Trainer`, steered by the closed loop.

    python examples/hf_trainer.py --preset tiny --steps 40 --save-steps 10 --policy human

The run shows on the dashboard like a built-in one (capability per skill,
proposals to approve). The lines that put an HF script under the loop are
marked `# closed loop`; the rest is an ordinary HF Trainer script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere in the checkout

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: the tokenizer is trained here
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="runs/closed_loop.db", help="run database (default runs/closed_loop.db)")
    ap.add_argument("--preset", default="demo", help="demo | tiny (the run's model, data and skills)")
    ap.add_argument("--steps", type=int, help="optimizer steps (default: the preset's train.steps)")
    ap.add_argument("--save-steps", type=int, help="steps between checkpoints (default: train.checkpoint_every)")
    ap.add_argument("--policy", choices=("auto", "human"), help="who approves proposals (default: the preset's)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--segments-out", help="write the dataset's mixture segments (by sequence) to this JSON file")
    args = ap.parse_args(argv)

    import torch
    from transformers import Trainer, TrainingArguments

    from backend.client import RunClient
    from backend.config import preset
    from backend.data.domains import build_domains
    from backend.data.tokenizer import train_tokenizer
    from backend.integrations.hf import ClosedLoopCallback, MixtureDataset
    from backend.loop import run_dir_for
    from backend.model import build_model
    from backend.store import Store

    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    train = {**cfg.to_dict()["train"], "steps": args.steps or cfg.train.steps,
             "checkpoint_every": args.save_steps or cfg.train.checkpoint_every}
    cfg = cfg.replace(train=train, **({"policy": args.policy} if args.policy else {}))

    store = Store(args.db)
    client = RunClient.register(store, cfg)  # closed loop: the run, its skills, strategy and policy
    run_dir = run_dir_for(store, client.run_id)
    print(f"run {client.run_id}: {cfg.name}, policy {cfg.policy}, db {args.db}", flush=True)

    tokenizer = train_tokenizer(build_domains(cfg.data.domains, seed=cfg.seed), cfg.data.tokenizer_vocab,
                                cfg.seed, run_dir / "tokenizer")
    model = build_model(cfg.model, len(tokenizer), cfg.data.context_length, eos_id=tokenizer.eos_token_id,
                        pad_id=tokenizer.pad_token_id, seed=cfg.seed)
    dataset = MixtureDataset.for_run(client, tokenizer)  # closed loop: the steered mixture
    targs = TrainingArguments(
        output_dir=str(run_dir / "hf"), max_steps=cfg.train.steps, save_steps=cfg.train.checkpoint_every,
        save_strategy="steps", save_total_limit=2, save_only_model=True,
        per_device_train_batch_size=cfg.train.batch_size, learning_rate=cfg.train.lr,
        warmup_steps=cfg.train.warmup_steps, lr_scheduler_type="cosine", weight_decay=cfg.train.weight_decay,
        logging_steps=1, report_to="none", use_cpu=True, dataloader_num_workers=0, seed=cfg.seed,
        disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=dataset,
                      callbacks=[ClosedLoopCallback(client, dataset, tokenizer)])  # closed loop: the boundary
    trainer.train()
    store.close()
    if args.segments_out:
        Path(args.segments_out).write_text(json.dumps(dataset.segments))
    print(f"run {client.run_id}: finished at step {cfg.train.steps}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
