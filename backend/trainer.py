"""Training steps and checkpoints.

The Trainer owns the optimizer (AdamW, decay on matrices only), the schedule
(linear warmup, cosine to lr * min_lr_ratio), gradient clipping and the
precision context (bf16 autocast on CUDA, fp32 on CPU), all decided once.
It has state_dict / load_state_dict, so resume is not a special path.

A checkpoint is a folder `step-0000100/` holding
- model.safetensors and config.json as save_pretrained writes them (a tied
  lm_head is stored once, as the input embedding), generation_config.json,
  and the run's tokenizer files when one is given: transformers and
  `lm_eval --model hf` load the folder as it is;
- trainer.safetensors: the trainer's tensors (AdamW moments and step
  counters, the CPU and CUDA RNG states as uint8 tensors);
- trainer.json: the rest of the trainer's state (step, the optimizer's param
  groups, the LR scheduler's state), with each tensor named by its key in
  trainer.safetensors;
- meta.json: what the caller passes (the loop: sampler state, wall time,
  weights), plus the step;
- manifest.json: the size and sha256 of every other file, written last.
Nothing is pickled, so loading a checkpoint never runs code from the file.
A checkpoint is written in `step-0000100.tmp/` and renamed into place, so a
folder with the final name is complete when written; verify_checkpoint
checks it against its manifest before anything is loaded (a truncated or
altered file is named; the loop resumes from the newest that verifies), and
latest_valid_checkpoint does the same for a caller with a list of folders. prune_checkpoints keeps the newest few and the steps still needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from backend.config import TrainConfig

log = logging.getLogger(__name__)


def pick_device(setting: str) -> torch.device:
    """Decided once per process: cuda if asked (or auto and available), else cpu."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda requested but torch sees no GPU")
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class Trainer:
    """Optimizer, LR schedule, clipping and precision around one model.

    `model` stays the plain module (checkpoints and evaluation use it); the
    steps run through `self.forward`: the model wrapped in
    DistributedDataParallel when `dist` has more than one rank, then
    torch.compile'd when train.compile is set (DDP first, so compile sees
    DDP's gradient buckets). Both wrap at the first step: DDP's construction
    is a collective every rank must reach, and rank 0 reaches it only after
    building the run (its tokenizer) and evaluating checkpoint 0."""

    def __init__(self, model, cfg: TrainConfig, device: torch.device, dist=None):
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
        self.dist = dist
        self.ddp = None
        self.forward = None  # the model as the steps call it (_wrap, at the first step)
        self.step = 0
        self.last_grad_norm: torch.Tensor | None = None  # of the last step, before clipping (0-dim)
        self.last_lr: float | None = None  # the learning rate the last step used

    def _lr_factor(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        progress = min(1.0, (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps))
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _wrap(self) -> None:
        self.forward = self.model
        if self.dist is not None and self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            # DDP broadcasts rank 0's parameters here: every rank starts equal
            self.ddp = DistributedDataParallel(
                self.model, device_ids=[torch.cuda.current_device()] if self.device.type == "cuda" else None)
            self.forward = self.ddp
        if self.cfg.compile:
            self.forward = torch.compile(self.forward)

    def train_step(self, batch: torch.Tensor) -> torch.Tensor:
        """One optimizer step on a (B, T+1) batch of token ids (B: this
        process's rows of the global batch), in train.grad_accum equal
        micro-batches; returns the mean loss (nats/token) as a 0-dim tensor,
        so that a GPU is never waited for: float() it only to report it."""
        if self.forward is None:
            self._wrap()
        if not self.model.training:  # after an evaluation; train() walks every module (0.15 ms on the demo's)
            self.model.train()
        if batch.device != self.device:
            if self.device.type == "cuda":  # pinned: the copy is queued, the host goes on
                batch = batch.pin_memory()
            batch = batch.to(self.device, non_blocking=True)
        accum = self.cfg.grad_accum
        total = None
        for k, micro in enumerate(batch.chunk(accum)):
            x, y = micro[:, :-1], micro[:, 1:]  # (B / grad_accum, T) each
            # DDP averages gradients over ranks on the last micro-batch only
            sync = self.ddp is None or k == accum - 1
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()), self.autocast:
                logits = self.forward(input_ids=x).logits  # (b, T, V)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            # equal micro-batches: the mean of their means is the batch's mean
            (loss / accum if accum > 1 else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        # the norm stays a tensor (no sync here); max_norm inf only measures it
        self.last_grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or math.inf)
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / accum if accum > 1 else total

    def state_dict(self) -> dict:
        """Everything resume needs besides the model: optimizer, scheduler,
        step and the RNG states (tensors and plain values only)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])


# -- checkpoints ----------------------------------------------------------------

MODEL_FILE = "model.safetensors"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"
META_FILE = "meta.json"
HF_CONFIG = "config.json"
CHECKPOINT_FILES = (MODEL_FILE, HF_CONFIG, TRAINER_TENSORS, TRAINER_JSON, META_FILE)
"""What every checkpoint folder holds besides its manifest."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json")
"""What save_pretrained of a tokenizer (and the model's generation config)
may add, so transformers and `lm_eval --model hf` load the folder as it is;
each is listed in the manifest like the rest. Anything else is refused."""
MANIFEST = "manifest.json"
FORMAT = 1
"""Version of trainer.json and manifest.json."""
_STEP_DIR = re.compile(r"step-(\d+)")
_TMP, _OLD = ".tmp", ".old"


