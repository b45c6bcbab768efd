"""Training steps and checkpoints.

The Trainer owns the optimizer (AdamW, decay on matrices only), the schedule
(linear warmup, cosine to lr * min_lr_ratio), gradient clipping and the
precision context (bf16 autocast on CUDA, fp32 on CPU), all decided once.
It has state_dict / load_state_dict, so resume is not a special path.

A checkpoint is a folder `step-000100/` with model.safetensors, trainer.pt
(optimizer, scheduler, RNG) and meta.json (sampler state, step, tokens). It
is written under a temporary name and renamed into place, so a folder with
the final name is always complete; a half-written one is never picked up.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from backend.config import TrainConfig


def pick_device(setting: str) -> torch.device:
    """Decided once per process: cuda if asked (or auto and available), else cpu."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda requested but torch sees no GPU")
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class Trainer:
    def __init__(self, model, cfg: TrainConfig, device: torch.device):
        self.model = model.to(device)
        self.cfg = cfg
        self.device = device
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(0.9, 0.95), fused=device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        # bf16 autocast on GPU; plain fp32 on CPU (CPU bf16 is slower there)
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        )
        self.step = 0

    def _lr_factor(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        progress = min(1.0, (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps))
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def train_step(self, batch: torch.Tensor) -> float:
        """One optimizer step on a (B, T+1) batch of token ids; returns the loss."""
        self.model.train()
        batch = batch.to(self.device, non_blocking=True)
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T) each
        with self.autocast:
            logits = self.model(input_ids=x).logits  # (B, T, V)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss.item()

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])


# -- checkpoints ----------------------------------------------------------------


class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete or unreadable; the message names it."""


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:07d}"


def save_checkpoint(root: str | Path, model, trainer: Trainer, meta: dict) -> Path:
    """Write model, trainer state and meta atomically (temp folder + rename)."""
    from safetensors.torch import save_file

    final = checkpoint_dir(root, trainer.step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # tied embeddings share storage; save each tensor once, contiguous
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"))
    torch.save(trainer.state_dict(), tmp / "trainer.pt")
    (tmp / "meta.json").write_text(json.dumps({**meta, "step": trainer.step}))
    for f in tmp.iterdir():  # data on disk before the rename makes it visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def load_checkpoint(path: str | Path, model, trainer: Trainer) -> dict:
    """Restore model and trainer from a checkpoint folder; returns its meta."""
    from safetensors.torch import load_file

    p = Path(path)
    missing = [f for f in ("model.safetensors", "trainer.pt", "meta.json") if not (p / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {str(p)!r} is incomplete: missing {', '.join(missing)}")
    try:
        state = load_file(str(p / "model.safetensors"))
        result = model.load_state_dict(state, strict=False)
        unexpected = list(result.unexpected_keys)
        absent = [k for k in result.missing_keys if k != "lm_head.weight"]
        if unexpected or absent:
            raise CheckpointError(
                f"checkpoint {str(p)!r} does not fit the model (missing {absent[:3]}, unexpected {unexpected[:3]})"
            )
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        trainer.load_state_dict(torch.load(p / "trainer.pt", weights_only=False, map_location="cpu"))
        return json.loads((p / "meta.json").read_text())
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {str(p)!r} is unreadable: {type(e).__name__}: {e}") from None
