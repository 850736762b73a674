"""The training loop: device and precision, AdamW groups, LR schedule, evaluation, logging,
checkpoints and exact resume.

`train()` is the one impure function: it owns the model, the optimizer and the clock. Everything
it calls is small and tested on its own.

Exact resume. Every `checkpoint_interval` steps the loop writes (atomically) what the next step
depends on: weights, optimizer moments, the step, every RNG state (torch's, the batch sampler's,
CUDA's, Python's and NumPy's), and the evaluations logged so far. A run started again with the
same train params and token files continues from there, and on CPU its weights and logged losses
are bit-identical to a run never stopped: batches come from the saved sampler state, dropout from
the saved torch state, and nothing else in a step is random. A checkpoint of other params or other
token data is never resumed; `resume_mismatch` says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from gptcore.checkpoint import load_checkpoint, save_checkpoint
from gptcore.distributed import (
    Ranks,
    from_main,
    full_model,
    full_state,
    gather_to_all,
    load_full_state,
    mean_over_ranks,
    process_group,
    shard_model,
)
from gptcore.errors import GptcoreError
from gptcore.memory import (
    MemoryPlan,
    checkpoint_blocks,
    device_memory,
    held_bytes,
    plan_memory,
    what_would_fit,
)
from gptcore.model import GPT, GPTConfig, flops_per_token
from gptcore.params import TrainParams
from gptcore.tokens import TokenStore


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is missing is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GptcoreError(f"train.device = {name!r} but no CUDA device is available (use auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GptcoreError("train.device = 'mps' but MPS is not available (use auto or cpu)")
    return torch.device(name)


def autocast_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """The autocast dtype for matmuls, or None for plain fp32. Master weights stay fp32.

    `auto` means bf16 on CUDA GPUs that support it, fp32 elsewhere: on the CPUs we measured
    (benchmarks/train_speed.py) bf16 autocast ran slower than fp32, as casting costs more than
    the matmuls save at these sizes.
    """
    if dtype == "float32":
        return None
    if dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def model_config(params: TrainParams, vocab_size: int) -> GPTConfig:
    """The model shape the train params describe, for a vocabulary of `vocab_size` ids."""
    return GPTConfig(
        vocab_size=vocab_size,
        block_size=params.block_size,
        n_layer=params.n_layer,
        n_head=params.n_head,
        n_embd=params.n_embd,
        dropout=params.dropout,
        bias=params.bias,
    )


def memory_plan(params: TrainParams, config: GPTConfig, device: torch.device) -> MemoryPlan:
    """The memory plan of this run on `device` (see gptcore.memory)."""
    available, where = device_memory(device, params.nproc_per_node)
    return plan_memory(
        config,
        params.batch_size,
        processes=params.world_size,
        parallel=params.parallel,
        bf16=autocast_dtype(device, params.dtype) is torch.bfloat16,
        checkpointing=params.activation_checkpointing,
        accumulating=params.grad_accum_steps > 1,
        available=available,
        where=where,
    )


def check_memory_plan(plan: MemoryPlan) -> None:
    """Stop before training when the plan does not fit, with the numbers and what would fit."""
    if plan.fits is False:
        raise GptcoreError(
            f"the memory plan does not fit: {plan.verdict()} with {plan.setting()}. "
            f"Change: {'; or '.join(what_would_fit(plan))} (see `gptcore info`)"
        )


def configure_optimizer(model: GPT, params: TrainParams, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (Linear weights, embeddings) and none on biases and gains."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decay = [p for p in named.values() if p.dim() >= 2]
    no_decay = [p for p in named.values() if p.dim() < 2]
    # every parameter in exactly one group: a silent miss here costs a whole run
    assert len(decay) + len(no_decay) == len(named)
    assert {id(p) for p in decay}.isdisjoint(id(p) for p in no_decay)
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # the fused kernel: one pass over each tensor for the whole update, on CUDA and on CPU
    # (benchmarks/train_speed.py: 1.03-1.09x the step of foreach AdamW on CPU)
    extra = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=params.learning_rate, betas=(params.beta1, params.beta2), **extra)


def lr_at(step: int, params: TrainParams) -> float:
    """Linear warmup to learning_rate over warmup_iters, then cosine decay to min_lr at max_iters."""
    if step < params.warmup_iters:
        return params.learning_rate * (step + 1) / params.warmup_iters
    span = max(1, params.max_iters - params.warmup_iters)
    progress = min(1.0, (step - params.warmup_iters) / span)
    return params.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (params.learning_rate - params.min_lr)


def fixed_batches(
    store: TokenStore, n: int, batch_size: int, block_size: int, seed: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same `n` batches at every evaluation, so successive losses are comparable."""
    gen = torch.Generator().manual_seed(seed)
    return [store.random_windows(batch_size, block_size, gen) for _ in range(n)]


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    dtype: torch.dtype | None,
) -> float:
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device)
    for x, y in batches:
        with autocast(device, dtype):
            _, loss = model(x.to(device), y.to(device))
        total += loss.float()
    model.train(was_training)
    return (total / len(batches)).item()


