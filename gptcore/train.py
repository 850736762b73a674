"""The training loop: device and precision, AdamW groups, LR schedule, evaluation, logging.

`train()` is the one impure function: it owns the model, the optimizer and the clock. Everything
it calls is small and tested on its own.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from gptcore.errors import GptcoreError
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
    extra = {"fused": True} if device.type == "cuda" else {"foreach": True}
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


@dataclass
class TrainResult:
    model: GPT
    steps: int
    tokens_seen: int
    wall_seconds: float
    tokens_per_second: float  # optimizer-step throughput, evaluation time excluded
    final_train_loss: float
    final_val_loss: float
    flops_per_token: int


# (step, train_loss, val_loss, lr) at each evaluation
EvalCallback = Callable[[int, float, float, float], None]


def train(
    params: TrainParams,
    train_store: TokenStore,
    val_store: TokenStore,
    on_eval: EvalCallback | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a fresh GPT on the token stores; `on_eval` receives each loss estimate."""
    if params.threads:
        torch.set_num_threads(params.threads)
    device = resolve_device(params.device)
    dtype = autocast_dtype(device, params.dtype)
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

    torch.manual_seed(params.seed)
    config = GPTConfig(
        vocab_size=train_store.vocab_size,
        block_size=params.block_size,
        n_layer=params.n_layer,
        n_head=params.n_head,
        n_embd=params.n_embd,
        dropout=params.dropout,
        bias=params.bias,
    )
    model = GPT(config).to(device)
    optimizer = configure_optimizer(model, params, device)
    fwd = torch.compile(model) if params.compile else model
    fpt = flops_per_token(config, model.num_params())

    batch_gen = torch.Generator().manual_seed(params.seed)
    eval_sets = {
        name: fixed_batches(store, params.eval_iters, params.batch_size, params.block_size, params.seed + 1)
        for name, store in (("train", train_store), ("val", val_store))
    }
    tokens_per_step = params.batch_size * params.block_size * params.grad_accum_steps

    def evaluate_now(step: int, lr: float) -> tuple[float, float]:
        losses = [estimate_loss(fwd, eval_sets[s], device, dtype) for s in ("train", "val")]
        if not all(math.isfinite(v) for v in losses):
            raise GptcoreError(
                f"loss became non-finite at step {step} (train {losses[0]}, val {losses[1]}); "
                "lower train.learning_rate or raise train.warmup_iters"
            )
        if on_eval:
            on_eval(step, losses[0], losses[1], lr)
        return losses[0], losses[1]

    model.train()
    bar = tqdm(total=params.max_iters, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    window_start, window_steps = start, 0
    eval_seconds = 0.0
    running = torch.zeros((), device=device)
    train_loss = val_loss = float("nan")
    for step in range(params.max_iters):
        if step % params.eval_interval == 0:
            t0 = time.perf_counter()
            train_loss, val_loss = evaluate_now(step, lr_at(step, params))
            window_start, window_steps = time.perf_counter(), 0
            eval_seconds += window_start - t0
        lr = lr_at(step, params)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for _ in range(params.grad_accum_steps):
            x, y = train_store.random_windows(params.batch_size, params.block_size, batch_gen)
            with autocast(device, dtype):
                _, loss = fwd(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
            (loss / params.grad_accum_steps).backward()
            running += loss.detach() / params.grad_accum_steps
        if params.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window_steps += 1
        bar.update(1)
        if (step + 1) % params.log_interval == 0:
            # the only host sync in the hot loop: once per log_interval steps
            mean_loss = (running / params.log_interval).item()
            running.zero_()
            elapsed = time.perf_counter() - window_start
            bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{window_steps * tokens_per_step / elapsed:,.0f}")
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - start - eval_seconds
    train_loss, val_loss = evaluate_now(params.max_iters, lr_at(params.max_iters, params))
    wall = time.perf_counter() - start
    bar.close()
    tokens_seen = params.max_iters * tokens_per_step
    return TrainResult(
        model=model,
        steps=params.max_iters,
        tokens_seen=tokens_seen,
        wall_seconds=wall,
        tokens_per_second=tokens_seen / train_seconds,
        final_train_loss=train_loss,
        final_val_loss=val_loss,
        flops_per_token=fpt,
    )
