"""One training step: forward, loss and backward over the step's micro-batches, clip, optimizer step.

Pretraining (gptcore.train), the precision probe (gptcore.autotune), fine-tuning
(gptcore.finetune.loop) and benchmarks/train_speed.py all take their steps here, and pretraining and
the probe wrap their model the same way (gptcore.distributed.prepare), so what the probe times is
the step the run takes, gradient accumulation and the all-reduce or the sharded gathers included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

import torch
from torch.nn.parallel import DistributedDataParallel

from gptcore.device import autocast

Batch = TypeVar("Batch")


class Optimizer(Protocol):
    """A torch optimizer, or gptcore.optimizers.Optimizers (Muon and AdamW stepped as one)."""

    def step(self) -> object: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...


def lm_loss(
    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> Callable[[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The language-model loss of an (inputs, targets) batch, moved to `device`, under `forward`."""

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        _, loss = forward(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
        return loss

    return loss_of


def train_step(
    loss_of: Callable[[Batch], torch.Tensor],
    batches: Sequence[Batch],
    optimizer: Optimizer,
    clipped: Iterable[torch.Tensor],
    grad_clip: float,
    device: torch.device,
    dtype: torch.dtype | None = None,
    ddp: DistributedDataParallel | None = None,
    optimizer_step: Callable[[], object] | None = None,
) -> torch.Tensor:
    """One optimizer step over `batches`, the step's micro-batches: each one's loss (`loss_of`,
    under autocast to `dtype`) scaled by 1 / len(batches) and backpropagated, so the gradients are
    those of their mean; then the gradient norm of `clipped` clipped to `grad_clip` (0: not
    clipped), `optimizer_step` (default: `optimizer.step`) and the gradients dropped. With `ddp`
    (`loss_of` then runs through it) gradients are all-reduced once, on the last micro-batch's
    backward. Returns the mean loss, detached, without a host sync."""
    n = len(batches)
    total = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        # ddp all-reduces gradients once per step, on the last micro-batch's backward. fsdp
        # reduce-scatters on every micro-batch: skipping it would keep whole unsharded
        # gradients until the last one, the 4 bytes a parameter fsdp is there to remove
        sync = ddp.no_sync() if ddp is not None and i < n - 1 else contextlib.nullcontext()
        with sync:
            with autocast(device, dtype):
                loss = loss_of(batch)
            (loss / n).backward()
        total += loss.detach() / n
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(clipped, grad_clip)
    (optimizer_step or optimizer.step)()
    optimizer.zero_grad(set_to_none=True)
    return total