# --- throughput and model FLOP utilisation ------------------------------------------------------

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched against
# torch.cuda.get_device_name(); the first match wins, so the more specific names come first.
GPU_BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
)


def peak_flops(device: torch.device, dtype: torch.dtype | None) -> float | None:
    """The accelerator's peak FLOP/s for this precision, when known (bf16 on listed GPUs)."""
    if device.type != "cuda" or dtype is not torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in GPU_BF16_PEAKS if key in name), None)


def model_flops_utilization(
    flops_per_token: int, tokens_per_second: float, peak: float | None
) -> float | None:
    """MFU: the model FLOPs a second achieved, as a fraction of the hardware's peak (PaLM, app. B)."""
    return None if not peak else flops_per_token * tokens_per_second / peak


# --- checkpoints ---------------------------------------------------------------------------------

# train params that change neither the weights nor the logged curve: a checkpoint written under
# other values of these still continues the run (the process count too: every rank draws from the
# same sampler, so the data stream is the same for any number of processes; and how the processes
# hold the model: checkpoints are whole tensors in every mode, and recomputed activations are the
# same activations, so a run that ran out of memory may resume sharded or checkpointed)
RESUME_IGNORES = (
    "log_interval",
    "checkpoint_interval",
    "nproc_per_node",
    "nnodes",
    "rdzv_endpoint",
    "parallel",
    "activation_checkpointing",
)


def run_identity(params: TrainParams, train_store: TokenStore, val_store: TokenStore) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the train params and the token data."""
    values = {k: v for k, v in dataclasses.asdict(params).items() if k not in RESUME_IGNORES}
    return {
        "params": values,
        "data": {str(train_store.path): train_store.sha256(), str(val_store.path): val_store.sha256()},
    }


def resume_mismatch(saved: Any, current: dict[str, Any]) -> str | None:
    """Why a checkpoint's run is not this run (the params and data that differ), or None."""
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), dict) for k in ("params", "data")):
        return "it records no run identity"
    reasons = []
    old, new = saved["params"], current["params"]
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            reasons.append(f"train.{key} was {old.get(key)!r}, is {new.get(key)!r}")
    for path, digest in current["data"].items():
        if saved["data"].get(path) != digest:
            reasons.append(f"{path} has other tokens")
    return "; ".join(reasons) or None


def device_rng_state(device: torch.device) -> dict[str, Any]:
    """This process's own generators (dropout draws from them): torch's CPU one and CUDA's."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def rng_states(batch_gen: torch.Generator, per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Every random-number state a step can touch, as tensors and plain values; `per_rank` holds
    each rank's `device_rng_state`, the batch sampler is the same on every rank."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "ranks": per_rank,
        "batches": batch_gen.get_state(),
        "python": [version, list(mt), gauss],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }


def set_rng_states(
    states: dict[str, Any], batch_gen: torch.Generator, device: torch.device, rank: int
) -> None:
    """Restore `rng_states`; this rank's own generators only when it has a saved state."""
    if rank < len(states["ranks"]):
        own = states["ranks"][rank]
        torch.set_rng_state(own["torch"])
        if device.type == "cuda" and own["cuda"] is not None:
            torch.cuda.set_rng_state(own["cuda"], device)
    batch_gen.set_state(states["batches"])
    version, mt, gauss = states["python"]
    random.setstate((version, tuple(mt), gauss))
    keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))


