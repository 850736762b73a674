"""Log-likelihoods of benchmark continuations, computed as lm-evaluation-harness computes them, in
fewer forward passes.

Encoding follows the harness's Hugging Face backend, so that both score the same tokens: spaces at
the end of a context move to the start of its continuation; the continuation's tokens are those
of `context + continuation` after the context's own (an empty context is the <|endoftext|> token);
no BOS is added. The model sees `(context + continuation)[-(block_size + 1):][:-1]`: a context too
long for the block is cut from the left, and the item is counted as truncated. A continuation
longer than the whole block is scored on its last block_size tokens.

Speed. An item's choices usually share their context (HellaSwag's four endings follow one
sentence). The context and all its continuations are laid out once, one after another, in one row
of a forward pass: context, continuation 1, continuation 2, ... Each token carries its position in
its own sequence and attends only to the context and to its own continuation's earlier tokens, so
every choice is computed exactly as if alone, but the context's tokens once, not once per choice.
Short groups share a row (packed best-fit, longest first), so passes are full and padding is
small; the output head runs only where a continuation token is predicted. A choice whose context
is its own (Winogrande's) or that must be cut to fit (each choice is cut at its own place, so
nothing is shared) is a group of one: a choice cut to the block costs what it costs the harness.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptcore.benchmark.suite import Item
from gptcore.device import autocast
from gptcore.model import GPT
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


PACK = 256  # tokens of a row that several groups share


@dataclass
class _Row:
    """Groups packed one after another into one row of a forward pass."""

    groups: list[_Group]
    used: int  # tokens taken


def _packed_length(group: _Group) -> int:
    """Tokens a group takes in a row: its prefix once, then each continuation but its last token
    (a continuation's first token is predicted by the prefix's last position, each later one by
    the token before it)."""
    return len(group.prefix) + sum(len(cont) - 1 for _, _, cont in group.members)


def _rows(groups: list[_Group], width: int) -> list[_Row]:
    """The groups packed into rows of at most `width` tokens (a longer group gets a row of its
    own): best fit, longest first, so rows come out full and few."""
    rows: list[_Row] = []
    free: list[tuple[int, int]] = []  # (tokens left, row index), ascending
    for group in sorted(groups, key=_packed_length, reverse=True):
        n = _packed_length(group)
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            left, r = free.pop(at)
            rows[r].groups.append(group)
            rows[r].used += n
            if left - n:
                bisect.insort(free, (left - n, r))
        else:
            rows.append(_Row([group], n))
            if width - n > 0:
                bisect.insort(free, (width - n, len(rows) - 1))
    return rows


@torch.inference_mode()
def _score_rows(model: GPT, rows: list[_Row], device: torch.device) -> list[tuple[int, int, float, bool]]:
    """(item, request, log-likelihood, greedy) of every request in `rows`, in one forward pass.

    Each token carries its group (`segment`), its branch (0: the shared prefix, k: the group's
    k-th continuation) and its position in its own sequence; it attends to its group's tokens at
    earlier positions that are in the prefix or in its own branch. So every continuation sees
    exactly prefix + its own earlier tokens, as if scored alone; padding attends to itself."""
    T = max(row.used for row in rows)
    ids = [[0] * T for _ in rows]
    position = [[0] * T for _ in rows]
    segment = [[-1] * T for _ in rows]
    branch = [[0] * T for _ in rows]
    where: list[int] = []  # flat index (row * T + column) of each predicting position
    targets: list[int] = []
    request: list[int] = []  # which request each predicted token belongs to
    owners: list[tuple[int, int]] = []
    for b, row in enumerate(rows):
        at = 0
        for g, group in enumerate(row.groups):
            P = len(group.prefix)
            ids[b][at : at + P] = group.prefix
            position[b][at : at + P] = range(P)
            segment[b][at : at + P] = [g] * P
            last = b * T + at + P - 1  # the prefix's last token predicts every first token
            at += P
            for k, (i, r, cont) in enumerate(group.members, start=1):
                n = len(cont) - 1
                ids[b][at : at + n] = cont[:-1]
                position[b][at : at + n] = range(P, P + n)
                segment[b][at : at + n] = [g] * n
                branch[b][at : at + n] = [k] * n
                where += [last, *range(b * T + at, b * T + at + n)]
                targets += cont
                request += [len(owners)] * (n + 1)
                owners.append((i, r))
                at += n
    idx = torch.tensor(ids, device=device)
    pos = torch.tensor(position, device=device)
    seg = torch.tensor(segment, device=device)
    br = torch.tensor(branch, device=device)
    allowed = (
        (seg[:, :, None] == seg[:, None, :])
        & (pos[:, None, :] <= pos[:, :, None])
        & ((br[:, None, :] == 0) | (br[:, None, :] == br[:, :, None]))
    )
    hidden = model.packed_hidden_states(idx, pos, allowed).flatten(0, 1)
    # the head only where a continuation token is predicted
    logp = F.log_softmax(model.lm_head(hidden[torch.tensor(where, device=device)]).float(), dim=-1)
    target = torch.tensor(targets, device=device)
    owner = torch.tensor(request, device=device)
    picked = logp.gather(1, target[:, None])[:, 0].double()
    sums = torch.zeros(len(owners), dtype=torch.float64, device=device).index_add_(0, owner, picked)
    misses = torch.zeros(len(owners), dtype=torch.long, device=device).index_add_(
        0, owner, (logp.argmax(dim=-1) != target).long()
    )
    return [
        (i, r, float(ll), miss == 0)
        for (i, r), ll, miss in zip(owners, sums.tolist(), misses.tolist(), strict=True)
    ]


def score_items(
    model: GPT,
    tokenizer: Tokenizer,
    items: Sequence[Item],
    batch_size: int,
    device: torch.device,
    progress: Callable[[int], object] | None = None,
    dtype: torch.dtype | None = None,
) -> list[Scores]:
    """Each item's scores (see the module's doc); `batch_size`: rows per forward pass (each the block long);
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
    # short groups share rows of up to PACK tokens (or the block, if shorter), a longer group has a
    # row of its own: attention's cost grows with the square of a row's length, and a pass is as
    # long as its longest row, so rows of similar lengths go together
    rows = sorted(_rows(groups, min(PACK, model.config.block_size)), key=lambda row: row.used, reverse=True)
    for start in range(0, len(rows), batch_size):
        finished = 0
        with autocast(device, dtype):
            scored = _score_rows(model, rows[start : start + batch_size], device)
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
