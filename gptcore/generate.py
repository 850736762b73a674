"""Sampling from a GPT: logit filtering (top-k, top-p), token streams, and text completions.

Three layers, each usable on its own:
- `filter_logits` and `sample_next`: pure functions from logits to a choice of next token;
- `generate_stream` / `generate`: the autoregressive loop over token ids, batched, streaming one
  new token per row per step (or returning the whole sequence);
- `stream_completion` / `complete`: text in, text out, through a tokenizer; what `gptcore chat`,
  `gptcore sample` and the sample stage use.

Order of operations at each step, as in most samplers: divide the logits by the temperature, keep
the top-k, then keep the nucleus (top-p) of what is left, then draw. Temperature 0 is greedy argmax.
Draws use the `torch.Generator` passed in (torch's global RNG when none is), so a seed fixes the
output; a CPU generator also gives the same draws whatever device the model runs on.

Context and the KV cache. The model sees at most block_size tokens (its position table ends
there). A prompt longer than that is cut to its last block_size tokens. When the text grows past
block_size, the window slides by half a block: the model then continues from the last
block_size // 2 tokens at positions 0.. again, and with the cache on (the default) that half is
encoded once into a fresh cache. So a new token costs one position, plus one half-block prefill
every block_size // 2 tokens. Without the cache the same windows are recomputed in full at every
step, which gives the same tokens (tested), only slower.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from gptcore.model import GPT, KVCache
from gptcore.tokenizer import Tokenizer

# What a decoder shows for bytes it cannot map (and what a char tokenizer shows for <|unk|>).
REPLACEMENT_CHAR = "\ufffd"


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """Raise ValueError for settings outside their ranges (temperature >= 0, top_k >= 0, 0 < top_p <= 1)."""
    if not temperature >= 0.0:  # written so that NaN fails too
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 is off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1] (1 is off), got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits (..., V) with every token outside the top-k and then the top-p nucleus set to -inf.

    top_k keeps exactly the k largest logits (0, or k >= V: off). top_p keeps the smallest set of
    most likely tokens whose probability mass reaches p (1.0: off); the most likely token is always
    kept, so at least one token survives. Returns a new tensor; the input is not modified.
    """
    check_sampling(0.0, top_k, top_p)
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        # scatter the k winners into a -inf tensor, rather than thresholding at the k-th value:
        # exactly k survive even when logits tie at the threshold
        values, indices = torch.topk(logits, top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter(-1, indices, values)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.float().softmax(dim=-1)
        # mass of the tokens strictly more likely than each one: a token is kept while the mass
        # before it is still short of p; the first token's is 0 < p, so it is always kept
        mass_before = probs.cumsum(dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    elif top_k <= 0 or top_k >= vocab:
        logits = logits.clone()  # both filters off: still hand back a tensor the caller may modify
    return logits


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V): greedy at temperature 0, else a draw."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0.0:
        # filtering never changes the argmax, so greedy skips it
        return logits.argmax(dim=-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    # draw on the generator's device: a CPU generator then gives the same tokens for the same
    # probabilities on any device (the copy is B x V floats, and the caller syncs on the ids anyway)
    draw_device = generator.device if generator is not None else probs.device
    choice = torch.multinomial(probs.to(draw_device), num_samples=1, generator=generator)
    return choice.squeeze(-1).to(logits.device)


class _Context:
    """Next-token logits for a growing sequence, over a window of at most block_size tokens that
    slides by half a block when full; with a KV cache each call encodes only the new tokens."""

    def __init__(self, model: GPT, idx: torch.Tensor, use_cache: bool) -> None:
        self.model = model
        self.block_size = model.config.block_size
        self.start = max(0, idx.shape[1] - self.block_size)  # a long prompt: its last block
        self.cache = None
        if use_cache:
            dtype = next(model.parameters()).dtype
            self.cache = KVCache(model.config, idx.shape[0], idx.device, dtype)
        self.fed = self.start  # idx[:, start:fed] is in the cache

    def next_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) for the token after `idx` (B, T)."""
        if idx.shape[1] - self.start > self.block_size:  # full: keep the last half block
            self.start = idx.shape[1] - max(1, self.block_size // 2)
            self.fed = self.start
            if self.cache is not None:
                self.cache.reset()
        if self.cache is None:
            logits, _ = self.model(idx[:, self.start :])
        else:
            logits, _ = self.model(idx[:, self.fed :], cache=self.cache)
            self.fed = idx.shape[1]
        return logits[:, -1, :]


@torch.inference_mode()
def generate_stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    eot_id: int | None = None,
    stop_at_eot: bool = True,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the new token ids (B,) of each step after the prompts `idx` (B, T0), up to max_new_tokens.

    With `eot_id` given, a row that has produced it is finished: its later entries are `eot_id`
    again (padding), and with `stop_at_eot` the stream ends once every row has finished. The eot
    token itself is yielded, so the caller sees why a row ended. The model must be in eval mode
    (dropout would make the output depend on the global RNG, not on `generator`).
    """
    check_sampling(temperature, top_k, top_p)
    if model.training:
        raise ValueError("generate needs the model in eval mode: call model.eval() first")
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must be token ids of shape (B, T) with T >= 1, got {tuple(idx.shape)}")
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    context = _Context(model, idx, use_cache)
    for _ in range(max_new_tokens):
        logits = context.next_logits(idx)
        next_ids = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
        if eot_id is not None:
            next_ids = torch.where(done, torch.full_like(next_ids, eot_id), next_ids)
            done |= next_ids == eot_id
        idx = torch.cat([idx, next_ids[:, None]], dim=1)
        yield next_ids
        if eot_id is not None and stop_at_eot and bool(done.all()):
            return


def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    eot_id: int | None = None,
    stop_at_eot: bool = True,
    use_cache: bool = True,
) -> torch.Tensor:
    """The prompts followed by their new tokens: (B, T0 + n), n <= max_new_tokens (see generate_stream)."""
    steps = list(
        generate_stream(
            model,
            idx,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
            eot_id=eot_id,
            stop_at_eot=stop_at_eot,
            use_cache=use_cache,
        )
    )
    if not steps:
        return idx.clone()
    return torch.cat([idx, torch.stack(steps, dim=1)], dim=1)