class NonFiniteLossError(GptcoreError):
    """The loss or the weights became NaN or infinite: training cannot go on from here."""


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    model: GPT
    steps: int
    tokens_seen: int
    wall_seconds: float  # all segments of the run, when it was resumed
    tokens_per_second: float  # optimizer-step throughput, evaluation time excluded
    final_train_loss: float
    final_val_loss: float
    flops_per_token: int
    mfu: float | None  # None where the device's peak is unknown (CPU, unlisted GPUs)
    peak_memory_bytes: int | None  # CUDA only
    resumed_from: int | None  # the step the run continued from, None when it started fresh


# (step, metrics) at each evaluation: "train/loss", "val/loss", "lr", and from the second
# evaluation on "perf/tokens_per_second" (plus "perf/mfu" and "perf/peak_memory_gib" on CUDA)
EvalCallback = Callable[[int, dict[str, float]], None]


def _say(message: str) -> None:
    tqdm.write(f"train: {message}")


class _Loop:
    """One training run's state; `train()` drives it."""

    def __init__(
        self,
        params: TrainParams,
        train_store: TokenStore,
        val_store: TokenStore,
        ranks: Ranks,
        device: torch.device,
    ) -> None:
        self.p = params
        self.train_store = train_store
        self.ranks = ranks
        self.device = device
        self.dtype = autocast_dtype(self.device, params.dtype)
        torch.manual_seed(params.seed)
        self.config = model_config(params, train_store.vocab_size)
        self.model = GPT(self.config).to(self.device)
        self.flops_per_token = flops_per_token(self.config, self.model.num_params())
        if params.activation_checkpointing:
            checkpoint_blocks(self.model)
        # fsdp shards the weights in place, before the optimizer sees them: its moments are sharded too
        self.sharded = params.parallel == "fsdp" and ranks.distributed
        if self.sharded:
            shard_model(self.model, device, ranks, bf16=self.dtype is torch.bfloat16)
        if ranks.rank:
            torch.manual_seed(params.seed + ranks.rank)  # each rank its own dropout masks
        self.optimizer = configure_optimizer(self.model, params, self.device)
        self.fwd = torch.compile(self.model) if params.compile else self.model
        # ddp training goes through DDP, which averages gradients over ranks; evaluation does not
        self.ddp: DistributedDataParallel | None = None
        if ranks.distributed and not self.sharded:
            ids = [device.index] if device.type == "cuda" else None
            # gradients as views of the all-reduce buckets: one copy of them, not two
            self.ddp = DistributedDataParallel(self.fwd, device_ids=ids, gradient_as_bucket_view=True)
        self.peak = peak_flops(self.device, self.dtype)
        self.batch_gen = torch.Generator().manual_seed(params.seed)
        self.rows = ranks.rows(params.batch_size)
        self.eval_sets = {
            name: [
                (x[self.rows], y[self.rows])
                for x, y in fixed_batches(
                    store, params.eval_iters, params.batch_size, params.block_size, params.seed + 1
                )
            ]
            for name, store in (("train", train_store), ("val", val_store))
        }
        self.tokens_per_step = params.batch_size * params.block_size * params.grad_accum_steps
        # carried across segments of a resumed run
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.wall_seconds = 0.0
        # per-step losses not yet checked on the host: (step, loss tensor)
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.last_checkpoint: tuple[Path, int] | None = None

    # checkpoints

    def whole_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's and optimizer's state dicts with whole tensors, whatever the parallel mode,
        so that any number of processes in either mode resumes them. Under fsdp every rank takes
        part in gathering the shards and rank 0 keeps the result (on the CPU)."""
        if self.sharded:
            return full_state(self.model, self.optimizer, self.ranks)
        return self.model.state_dict(), self.optimizer.state_dict()

    def state(
        self,
        identity: dict[str, Any],
        per_rank_rng: list[dict[str, Any]],
        whole: tuple[dict[str, Any], dict[str, Any]],
    ) -> dict[str, Any]:
        return {
            "run": identity,
            "step": self.step,
            "model": whole[0],
            "optimizer": whole[1],
            "rng": rng_states(self.batch_gen, per_rank_rng),
            "history": self.history,
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        if self.sharded:
            load_full_state(self.model, self.optimizer, saved["model"], saved["optimizer"])
        else:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
        set_rng_states(saved["rng"], self.batch_gen, self.device, self.ranks.rank)
        self.step = int(saved["step"])
        self.history = [dict(record) for record in saved["history"]]
        self.train_seconds = float(saved["train_seconds"])
        self.wall_seconds = float(saved["wall_seconds"])

    # numerics

    def fail(self, what: str, step: int) -> NonFiniteLossError:
        if self.last_checkpoint:
            path, at = self.last_checkpoint
            kept = f"the last good checkpoint, {path} (step {at}), is kept"
        else:
            kept = "no checkpoint was written before it"
        return NonFiniteLossError(
            f"{what} at step {step}: {kept}. Lower train.learning_rate, raise train.warmup_iters "
            "or set train.grad_clip, then run again"
        )

    def check_pending(self) -> float | None:
        """Check the losses since the last check (one host sync); their mean, or None if none."""
        if not self.pending:
            return None
        losses = mean_over_ranks(torch.stack([loss for _, loss in self.pending]), self.ranks).cpu()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise self.fail(f"the train loss became {losses[i].item()}", self.pending[i][0])
        self.pending.clear()
        return losses.mean().item()

    def check_weights(self) -> None:
        local = [p.to_local() if self.sharded else p for p in self.model.parameters()]
        finite = torch.stack([torch.isfinite(p).all() for p in local]).all().float()
        if mean_over_ranks(finite, self.ranks).item() < 1:  # every rank checks its shards
            raise self.fail("the weights became non-finite", self.step)

    # the work

    def evaluate(self, tokens_per_second: float | None) -> dict[str, float]:
        losses = {
            s: estimate_loss(self.fwd, self.eval_sets[s], self.device, self.dtype) for s in ("train", "val")
        }
        if self.ranks.distributed:  # each rank scored its rows of the same batches
            both = mean_over_ranks(
                torch.tensor([losses["train"], losses["val"]], device=self.device), self.ranks
            )
            losses = {"train": both[0].item(), "val": both[1].item()}
        for split, value in losses.items():
            if not math.isfinite(value):
                raise self.fail(f"the {split} loss estimate became {value}", self.step)
        record = {"train/loss": losses["train"], "val/loss": losses["val"], "lr": lr_at(self.step, self.p)}
        if tokens_per_second is not None:
            record["perf/tokens_per_second"] = tokens_per_second
            mfu = model_flops_utilization(self.flops_per_token, tokens_per_second, self.peak)
            if mfu is not None:
                record["perf/mfu"] = mfu
            if self.device.type == "cuda":
                record["perf/peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return record

    def train_step(self) -> None:
        p = self.p
        lr = lr_at(self.step, p)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        forward = self.ddp or self.fwd
        for micro in range(p.grad_accum_steps):
            # every rank draws the whole global batch, so the sampler stays the same on all of them
            x, y = self.train_store.random_windows(p.batch_size, p.block_size, self.batch_gen)
            x, y = x[self.rows], y[self.rows]
            last = micro == p.grad_accum_steps - 1
            # ddp all-reduces gradients once per step, on the last micro-batch's backward. fsdp
            # reduce-scatters on every micro-batch: skipping it would keep whole unsharded
            # gradients until the last one, the 4 bytes a parameter fsdp is there to remove
            sync = self.ddp.no_sync() if self.ddp and not last else contextlib.nullcontext()
            with sync:
                with autocast(self.device, self.dtype):
                    _, loss = forward(
                        x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                    )
                (loss / p.grad_accum_steps).backward()
            total += loss.detach() / p.grad_accum_steps
        if p.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), p.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending.append((self.step, total))
        self.step += 1


class _Clock:
    """Seconds since the run (segment) started, and the part of them spent training: evaluation
    and checkpoint writes run `paused`. On CUDA it waits for queued work before reading the time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = time.perf_counter()
        self.paused_seconds = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def wall(self) -> float:
        return self._now() - self.start

    def training(self) -> float:
        return self._now() - self.start - self.paused_seconds

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        began = self._now()
        try:
            yield
        finally:
            self.paused_seconds += self._now() - began


