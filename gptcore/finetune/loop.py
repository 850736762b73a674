"""The fine-tuning loop the classifier and the instruction model share.

AdamW over the parameters that require gradients (decay on matrices only, as in pretraining), a
constant learning rate (the book's recipe: fine-tuning runs are a few epochs, too short for a
schedule to matter), gradient clipping, epochs of batches in a seeded random order, and an
evaluation at step 0, every `eval_interval` steps and at the end. A step is pretraining's
(gptcore.step.train_step), one micro-batch, in fp32. What a batch's loss is and what
an evaluation measures are the caller's: `loss_on` and `evaluate`. Each evaluation also logs
perf/wall_seconds, the run's seconds so far: a measurement, which the stages keep apart from
their outputs (gptcore.reports.Telemetry).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from gptcore.errors import GptcoreError
from gptcore.params import FinetuneParams
from gptcore.step import train_step


@dataclass
class FinetuneResult:
    steps: int
    examples: int  # examples seen, counting repeats over epochs
    wall_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def make_optimizer(model: nn.Module, params: FinetuneParams, device: torch.device) -> torch.optim.AdamW:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise GptcoreError("nothing to train: every parameter is frozen")
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": params.weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    extra: dict[str, Any] = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=params.learning_rate, **extra)


def fine_tune(
    model: nn.Module,
    params: FinetuneParams,
    n_train: int,
    loss_on: Callable[[list[int]], torch.Tensor],
    evaluate: Callable[[], dict[str, float]],
    device: torch.device,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = False,
) -> FinetuneResult:
    """Train `model` on examples 0..n_train-1 (`loss_on(indices)` gives a batch's mean loss)."""
    if n_train == 0:
        raise GptcoreError("no training examples")
    optimizer = make_optimizer(model, params, device)
    order_gen = torch.Generator().manual_seed(params.seed)
    total = params.epochs * math.ceil(n_train / params.batch_size)
    result = FinetuneResult(steps=0, examples=0, wall_seconds=0.0)
    start = time.perf_counter()

    def log(step: int, train_loss: float | None) -> None:
        model.eval()
        metrics = evaluate()
        model.train()
        if train_loss is not None:
            metrics = {"train/loss": train_loss, **metrics}
        metrics = {**metrics, "perf/wall_seconds": time.perf_counter() - start}
        result.history.append({"step": step, **metrics})
        if on_eval is not None:
            on_eval(step, metrics)

    def checked_loss(batch: list[int]) -> torch.Tensor:
        loss = loss_on(batch)
        if not torch.isfinite(loss):
            raise GptcoreError(f"the fine-tuning loss became {loss.item()} at step {result.steps + 1}")
        return loss

    log(0, None)
    model.train()
    bar = tqdm(total=total, desc="fine-tune", unit="step", disable=not progress)
    recent: list[float] = []
    for _ in range(params.epochs):
        order = torch.randperm(n_train, generator=order_gen).tolist()
        for first in range(0, n_train, params.batch_size):
            batch = order[first : first + params.batch_size]
            loss = train_step(
                checked_loss,
                [batch],
                optimizer,
                [p for p in model.parameters() if p.requires_grad],
                params.grad_clip,
                device,
            )
            result.steps += 1
            result.examples += len(batch)
            recent.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{recent[-1]:.4f}", refresh=False)
            if result.steps % params.eval_interval == 0 or result.steps == total:
                log(result.steps, sum(recent) / len(recent))
                recent = []
    bar.close()
    model.eval()
    result.wall_seconds = time.perf_counter() - start
    return result


def set_threads(threads: int) -> None:
    """torch's CPU threads: `threads`, or all cores for 0 (torch's own default)."""
    if threads > 0:
        torch.set_num_threads(threads)