class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete, altered or unwritable; the message
    names the folder and the file."""


def checkpoint_dir(root: str | Path, step: int) -> Path:
    """The folder of the checkpoint at `step`: root/step-0000100."""
    return Path(root) / f"step-{step:07d}"


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a checkpoint folder by its name (step-0000100 -> 100);
    None for anything else (a .tmp folder included)."""
    m = _STEP_DIR.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


# The trainer's state is a tree of dicts, lists, tuples, tensors and plain
# values. Tensors go to safetensors under their path in the tree
# ("optimizer.state.0.exp_avg"); the tree goes to JSON with a one-key dict
# standing for what JSON lacks: {"$tensor": key}, {"$tuple": [...]} and
# {"$int_keys": {...}} (AdamW keys its state by parameter index).


def _to_json_tree(obj, path: str, tensors: dict[str, torch.Tensor]):
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().contiguous().cpu()
        return {"$tensor": path}
    if isinstance(obj, tuple):
        return {"$tuple": [_to_json_tree(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_to_json_tree(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _to_json_tree(v, f"{path}.{k}", tensors) for k, v in obj.items()}
        if all(type(k) is int for k in obj):
            return {"$int_keys": {str(k): _to_json_tree(v, f"{path}.{k}", tensors) for k, v in obj.items()}}
        raise TypeError(f"{path}: keys must be all strings or all integers, got {list(obj)[:5]}")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{path}: a {type(obj).__name__} cannot be stored without pickle")


def _from_json_tree(node, tensors: dict[str, torch.Tensor]):
    if isinstance(node, list):
        return [_from_json_tree(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (tag, value), = node.items()
        if tag == "$tensor":
            if value not in tensors:
                raise KeyError(f"tensor {value!r} is not in {TRAINER_TENSORS}")
            return tensors[value]
        if tag == "$tuple":
            return tuple(_from_json_tree(v, tensors) for v in value)
        if tag == "$int_keys":
            return {int(k): _from_json_tree(v, tensors) for k, v in value.items()}
    return {k: _from_json_tree(v, tensors) for k, v in node.items()}


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftovers(root: Path) -> None:
    """Clear what an interrupted save left: a `.tmp` folder is never a
    checkpoint; an `.old` one is a checkpoint moved aside to be replaced,
    put back if its replacement never arrived."""
    for stale in root.glob(f"step-*{_TMP}"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in root.glob(f"step-*{_OLD}"):
        final = old.with_name(old.name.removesuffix(_OLD))
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)


def _write_checkpoint_files(folder: Path, model, trainer: Trainer, meta: dict, tokenizer=None) -> None:
    from safetensors.torch import save_file

    # save_pretrained's layout, so AutoModelForCausalLM.from_pretrained and
    # lm_eval --model hf load the folder: config.json, model.safetensors with
    # format metadata, tied embeddings saved once (transformers re-ties them)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / MODEL_FILE), metadata={"format": "pt"})
    model.config.to_json_file(str(folder / HF_CONFIG))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.to_json_file(str(folder / "generation_config.json"))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    tensors: dict[str, torch.Tensor] = {}
    tree = _to_json_tree(trainer.state_dict(), "trainer", tensors)
    save_file(tensors, str(folder / TRAINER_TENSORS))
    (folder / TRAINER_JSON).write_text(json.dumps({"format": FORMAT, "state": tree}))
    (folder / META_FILE).write_text(json.dumps({**meta, "step": trainer.step}))
    files = {}
    written = sorted(f.name for f in folder.iterdir())
    extra = [n for n in written if n not in CHECKPOINT_FILES and n not in TOKENIZER_FILES]
    if extra:
        raise CheckpointError(f"unexpected file(s) {extra} written to {str(folder)!r}")
    for name in written:  # data on disk before the manifest vouches for it
        _fsync(folder / name)
        files[name] = {"bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "step": trainer.step, "files": files}, indent=1))
    _fsync(folder / MANIFEST)
    _fsync(folder)


def save_checkpoint(root: str | Path, model, trainer: Trainer, meta: dict, tokenizer=None) -> Path:
    """Write the checkpoint of trainer.step under root and return its folder.

    Written in a `.tmp` folder, manifest last, then renamed into place: a
    folder with the final name is always complete. A write that fails
    (disk full, unserialisable meta) removes the temporary folder, leaves
    every earlier checkpoint as it was and raises CheckpointError. Leftovers
    of an earlier interrupted save are cleared first, so they never pile up.
    """
    root = Path(root)
    final = checkpoint_dir(root, trainer.step)
    tmp = final.with_name(final.name + _TMP)
    old = final.with_name(final.name + _OLD)
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    try:
        tmp.mkdir()
        _write_checkpoint_files(tmp, model, trainer, meta, tokenizer)
        if final.exists():  # the same step again (after a fallback): swap, never delete first
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync(root)
    except Exception as e:
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise CheckpointError(
            f"checkpoint {str(final)!r} was not written ({type(e).__name__}: {e}); earlier checkpoints are intact"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: str | Path) -> None:
    """Check a checkpoint folder against its manifest without loading it:
    every file present, nothing else there, each file's size and sha256 as
    written. Raises CheckpointError naming the folder and the bad file."""
    p = Path(path)
    where = f"checkpoint {str(p)!r}"
    if not p.is_dir():
        raise CheckpointError(f"{where} does not exist")
    try:
        present = {f.name for f in p.iterdir()}
    except OSError as e:
        raise CheckpointError(f"{where} cannot be listed ({type(e).__name__}: {e})") from None
    missing = [f for f in (*CHECKPOINT_FILES, MANIFEST) if f not in present]
    unknown = sorted(present - {*CHECKPOINT_FILES, *TOKENIZER_FILES, MANIFEST})
    problems = []
    if missing:
        problems.append(f"is incomplete: missing {', '.join(missing)}")
    if unknown:  # e.g. a trainer.pt: nothing here is ever unpickled
        problems.append(f"holds {', '.join(unknown)}, which no checkpoint holds (refused, never loaded)")
    if problems:
        raise CheckpointError(f"{where} {'; '.join(problems)}")
    try:
        listed = json.loads((p / MANIFEST).read_text())["files"]
        names = set(CHECKPOINT_FILES) | (present & set(TOKENIZER_FILES))
        unlisted = sorted(n for n in names if n not in listed)
        if unlisted:  # a file the save did not write (planted, or a manifest rewritten)
            raise KeyError(f"{', '.join(unlisted)} not listed")
        expected = {name: (int(listed[name]["bytes"]), str(listed[name]["sha256"])) for name in sorted(names)}
    except OSError as e:  # a folder or a dangling link in its place
        raise CheckpointError(f"{where} is unreadable: {MANIFEST} cannot be read ({type(e).__name__}: {e})") from None
    except Exception as e:  # noqa: BLE001 - any content that does not parse (bad JSON, Infinity, deep nesting, ...)
        raise CheckpointError(f"{where} is unreadable: {MANIFEST} is malformed ({type(e).__name__}: "
                              f"{str(e)[:200]})") from None
    for name, (size, digest) in expected.items():
        try:
            actual = (p / name).stat().st_size
            matches = actual == size and _sha256(p / name) == digest
        except OSError as e:  # a dangling link, a folder, no permission
            raise CheckpointError(f"{where} is unreadable: {name} cannot be read ({type(e).__name__}: {e})") from None
        if actual != size:
            raise CheckpointError(f"{where} is unreadable: {name} is {actual} bytes, {MANIFEST} says {size}")
        if not matches:
            raise CheckpointError(f"{where} is unreadable: {name} does not match its sha256 in {MANIFEST}")


def latest_valid_checkpoint(paths: Iterable[str | Path]) -> tuple[Path | None, list[str]]:
    """The first of `paths` (checkpoint folders, newest first) that
    verifies, and why each one before it was skipped (one CheckpointError
    message each, also logged as a warning). (None, reasons) when none
    verifies: the run starts from scratch or the caller refuses."""
    skipped = []
    for path in paths:
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping %s", e)
            skipped.append(str(e))
            continue
        return Path(path), skipped
    return None, skipped


def load_checkpoint(path: str | Path, model, trainer: Trainer) -> dict:
    """Restore model and trainer from a checkpoint folder; returns its meta.

    The folder is verified first and every file is read before anything is
    changed, so a refused checkpoint leaves model and trainer untouched.
    Raises CheckpointError naming the folder and the file."""
    from safetensors.torch import load_file

    p = Path(path)
    verify_checkpoint(p)
    reading = MODEL_FILE
    try:
        weights = load_file(str(p / MODEL_FILE))
        reading = TRAINER_TENSORS
        tensors = load_file(str(p / TRAINER_TENSORS))
        reading = TRAINER_JSON
        saved = json.loads((p / TRAINER_JSON).read_text())
        if saved.get("format") != FORMAT:
            raise ValueError(f"format {saved.get('format')!r}, this version reads {FORMAT}")
        trainer_state = _from_json_tree(saved["state"], tensors)
        reading = META_FILE
        meta = json.loads((p / META_FILE).read_text())
        reading = MODEL_FILE
        result = model.load_state_dict(weights, strict=False)
        unexpected = list(result.unexpected_keys)
        absent = [k for k in result.missing_keys if k != "lm_head.weight"]
        if unexpected or absent:
            raise CheckpointError(
                f"checkpoint {str(p)!r} does not fit the model (missing {absent[:3]}, unexpected {unexpected[:3]})"
            )
        if hasattr(model, "tie_weights"):
            model.tie_weights()
        reading = TRAINER_JSON
        trainer.load_state_dict(trainer_state)
        return meta
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {str(p)!r} is unreadable: {reading}: {type(e).__name__}: {e}") from None


def prune_checkpoints(root: str | Path, keep_last: int, keep_steps: Iterable[int] = ()) -> list[Path]:
    """Remove the checkpoints under root beyond the newest `keep_last` that
    verify, except the steps in `keep_steps` (those a schedule or a
    reference run still needs); returns the folders removed. keep_last=0
    keeps everything. A checkpoint that fails verification never counts
    toward keep_last and is removed unless its step is kept. Leftover
    `.tmp` folders of interrupted saves are removed too."""
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    root = Path(root)
    if not root.is_dir():
        return []
    _remove_leftovers(root)
    if keep_last == 0:
        return []
    keep = set(keep_steps)
    folders = sorted((p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None),
                     key=checkpoint_step, reverse=True)
    kept_valid, removed = 0, []
    for folder in folders:
        if checkpoint_step(folder) in keep:
            continue
        if kept_valid < keep_last:
            try:
                verify_checkpoint(folder)
                kept_valid += 1
                continue
            except CheckpointError as e:
                log.warning("pruning %s", e)
        shutil.rmtree(folder)
        removed.append(folder)
    return removed