def train(
    params: TrainParams,
    train_store: TokenStore,
    val_store: TokenStore,
    on_eval: EvalCallback | None = None,
    progress: bool = True,
    checkpoint: Path | None = None,
    ranks: Ranks | None = None,
) -> TrainResult:
    """Train a GPT on the token stores, writing a resumable checkpoint to `checkpoint` every
    train.checkpoint_interval steps (0: never) and continuing from it when it holds this run's; `on_eval` receives every evaluation of the run, earlier segments' first.

    Under torchrun pass `ranks` (`Ranks.from_env()`): this process then trains its share of each
    batch in the run's process group, and only rank 0 writes the checkpoint; give `on_eval` on
    rank 0 only. Every rank returns the same trained model."""
    ranks = ranks or Ranks()
    device = resolve_device(params.device)
    if device.type == "cuda" and ranks.distributed:
        device = torch.device("cuda", ranks.local_rank)
    threads = params.threads
    if not threads and ranks.local_world_size > 1:  # the node's cores, shared among its processes
        threads = max(1, (os.cpu_count() or 1) // ranks.local_world_size)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cpu":
        # compiled CPU kernels may otherwise reduce in a run-dependent order; eager CPU ops
        # are deterministic already. Measured cost: none (7,730 vs 7,917 tokens/s, within noise).
        torch.use_deterministic_algorithms(True)
    for name, store in (("train", train_store), ("val", val_store)):
        if len(store) <= params.block_size:
            raise GptcoreError(
                f"the {name} split has {len(store)} tokens, fewer than train.block_size + 1 "
                f"({params.block_size + 1}): use more data or a smaller block_size"
            )
    # the plan comes before anything is allocated: a run that cannot fit stops here, not at step 0
    plan = memory_plan(params, model_config(params, train_store.vocab_size), device)
    if ranks.is_main:
        for label, value in plan.rows():
            _say(f"{label.strip()}: {value}")
    check_memory_plan(plan)
    with process_group(ranks, device):
        return _train(plan, params, train_store, val_store, on_eval, progress, checkpoint, ranks, device)


def _resume(loop: _Loop, path: Path, identity: dict[str, Any]) -> int | None:
    """Continue from the checkpoint if it is this run's (rank 0 decides for all); the step, or None."""
    ranks = loop.ranks
    saved, why = None, None
    if ranks.is_main and path.exists():
        saved = load_checkpoint(path)
        why = resume_mismatch(saved.get("run"), identity)
        if why:
            _say(f"not resuming {path}: it is from another run ({why}); starting fresh")
    resume = from_main(saved is not None and why is None, ranks)
    if not resume:
        return None
    if not ranks.is_main:
        if not path.exists():
            raise GptcoreError(
                f"rank {ranks.rank} cannot see {path}, which rank 0 resumes from: every node needs "
                "the same models/ folder (a shared filesystem), or delete the checkpoint to start fresh"
            )
        saved = load_checkpoint(path)
    assert saved is not None
    loop.restore(saved)
    loop.last_checkpoint = (path, loop.step)
    if ranks.is_main:
        _say(f"resuming from {path} at step {loop.step} of {loop.p.max_iters}")
        writers = len(saved["rng"]["ranks"])
        if writers != ranks.world_size:
            _say(
                f"the checkpoint was written by {writers} processes, this run has {ranks.world_size}: "
                "the data stream continues exactly, dropout draws do not"
            )
    return loop.step


def report_memory(loop: _Loop, plan: MemoryPlan, first: bool) -> None:
    """After the first step: the parameter and optimizer bytes this process holds, measured. After
    the first few on CUDA: the plan beside what the allocator's peak was."""
    if first:
        params, state = held_bytes(loop.model, loop.optimizer)
        if loop.ranks.is_main:
            _say(f"held by this process: {params:,} bytes of parameters, {state:,} of optimizer state")
        return
    if loop.device.type == "cuda" and loop.ranks.is_main:
        peak = torch.cuda.max_memory_allocated(loop.device)
        _say(
            f"memory plan {plan.total / 2**30:.2f} GiB, CUDA peak allocated {peak / 2**30:.2f} GiB "
            f"after {loop.step} steps: the plan is off by {(plan.total - peak) / 2**30:+.2f} GiB "
            f"({(plan.total - peak) / peak:+.0%})"
        )


def _train(
    plan: MemoryPlan,
    params: TrainParams,
    train_store: TokenStore,
    val_store: TokenStore,
    on_eval: EvalCallback | None,
    progress: bool,
    checkpoint: Path | None,
    ranks: Ranks,
    device: torch.device,
) -> TrainResult:
    loop = _Loop(params, train_store, val_store, ranks, device)
    identity = run_identity(params, train_store, val_store) if checkpoint else {}
    resumed_from = _resume(loop, checkpoint, identity) if checkpoint else None
    if on_eval:
        for record in loop.history:
            on_eval(int(record["step"]), {k: v for k, v in record.items() if k != "step"})

    clock = _Clock(loop.device)
    # throughput window: steps and training seconds since the last evaluation
    window = {"steps": 0, "since": 0.0}

    def evaluate_and_log() -> dict[str, float]:
        elapsed = clock.training() - window["since"]
        tokens_per_second = window["steps"] * loop.tokens_per_step / elapsed if window["steps"] else None
        with clock.paused():
            metrics = loop.evaluate(tokens_per_second)
            loop.history.append({"step": loop.step, **metrics})
            if on_eval:
                on_eval(loop.step, metrics)
        window.update(steps=0, since=clock.training())
        return metrics

    def save_checkpoint_now(path: Path) -> None:
        with clock.paused():
            loop.check_pending()
            loop.check_weights()
            per_rank_rng = gather_to_all(device_rng_state(loop.device), ranks)
            whole = loop.whole_state()
            if ranks.is_main:
                state = loop.state(identity, per_rank_rng, whole)
                state["train_seconds"] += clock.training()
                state["wall_seconds"] += clock.wall()
                save_checkpoint(path, state)
            loop.last_checkpoint = (path, loop.step)

    resumed_at = loop.step
    loop.model.train()
    bar = tqdm(
        total=params.max_iters,
        initial=loop.step,
        desc="train",
        unit="step",
        disable=not (progress and ranks.is_main),
    )
    while loop.step < params.max_iters:
        if loop.step % params.eval_interval == 0:
            evaluate_and_log()
        loop.train_step()
        window["steps"] += 1
        if loop.step == resumed_at + 1 or loop.step == min(resumed_at + 3, params.max_iters):
            with clock.paused():
                report_memory(loop, plan, first=loop.step == resumed_at + 1)
        bar.update(1)
        if loop.step % params.log_interval == 0:
            mean_loss = loop.check_pending()  # the only host sync in the hot loop
            rate = window["steps"] * loop.tokens_per_step / max(clock.training() - window["since"], 1e-9)
            bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{rate:,.0f}")
        if checkpoint and params.checkpoint_interval and loop.step % params.checkpoint_interval == 0:
            save_checkpoint_now(checkpoint)
    loop.check_pending()
    final = evaluate_and_log()
    bar.close()
    train_seconds = loop.train_seconds + clock.training()
    tokens_seen = params.max_iters * loop.tokens_per_step
    tokens_per_second = tokens_seen / train_seconds if train_seconds > 0 else 0.0
    return TrainResult(
        model=full_model(loop.model, loop.config) if loop.sharded else loop.model,
        steps=params.max_iters,
        tokens_seen=tokens_seen,
        wall_seconds=loop.wall_seconds + clock.wall(),
        tokens_per_second=tokens_per_second,
        final_train_loss=final["train/loss"],
        final_val_loss=final["val/loss"],
        flops_per_token=loop.flops_per_token,
        mfu=model_flops_utilization(loop.flops_per_token, tokens_per_second, loop.peak),
        peak_memory_bytes=torch.cuda.max_memory_allocated(loop.device)
        if loop.device.type == "cuda"
        else None,
        resumed_from=resumed_from,
    )
