"""Held-out metrics: loss over a whole token split, perplexity, and bits per byte.

Bits per byte = total nats over the scored tokens / ln 2 / UTF-8 bytes of the text they encode.
Unlike loss per token it does not depend on the tokenizer, so a char model and a BPE model can be
compared on it directly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptcore.data.token_store import TokenStore
from gptcore.device import autocast
from gptcore.errors import DataError


@dataclass(frozen=True)
class SplitLoss:
    """What scoring a set of windows found: total nats over the tokens scored and, where known,
    the UTF-8 bytes of the text those tokens encode."""

    nats: float  # summed cross-entropy over every scored token
    tokens: int  # tokens scored
    n_bytes: float | None = None  # bytes of text the scored tokens cover (None: not known)

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float | None:
        return None if self.n_bytes is None else self.nats / math.log(2) / self.n_bytes


def seeded_batches(
    store: TokenStore, n_batches: int, batch_size: int, block_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`n_batches` batches of random windows drawn by a generator of its own seeded with `seed`:
    the same batches every time, whatever else has drawn random numbers."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        yield store.random_windows(batch_size, block_size, gen)


@torch.no_grad()
def score_batches(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> SplitLoss:
    """Sum the next-token cross-entropy over every target of every (x, y) batch of windows, in
    eval mode (the model's mode is restored after); autocast to `dtype` when given."""
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast(device, dtype):
            logits, _ = model(x)
        nats += F.cross_entropy(
            logits.float().view(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
        ).double()
        tokens += y.numel()
    model.train(was_training)
    return SplitLoss(nats=nats.item(), tokens=tokens)


def evaluate_split(
    model: torch.nn.Module,
    store: TokenStore,
    *,
    block_size: int,
    batch_size: int,
    max_tokens: int,
    device: torch.device,
) -> SplitLoss:
    """Score every token of `store` (or its first `max_tokens`), with the bytes they cover.

    When only a prefix is scored, its bytes are taken pro rata from the split's total bytes.
    """
    if store.source_bytes is None:
        raise DataError(f"{store.path} does not record its source bytes: re-run the tokenize stage")
    result = score_batches(model, store.sequential_windows(block_size, max_tokens, batch_size), device)
    n_bytes = store.source_bytes * result.tokens / max(1, len(store) - 1)
    return dataclasses.replace(result, n_bytes=n_bytes)


def evaluate_sample(
    model: torch.nn.Module,
    store: TokenStore,
    *,
    block_size: int,
    batch_size: int,
    n_tokens: int,
    seed: int,
    device: torch.device,
) -> SplitLoss:
    """Loss on a fixed random sample of about `n_tokens` tokens (whole batches of windows) of `store`."""
    n_batches = max(1, n_tokens // (block_size * batch_size))
    return score_batches(model, seeded_batches(store, n_batches, batch_size, block_size, seed), device)