def check_stop(stop: Sequence[str]) -> None:
    if any(not s for s in stop):
        raise ValueError(f"stop strings must not be empty, got {list(stop)!r}")


def _first_stop(text: str, stop: Sequence[str], start: int = 0) -> int | None:
    """Where the first of the `stop` strings found in text[start:] begins, or None."""
    found = [i for i in (text.find(s, start) for s in stop) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Length of the longest tail of `text` that could be the start of a stop string."""
    longest = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def stream_completion(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    stop: Sequence[str] = (),
) -> Iterator[str]:
    """Yield the text that continues `prompt`, piece by piece as tokens come, ending at
    <|endoftext|>, after max_new_tokens, or just before the first of the `stop` strings to appear
    (which is not yielded; generation ends there).

    An empty prompt starts from <|endoftext|>, the token that precedes every document in training.
    See `decode_stream` and `cut_at_stop` for what is held back and why.
    """
    check_stop(stop)
    _, idx = _prompt_batch(model, tokenizer, prompt, 1)
    steps = generate_stream(
        model,
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        eot_id=tokenizer.eot_id,
    )
    yield from cut_at_stop(decode_stream(tokenizer, (int(step[0]) for step in steps)), stop)


def _prompt_batch(model: GPT, tokenizer: Tokenizer, prompt: str, rows: int) -> tuple[list[int], torch.Tensor]:
    """The prompt's ids (<|endoftext|> for an empty one), and `rows` copies of them on the model's device."""
    ids = tokenizer.encode(prompt) or [tokenizer.eot_id]
    device = next(model.parameters()).device
    return ids, torch.tensor([ids] * rows, dtype=torch.long, device=device)


def decode_stream(tokenizer: Tokenizer, tokens: Iterable[int]) -> Iterator[str]:
    """The text of new `tokens`, piece by piece, whole characters only, until <|endoftext|>.

    A piece that ends in U+FFFD is held back until the next token: with a byte-level tokenizer it
    may be the first bytes of a character that the next token completes.
    """
    pending: list[int] = []
    for token in tokens:
        if token == tokenizer.eot_id:
            break
        pending.append(token)
        text = tokenizer.decode(pending)
        if not text.endswith(REPLACEMENT_CHAR):
            pending.clear()
            yield text
    if pending:
        yield tokenizer.decode(pending)


def cut_at_stop(pieces: Iterable[str], stop: Sequence[str]) -> Iterator[str]:
    """The text of `pieces` up to just before the first of the `stop` strings, where it ends
    (`pieces` is not read further). Text that could be the start of a stop string is held back
    until the next pieces tell."""
    if not stop:
        yield from pieces
        return
    text, sent = "", 0
    longest = max(len(s) for s in stop)
    for piece in pieces:
        text += piece
        window = max(0, sent - longest)  # a stop string can only end in the new text
        cut = _first_stop(text, stop, window)
        if cut is not None:
            if cut > sent:
                yield text[sent:cut]
            return
        safe = len(text) - _held_back(text, stop)
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    if sent < len(text):
        yield text[sent:]


def complete(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    stop: Sequence[str] = (),
) -> str:
    """The whole text that continues `prompt` (see stream_completion)."""
    return "".join(
        stream_completion(
            model,
            tokenizer,
            prompt,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
            stop=stop,
        )
    )


def complete_batch(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    num_samples: int,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    stop: Sequence[str] = (),
) -> list[str]:
    """`num_samples` continuations of `prompt`, generated together as the rows of one batch (one
    forward pass per step for all of them), each ending as `complete`'s would."""
    check_stop(stop)
    ids, idx = _prompt_batch(model, tokenizer, prompt, num_samples)
    out = generate(
        model,
        idx,
        max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=generator,
        eot_id=tokenizer.eot_id,
    )
    texts = []
    for row in out[:, len(ids) :].tolist():
        row = row[: row.index(tokenizer.eot_id)] if tokenizer.eot_id in row else row
        text = tokenizer.decode(row)
        texts.append(text[: _first_stop(text, stop)])
    return texts
