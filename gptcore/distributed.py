"""Data-parallel training across processes: PyTorch DDP or FSDP2, launched by torchrun.

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

With `train.parallel: fsdp` (`shard_model`) each block, then the whole model, is wrapped with
FSDP2's `fully_shard`: every process keeps 1/W of each weight, gradient and AdamW moment, gathers
a block's weights just before computing it and frees them after, and reduce-scatters its
gradients. The arithmetic of a step is DDP's (the same global batch, gradients averaged), so the
loss curve is one process's up to float rounding. A checkpoint is consolidated (`full_state`):
whole tensors in the layout of a one-process run, so a run of any process count, in either mode,
resumes it, and `models/model.pt` is the same plain model file in every mode. The cost is that
rank 0 holds a whole copy of weights and moments in host memory while it writes one.
A failing rank exits non-zero, and torchrun then stops the others and fails the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel

from gptcore.memory import blocks, checkpoint_blocks
from gptcore.model import GPT, GPTConfig
from gptcore.optimizers import Optimizers, configure_optimizer
from gptcore.params import TrainParams

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


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


# --- the model as training wraps it ----------------------------------------------------------------


@dataclass
class Prepared:
    """A model made ready to train, as `prepare` leaves it."""

    model: nn.Module  # the module itself: its parameters, state dict and (fsdp) shards
    optimizer: Optimizers
    forward: nn.Module  # the model, compiled where asked: what evaluation calls
    ddp: DistributedDataParallel | None  # ddp over several processes: what training calls
    sharded: bool  # fsdp over several processes

    @property
    def train_forward(self) -> nn.Module:
        return self.ddp or self.forward


def prepare(
    model: nn.Module,
    params: TrainParams,
    device: torch.device,
    ranks: Ranks,
    dtype: torch.dtype | None,
    compile: bool,
    before_optimizer: Callable[[], object] | None = None,
) -> Prepared:
    """Wrap `model` (on `device`) for training under `params`: its blocks recompute activations
    with train.activation_checkpointing; over several processes, fsdp shards it in place before
    the optimizer sees it (its moments are sharded too), ddp wraps the (compiled) forward, which
    then averages gradients over ranks. `before_optimizer` runs just before the optimizer is
    built (training seeds each rank's dropout there)."""
    if params.activation_checkpointing:
        checkpoint_blocks(model)
    sharded = params.parallel == "fsdp" and ranks.distributed
    if sharded:
        shard_model(model, device, ranks, bf16=dtype is torch.bfloat16)
    if before_optimizer is not None:
        before_optimizer()
    optimizer = configure_optimizer(model, params, device)
    # a compiled module is a module (OptimizedModule), though torch.compile's stubs say a callable
    forward = cast(nn.Module, torch.compile(model)) if compile else model
    ddp = None
    if ranks.distributed and not sharded:
        ids = [device.index] if device.type == "cuda" else None
        # gradients as views of the all-reduce buckets: one copy of them, not two
        ddp = DistributedDataParallel(forward, device_ids=ids, gradient_as_bucket_view=True)
    return Prepared(model, optimizer, forward, ddp, sharded)


# --- FSDP2 ---------------------------------------------------------------------------------------
# torch.distributed.fsdp and .tensor are imported where a model is sharded, not with this module:
# they take longer to import than torch itself, and every training process and every `gptcore`
# command imports this module while few shard.


def _is_dtensor(value: object) -> TypeGuard[DTensor]:
    """Whether `value` is a DTensor, without importing torch.distributed.tensor: if nothing has
    imported it, no DTensor exists."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, module.DTensor)


def shard_model(model: nn.Module, device: torch.device, ranks: Ranks, bf16: bool) -> None:
    """Shard `model` in place over all processes: each block is its own FSDP unit (gathered for its
    compute only), the root holds the rest (embeddings, final norm, the tied head).

    With bf16 the gathered weights are cast to bf16 for compute and gradients are reduced in
    fp32, PyTorch's recommended mixed-precision policy; the masters and moments stay fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (ranks.world_size,))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    for block in blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def _gathered(value: Any, keep: bool) -> Any:
    """`value` with every DTensor in it gathered whole (a collective: every rank calls it, in the
    same order), on the CPU where `keep`, else dropped as soon as it is gathered."""
    if _is_dtensor(value):
        whole = value.full_tensor()
        return whole.cpu() if keep else None
    if isinstance(value, dict):
        return {k: _gathered(v, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [_gathered(v, keep) for v in value]
    return value


def full_state(model: nn.Module, optimizer: Any, ranks: Ranks) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sharded model's and optimizer's state dicts with whole tensors, as one process would
    have them; complete on rank 0 (the others gather and drop)."""
    keep = ranks.is_main
    return _gathered(model.state_dict(), keep), _gathered(optimizer.state_dict(), keep)


def _shard_like(whole: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`whole` cut as `param` is sharded: every rank holds `whole`, so no data moves."""
    if not _is_dtensor(param):
        return whole.to(param.device)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def load_full_state(
    model: nn.Module,
    optimizer: Any,
    model_state: dict[str, Any],
    optimizer_state: dict[str, Any],
) -> None:
    """Load a consolidated checkpoint (`full_state`, or a one-process run's) into a sharded model
    and its optimizer (a torch optimizer, or gptcore.optimizers.Optimizers, whose state is one
    torch optimizer's per name): each rank keeps its shard of every tensor."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if _is_dtensor(param):
                param.to_local().copy_(cast("DTensor", _shard_like(model_state[name], param)).to_local())
            else:
                param.copy_(model_state[name])
    parts = getattr(optimizer, "optimizers", None)
    if parts is None:
        optimizer.load_state_dict(_sharded_optimizer_state(optimizer, optimizer_state))
    else:
        optimizer.load_state_dict(
            {name: _sharded_optimizer_state(part, optimizer_state[name]) for name, part in parts.items()}
        )


def _sharded_optimizer_state(optimizer: torch.optim.Optimizer, whole: dict[str, Any]) -> dict[str, Any]:
    """One torch optimizer's consolidated state dict cut as its parameters are sharded."""
    # the optimizer's state is keyed by each parameter's position in its groups
    params = [p for group in optimizer.param_groups for p in group["params"]]
    sharded = dict(whole)
    sharded["state"] = {
        index: {
            key: _shard_like(value, params[index])
            if isinstance(value, torch.Tensor) and value.shape == params[index].shape
            else value
            for key, value in per_param.items()
        }
        for index, per_param in whole["state"].items()
    }
    return sharded


def full_model(model: nn.Module, config: GPTConfig) -> GPT:
    """A plain, unsharded copy of a sharded model, on the CPU, on every rank."""
    gathered = {
        name: t.full_tensor().cpu() if _is_dtensor(t) else t.cpu() for name, t in model.state_dict().items()
    }
    plain = GPT(config)
    plain.load_state_dict(gathered)
    return plain
