"""More than one process on one run: torchrun and DistributedDataParallel.

    torchrun --nproc_per_node N -m backend worker RUN
    python -m backend run ... --nproc N      (launches the line above)

Every rank trains; rank 0 alone owns the run: its lock, the store, the
heartbeat, evaluation, the controller and the checkpoints (the model
unwrapped from DDP). The other ranks never open the store; rank 0 sends them
what they need as messages over a gloo group (CPU, a long timeout: they wait
there while rank 0 evaluates, or while a person keeps the run paused):
the run's config and folder, the checkpoint to resume from, then before each
stretch the weights and the step it ends at, and last stop or finish.

Data: the sequences of global batch k are global indices [k*B, (k+1)*B)
(B = train.batch_size); rank r of W trains rows [r*B/W, (r+1)*B/W) of each,
drawn with MixtureSampler.sequences. Gradients are averaged over ranks, so a
step is the same step for any W (to float rounding), the data order never
depends on W, and a checkpoint written at one world size resumes at another.

Backends: NCCL for CUDA tensors, gloo for CPU ones (one process group,
"cpu:gloo,cuda:nccl").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

# ranks other than 0 wait for rank 0's next message through evaluations and
# pauses: no timeout a person would hit (torchrun ends every rank when one fails)
MESSAGE_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job; decided once, at start (from_env)."""

    rank: int = 0
    """0 owns the run; others train only."""
    world_size: int = 1
    """Processes training the run."""
    local_rank: int = 0
    """Rank on this machine: the CUDA device it trains on."""
    group: object = None
    """The gloo group rank 0's messages travel in (None in one process)."""

    @property
    def is_main(self) -> bool:
        """Whether this process owns the run (rank 0)."""
        return self.rank == 0

    def send(self, message=None):
        """Rank 0: send a plain-data message to every other rank; the others:
        receive it (their argument is ignored). Returns the message. Every
        rank must call it at the same point."""
        if self.world_size == 1:
            return message
        import torch.distributed as dist

        box = [message if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def agree_stop(self, stop: bool) -> bool:
        """After every step of a stretch: rank 0's `stop` to every rank, so
        all stop at the same step (a stop command or SIGTERM mid-stretch)."""
        if self.world_size == 1:
            return stop
        import torch
        import torch.distributed as dist

        flag = torch.tensor([int(stop) if self.is_main else 0])
        dist.broadcast(flag, src=0, group=self.group)
        return bool(flag.item())

    def mean(self, values: list[float]) -> list[float]:
        """Element-wise mean over ranks (each rank's per-step losses -> the
        global batch's losses). Every rank must call it."""
        if self.world_size == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.group)  # gloo has no AVG: sum, then divide
        return (t / self.world_size).tolist()

    def rows(self, batch_size: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of a global batch of batch_size."""
        per_rank = batch_size // self.world_size
        return self.rank * per_rank, (self.rank + 1) * per_rank

    def check_batch(self, batch_size: int, grad_accum: int) -> None:
        """ConfigError naming the field unless every rank gets grad_accum
        equal micro-batches of the global batch."""
        from backend.config import ConfigError

        if batch_size % (self.world_size * grad_accum):
            raise ConfigError(f"train.batch_size: {batch_size} sequences cannot be split into {self.world_size} "
                             f"processes x {grad_accum} micro-batches (train.grad_accum); make it a multiple of "
                             f"{self.world_size * grad_accum}")


def launched() -> bool:
    """Whether torchrun (torch.distributed.run) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def init() -> Dist:
    """This process's Dist: one process (rank 0 of 1) unless torchrun
    launched it; then join the process group (NCCL for CUDA tensors, gloo for
    CPU ones) and pin this rank's GPU."""
    if not launched():
        return Dist()
    import torch
    import torch.distributed as dist

    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)  # "cuda" means this rank's GPU from here on
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    group = dist.new_group(backend="gloo", timeout=MESSAGE_TIMEOUT) if world > 1 else None
    return Dist(rank=rank, world_size=world, local_rank=local, group=group)


def shutdown(d: Dist) -> None:
    """Leave the process group (a no-op in one process)."""
    if launched():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def rank_batches(sampler, weights: dict[str, float], batch_size: int, n: int, d: Dist, *,
                 background: bool) -> Iterator:
    """This rank's rows of the next n global batches, as (B/W, T+1) torch
    int64 tensors drawn with sampler.sequences (each row a pure function of
    (seed, global index, weights)); the sampler's state (its next global
    index, sampler.sequences_drawn) moves past all n global batches at once,
    as on every rank. background=True draws them in a thread ahead of the
    trainer (backend.data.sampler.prefetch). The iterator has close()."""
    import numpy as np
    import torch

    from backend.data.sampler import prefetch

    start = sampler.sequences_drawn
    lo, hi = d.rows(batch_size)
    sampler.sequences_drawn = start + n * batch_size
    steps = iter(range(n))

    def make():
        first = start + next(steps) * batch_size
        rows, _ = sampler.sequences(np.arange(first + lo, first + hi, dtype=np.int64), weights)
        return torch.from_numpy(rows)

    if background:
        return prefetch(make, n)
    return (make() for _ in range(n))


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command line that runs `python -m backend ARGV` in nproc processes
    on this machine (a free port of its own: --standalone)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "backend", *argv]
