"""Log-likelihoods of benchmark continuations, computed as lm-evaluation-harness computes them, in
fewer forward passes.

Encoding follows the harness's Hugging Face backend, so that both score the same tokens: spaces at
the end of a context move to the start of its continuation; the continuation's tokens are those
of `context + continuation` after the context's own (an empty context is the <|endoftext|> token);
no BOS is added. The model sees `(context + continuation)[-(block_size + 1):][:-1]`: a context too
long for the block is cut from the left, and the item is counted as truncated. A continuation
longer than the whole block is scored on its last block_size tokens.

Speed. An item's choices usually share their context (HellaSwag's four endings follow one
sentence). The context is run once, its keys and values kept (gptcore.model.KVCache), and all the
choices' continuations then run together over that cache: the context's tokens are computed once,
not once per choice. Items are batched by context length (equal lengths need no padding, so
every row of a batch attends exactly to its own tokens), continuations padded at the right (a
causal model's earlier positions never see the padding). A choice whose context is its own
(Winogrande's) or that must be cut to fit (each choice is cut at its own place, so nothing is
shared) is scored as one sequence, batched with others of the same length: a choice cut to the
block costs what it costs the harness.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptcore.benchmark.suite import Item
from gptcore.device import autocast
from gptcore.model import GPT, KVCache
from gptcore.tokenizer import Tokenizer


@dataclass(frozen=True)
class Scores:
    """One item's figures: per request, the summed log-likelihood (nats) of its continuation,
    whether greedy decoding would have produced it, and its token count."""

    loglikelihoods: tuple[float, ...]
    greedy: tuple[bool, ...]
    tokens: tuple[int, ...]
    truncated: bool  # a request's context was cut to fit the block
    unknown: bool  # the text holds characters the vocabulary encodes as <|unk|>


def encode_request(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as the harness's Hugging Face backend splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        return [tokenizer.eot_id], tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx) :]


@dataclass
class _Group:
    """Requests scored over one shared prefix: (item, request, continuation tokens) each."""

    prefix: tuple[int, ...]
    members: list[tuple[int, int, list[int]]]


def _groups(
    tokenizer: Tokenizer, items: Sequence[Item], block_size: int
) -> tuple[list[_Group], list[bool], list[list[int]]]:
    """The items' requests as prefix groups, which items were truncated, and each request's token
    count (a request with no continuation tokens is in no group: its log-likelihood is 0)."""
    groups: list[_Group] = []
    truncated = [False] * len(items)
    counts: list[list[int]] = []
    for i, item in enumerate(items):
        shared: dict[tuple[int, ...], _Group] = {}
        counts.append([])
        for r, (context, continuation) in enumerate(item.requests):
            ctx, cont = encode_request(tokenizer, context, continuation)
            if len(cont) > block_size:  # only the last block_size tokens can be scored
                ctx, cont = cont[-block_size - 1 : -block_size], cont[-block_size:]
                truncated[i] = True
            counts[-1].append(len(cont))
            if not cont:
                continue
            if len(ctx) + len(cont) > block_size + 1:  # the harness's left cut, this request alone
                ctx = ctx[len(ctx) + len(cont) - block_size - 1 :]
                truncated[i] = True
                groups.append(_Group(tuple(ctx), [(i, r, cont)]))
                continue
            key = tuple(ctx)
            if key not in shared:
                shared[key] = _Group(key, [])
                groups.append(shared[key])
            shared[key].members.append((i, r, cont))
    return groups, truncated, counts


def _batches(groups: list[_Group], rows: int) -> list[list[_Group]]:
    """Batches of at most `rows` continuations (one group at least): groups of several requests by
    equal prefix length (their continuations run over the prefix's cache); groups of one request
    (a context of its own, or cut to fit) by equal total length, each scored as one sequence."""
    by_length: dict[int, list[_Group]] = defaultdict(list)
    alone: dict[int, list[_Group]] = defaultdict(list)
    for group in groups:
        if len(group.members) == 1:
            alone[len(group.prefix) + len(group.members[0][2]) - 1].append(group)
        else:
            by_length[len(group.prefix)].append(group)
    batches: list[list[_Group]] = [
        same[start : start + rows] for _, same in sorted(alone.items()) for start in range(0, len(same), rows)
    ]
    for length in sorted(by_length, reverse=True):
        # similar continuation lengths together: less padding in the continuation pass
        same = sorted(by_length[length], key=lambda g: max(len(c) for _, _, c in g.members))
        batch: list[_Group] = []
        used = 0
        for group in same:
            if batch and used + len(group.members) > rows:
                batches.append(batch)
                batch, used = [], 0
            batch.append(group)
            used += len(group.members)
        if batch:
            batches.append(batch)
    return batches


@torch.inference_mode()
def _score_batch(
    model: GPT, batch: list[_Group], rows: int, device: torch.device, dtype: torch.dtype | None
) -> list[tuple[int, int, float, bool]]:
    """(item, request, log-likelihood, greedy) of every member of `batch`'s groups: one pass over
    the prefixes, then the continuations over their prefix's cache, at most `rows` a pass, in
    passes of similar length (less padding)."""
    if all(len(g.members) == 1 for g in batch):
        return _score_whole(model, batch, device)
    config = model.config
    prefix = torch.tensor([g.prefix for g in batch], dtype=torch.long, device=device)
    P = prefix.shape[1]
    # keys and values kept in the precision the passes compute in
    cache = KVCache(config, len(batch), device, dtype or model.lm_head.weight.dtype, positions=P)
    hidden = model.hidden_states(prefix, cache=cache)
    first = F.log_softmax(model.lm_head(hidden[:, -1]).float(), dim=-1)  # (G, V): each first token
    members = sorted(
        ((g, m) for g, group in enumerate(batch) for m in group.members), key=lambda gm: len(gm[1][2])
    )
    out = []
    start = 0
    while start < len(members):
        shortest = len(members[start][1][2])
        stop = start + 1
        # a pass is padded to its longest row: keep rows within a quarter (and 2 tokens) of its shortest
        while (
            stop < len(members) and stop - start < rows and len(members[stop][1][2]) <= shortest * 5 // 4 + 2
        ):
            stop += 1
        out += _continue(model, cache, first, members[start:stop], P, device)
        start = stop
    return out


def _score_whole(model: GPT, batch: list[_Group], device: torch.device) -> list[tuple[int, int, float, bool]]:
    """Groups of one request, of equal total length: each scored as the sequence prefix +
    continuation[:-1] in one pass, the continuation's tokens predicted by the sequence's last
    positions (no cache to copy: nothing is shared)."""
    conts = [g.members[0][2] for g in batch]
    seqs = torch.tensor([list(g.prefix) + c[:-1] for g, c in zip(batch, conts, strict=True)], device=device)
    width = max(len(c) for c in conts)
    hidden = model.hidden_states(seqs)[:, -width:]  # the last `width` positions predict the continuations
    steps = F.log_softmax(model.lm_head(hidden).float(), dim=-1)  # (B, width, V)
    targets = torch.zeros((len(batch), width), dtype=torch.long, device=device)
    for row, cont in enumerate(conts):
        targets[row, width - len(cont) :] = torch.tensor(cont, dtype=torch.long)  # right-aligned
    lengths = torch.tensor([len(c) for c in conts], device=device)
    valid = torch.arange(width, device=device)[None, :] >= width - lengths[:, None]
    return _sums(steps, targets, valid, [g.members[0][:2] for g in batch])


def _sums(
    steps: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, owners: list[tuple[int, int]]
) -> list[tuple[int, int, float, bool]]:
    """(item, request, summed log-likelihood, greedy) per row of log-probabilities `steps`
    (R, width, V) at the `valid` positions of `targets` (R, width)."""
    picked = steps.gather(2, targets[:, :, None])[:, :, 0].double().masked_fill(~valid, 0.0).sum(dim=1)
    greedy = ((steps.argmax(dim=-1) == targets) | ~valid).all(dim=1)
    return [
        (i, r, float(ll), bool(exact))
        for (i, r), ll, exact in zip(owners, picked.tolist(), greedy.tolist(), strict=True)
    ]


def _continue(
    model: GPT,
    cache: KVCache,
    first: torch.Tensor,
    members: list[tuple[int, tuple[int, int, list[int]]]],
    P: int,
    device: torch.device,
) -> list[tuple[int, int, float, bool]]:
    """Score `members` (group index, (item, request, continuation)) over the prefix cache."""
    config = model.config
    owner = torch.tensor([g for g, _ in members], device=device)
    lengths = torch.tensor([len(cont) for _, (_, _, cont) in members], device=device)
    width = int(lengths.max())
    targets = torch.zeros((len(members), width), dtype=torch.long, device=device)
    for row, (_, (_, _, cont)) in enumerate(members):
        targets[row, : len(cont)] = torch.tensor(cont, dtype=torch.long)
    valid = torch.arange(width, device=device)[None, :] < lengths[:, None]  # (R, width)
    # the first token is predicted by the prefix's last position; the rest by the continuation's
    steps = first[owner][:, None, :]  # (R, 1, V)
    if width > 1:
        # each row continues its group's prefix: the prefix's keys and values, copied per row,
        # in storage just long enough for prefix + continuation
        grown = copy.copy(cache)
        shape = (config.n_layer, len(members), config.n_head, P + width - 1, config.head_dim)
        grown.k = torch.empty(shape, device=device, dtype=cache.k.dtype)
        grown.v = torch.empty(shape, device=device, dtype=cache.v.dtype)
        grown.k[:, :, :, :P] = cache.k[:, owner, :, :P]
        grown.v[:, :, :, :P] = cache.v[:, owner, :, :P]
        grown.length = P
        later = F.log_softmax(
            model.lm_head(model.hidden_states(targets[:, :-1], cache=grown)).float(), dim=-1
        )
        steps = torch.cat([steps, later], dim=1)  # (R, width, V)
    return _sums(steps, targets, valid, [(i, r) for _, (i, r, _) in members])


def score_items(
    model: GPT,
    tokenizer: Tokenizer,
    items: Sequence[Item],
    batch_size: int,
    device: torch.device,
    progress: Callable[[int], object] | None = None,
    dtype: torch.dtype | None = None,
) -> list[Scores]:
    """Each item's scores (see the module's doc); `batch_size`: continuations per forward pass;
    `progress` is called with the number of items just finished; `dtype`: autocast the forward
    passes to it (None: the model's own precision, fp32 as the harness scores; bf16 is faster where
    the CPU or GPU has fast bf16 matmuls, and moves log-likelihoods by rounding)."""
    model.eval()
    groups, truncated, counts = _groups(tokenizer, items, model.config.block_size)
    loglik = [[0.0] * len(item.requests) for item in items]
    greedy = [[True] * len(item.requests) for item in items]
    left = [sum(1 for n in c if n) for c in counts]  # requests of each item still to score
    if progress is not None and left.count(0):
        progress(left.count(0))  # items with nothing to compute
    for batch in _batches(groups, batch_size):
        finished = 0
        with autocast(device, dtype):
            scored = _score_batch(model, batch, batch_size, device, dtype)
        for i, r, ll, exact in scored:
            loglik[i][r], greedy[i][r] = ll, exact
            left[i] -= 1
            finished += left[i] == 0
        if progress is not None and finished:
            progress(finished)
    out = []
    for i, item in enumerate(items):
        text = "".join(c + k for c, k in item.requests)
        out.append(
            Scores(
                tuple(loglik[i]),
                tuple(greedy[i]),
                tuple(counts[i]),
                truncated[i],
                bool(tokenizer.unknown_characters(text)),
            )
        )
    return out


def predicted(item: Item, scores: Scores, norm: bool) -> int:
    """The choice a multiple-choice item's scores pick: the highest log-likelihood, divided by the
    continuation's length in characters with `norm` (acc_norm); the first of equal values, as
    numpy's argmax (the harness's) takes it."""
    values = scores.loglikelihoods
    if norm:
        chars = [len(continuation) for _, continuation in item.requests]
        values = tuple(v / max(1, n) for v, n in zip(values, chars, strict=True))
    return max(range(len(values)), key=lambda k: (values[k], -k))
