"""Data-parallel training across processes: PyTorch DDP, launched by torchrun.

`python -m stages.train` stays the stage's command. When params ask for more than one process
(`train.nproc_per_node` x `train.nnodes`), the stage replaces itself with torchrun running the same
module (`torchrun_argv`), which starts one process per rank with RANK, LOCAL_RANK, WORLD_SIZE and
the rendezvous in its environment; `Ranks.from_env` reads them. One process is plain Python, with
no torchrun and no process group.

How ranks share the work (see `gptcore.train`):
- every rank draws the same global batch from the same seeded sampler and keeps its own rows
  (rank r of W takes rows r*B/W .. (r+1)*B/W - 1), so W processes see exactly the windows one
  process would, and the sampler state in a checkpoint is every rank's data position;
- DDP averages gradients, so a step equals one process's step on the global batch up to float
  rounding; all-reduce is skipped on all micro-batches but the last (`no_sync`);
- rank 0 alone writes checkpoints, DVCLive logs, metrics and the model file.
A failing rank exits non-zero, and torchrun then stops the others and fails the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gptcore.params import TrainParams


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank, rank on its node, and how many there are."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> Ranks:
        """torchrun's environment, or a single process when it is absent."""
        env = os.environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        world = int(env["WORLD_SIZE"])
        return cls(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=world,
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
        )

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of `batch_size`."""
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when its parent (torchrun's agent) dies.

    torchrun stops its workers when it is stopped, but a SIGKILLed agent gets no chance to: its
    workers would train on, orphaned, and race the next run for the checkpoint. Linux only."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        return  # best effort: without it, only the orphan case is unprotected
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def needs_torchrun(params: TrainParams) -> bool:
    """True when params ask for several processes and this one was not started by torchrun."""
    return params.world_size > 1 and "RANK" not in os.environ


def torchrun_argv(params: TrainParams, module: str) -> list[str]:
    """The torchrun command line that runs `python -m module` on this node's processes."""
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={params.nproc_per_node}"]
    if params.nnodes == 1:
        argv.append("--standalone")  # a private rendezvous on a free local port
    else:
        # static rendezvous: node k (torchrun reads PET_NODE_RANK=k from the environment) runs ranks
        # k*nproc .. (k+1)*nproc - 1, so node 0, where `dvc repro` runs, holds rank 0 and the outputs
        host, port = params.rdzv_endpoint.rsplit(":", 1)
        argv += [f"--nnodes={params.nnodes}", f"--master_addr={host}", f"--master_port={port}"]
    return [*argv, "-m", module]


@contextlib.contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[None]:
    """Join the run's process group for the block (NCCL on GPUs, gloo on CPU); a no-op alone."""
    if not ranks.distributed:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=ranks.rank, world_size=ranks.world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def mean_over_ranks(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The element-wise mean of `tensor` over all ranks (gloo has no AVG: a sum, then divided)."""
    if not ranks.distributed:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / ranks.world_size


def gather_to_all(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not ranks.distributed:
        return [value]
    values: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def from_main(value: Any, ranks: Ranks) -> Any:
    """Rank 0's `value`, on every rank."""
    if not ranks.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
