"""Sampling from a GPT: logit filtering (top-k, top-p), token streams, and text completions.

Three layers, each usable on its own:
- `filter_logits` and `sample_next`: pure functions from logits to a choice of next token;
- `generate_stream` / `generate`: the autoregressive loop over token ids, batched, streaming one
  new token per row per step (or returning the whole sequence);
- `stream_completion` / `complete`: text in, text out, through a tokenizer; what `gptcore chat`,
  `gptcore sample` and the sample stage use.

Every sampler takes its settings as one `gptcore.sampling.Sampling` (temperature, top-k, top-p,
max_new_tokens, stop strings, seed), whose check is the only statement of their rules. Order at
each step, as in most samplers: divide the logits by the temperature, keep the top-k, then keep the
nucleus (top-p) of what is left, then draw. Temperature 0 is greedy argmax. Draws use the
`torch.Generator` passed in (torch's global RNG when none is; `seeded_generator` makes one from
the settings' seed), so a seed fixes the output; a CPU generator also gives the same draws
whatever device the model runs on.

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

from gptcore.limits import check_kv_cache
from gptcore.model import GPT, KVCache
from gptcore.sampling import Sampling, check_setting
from gptcore.tokenizer import Tokenizer

# What a decoder shows for bytes it cannot map (and what a char tokenizer shows for <|unk|>).
REPLACEMENT_CHAR = "\ufffd"


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits (..., V) with every token outside the top-k and then the top-p nucleus set to -inf.

    top_k keeps exactly the k largest logits (0, or k >= V: off). top_p keeps the smallest set of
    most likely tokens whose probability mass reaches p (1.0: off); the most likely token is always
    kept, so at least one token survives. Returns a new tensor; the input is not modified.
    """
    check_setting("top_k", top_k)
    check_setting("top_p", top_p)
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


def seeded_generator(sampling: Sampling) -> torch.Generator | None:
    """A CPU generator seeded with the settings' seed (None when they have none). On the CPU, the
    same seed gives the same tokens whether the model runs on cpu or cuda (for the same logits;
    kernels may differ in the last bits between devices)."""
    return None if sampling.seed is None else torch.Generator().manual_seed(sampling.seed)


def scale_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`logits / temperature` in float32, well defined for every temperature > 0.

    The largest logit is moved to 0 first and kept there, so no logit becomes +inf or NaN however
    small the temperature (one below float32's range divides by 0): the others go to -inf as it
    shrinks (argmax, tied tokens sharing the draw) and to 0 as it grows (uniform). The softmax is
    the same as unshifted."""
    logits = logits.float()
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    return torch.where(shifted == 0, shifted, shifted / temperature)


def sample_next(
    logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V): greedy at temperature 0, else a draw."""
    temperature = sampling.temperature
    if temperature == 0.0:
        # filtering never changes the argmax, so greedy skips it
        return logits.argmax(dim=-1)
    probs = filter_logits(scale_logits(logits, temperature), sampling.top_k, sampling.top_p).softmax(dim=-1)
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
            check_kv_cache("generation", model.config, idx.shape[0], dtype, idx.device)
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
    sampling: Sampling,
    *,
    generator: torch.Generator | None = None,
    eot_id: int | None = None,
    stop_at_eot: bool = True,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the new token ids (B,) of each step after the prompts `idx` (B, T0), up to
    sampling.max_new_tokens (stop strings are text, so the text layer below handles them).

    With `eot_id` given, a row that has produced it is finished: its later entries are `eot_id`
    again (padding), and with `stop_at_eot` the stream ends once every row has finished. The eot
    token itself is yielded, so the caller sees why a row ended. The model must be in eval mode
    (dropout would make the output depend on the global RNG, not on `generator`).
    """
    if model.training:
        raise ValueError("generate needs the model in eval mode: call model.eval() first")
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must be token ids of shape (B, T) with T >= 1, got {tuple(idx.shape)}")
    done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    context = _Context(model, idx, use_cache)
    for _ in range(sampling.max_new_tokens):
        logits = context.next_logits(idx)
        next_ids = sample_next(logits, sampling, generator)
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
    sampling: Sampling,
    *,
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
            sampling,
            generator=generator,
            eot_id=eot_id,
            stop_at_eot=stop_at_eot,
            use_cache=use_cache,
        )
    )
    if not steps:
        return idx.clone()
    return torch.cat([idx, torch.stack(steps, dim=1)], dim=1)


def _first_stop(text: str, stop: Sequence[str], start: int = 0) -> int | None:
    """Where the first of the `stop` strings found in text[start:] begins, or None."""
    found = [i for i in (text.find(s, start) for s in stop) if i >= 0]
    return min(found) if found else None


def _held_back(text: str, stop: Sequence[str]) -> int:
    """Length of the longest tail of `text` that could be the start of a stop string."""
    longest = 0
    if not text:
        return 0
    for s in stop:
        n = min(len(s) - 1, len(text))
        while n > longest:
            # only a prefix that ends in text's last character can be its tail: jump to the
            # longest such one rather than trying every length (a long stop string would cost
            # its length squared at every piece)
            n = s.rfind(text[-1], 0, n) + 1
            if n <= longest:
                break
            if text.endswith(s[:n]):
                longest = n
                break
            n -= 1
    return longest


def stream_completion(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    sampling: Sampling,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[str]:
    """Yield the text that continues `prompt`, piece by piece as tokens come, ending at
    <|endoftext|>, after max_new_tokens, or just before the first of the stop strings to appear
    (which is not yielded; generation ends there).

    An empty prompt starts from <|endoftext|>, the token that precedes every document in training.
    See `decode_stream` and `cut_at_stop` for what is held back and why.
    """
    idx = _prompt_rows(model, tokenizer, prompt, 1)
    steps = generate_stream(model, idx, sampling, generator=generator, eot_id=tokenizer.eot_id)
    yield from cut_at_stop(decode_stream(tokenizer, (int(step[0]) for step in steps)), sampling.stop)


class TextDecoder:
    """Push-style `decode_stream`: `feed` a token, get the whole characters it completes (maybe
    ""), for a consumer that is handed tokens rather than pulling them (`gptcore serve`)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def feed(self, token: int) -> str:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if text.endswith(REPLACEMENT_CHAR):
            return ""
        self.pending.clear()
        return text

    def flush(self) -> str:
        """What is still held back, once no token follows."""
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending.clear()
        return text


def decode_stream(tokenizer: Tokenizer, tokens: Iterable[int]) -> Iterator[str]:
    """The text of new `tokens`, piece by piece, whole characters only, until <|endoftext|>.

    A piece that ends in U+FFFD is held back until the next token: with a byte-level tokenizer it
    may be the first bytes of a character that the next token completes.
    """
    decoder = TextDecoder(tokenizer)
    for token in tokens:
        if token == tokenizer.eot_id:
            break
        if text := decoder.feed(token):
            yield text
    if text := decoder.flush():
        yield text


class StopCutter:
    """Push-style `cut_at_stop`: `feed` a piece of text, get what can be sent now; `stopped` is
    set once a stop string appears (nothing is sent from it on), and `flush` gives what was held
    back when the text ends without one."""

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = stop
        self.longest = max((len(s) for s in stop), default=0)
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        if not self.stop:
            return piece
        self.text += piece
        window = max(0, self.sent - self.longest)  # a stop string can only end in the new text
        cut = _first_stop(self.text, self.stop, window)
        if cut is not None:
            self.stopped = True
            return self.text[self.sent : cut] if cut > self.sent else ""
        safe = len(self.text) - _held_back(self.text, self.stop)
        if safe <= self.sent:
            return ""
        out, self.sent = self.text[self.sent : safe], safe
        return out

    def flush(self) -> str:
        if self.stopped or self.sent >= len(self.text):
            return ""
        out, self.sent = self.text[self.sent :], len(self.text)
        return out


def cut_at_stop(pieces: Iterable[str], stop: Sequence[str]) -> Iterator[str]:
    """The text of `pieces` up to just before the first of the `stop` strings, where it ends
    (`pieces` is not read further). Text that could be the start of a stop string is held back
    until the next pieces tell."""
    cutter = StopCutter(stop)
    for piece in pieces:
        if text := cutter.feed(piece):
            yield text
        if cutter.stopped:
            return
    if text := cutter.flush():
        yield text


def complete(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    sampling: Sampling,
    *,
    generator: torch.Generator | None = None,
) -> str:
    """The whole text that continues `prompt` (see stream_completion)."""
    return "".join(stream_completion(model, tokenizer, prompt, sampling, generator=generator))


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The ids a completion of `prompt` starts from; an empty prompt starts from <|endoftext|>,
    the token that precedes every document in training."""
    return tokenizer.encode(prompt) or [tokenizer.eot_id]


def _prompt_rows(model: GPT, tokenizer: Tokenizer, prompt: str, rows: int) -> torch.Tensor:
    """The prompt's ids (`prompt_ids`) as `rows` identical rows on the model's device."""
    device = next(model.parameters()).device
    return torch.tensor([prompt_ids(tokenizer, prompt)] * rows, dtype=torch.long, device=device)


def complete_batch(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    num_samples: int,
    sampling: Sampling,
    *,
    generator: torch.Generator | None = None,
) -> list[str]:
    """`num_samples` continuations of `prompt`, generated together as the rows of one batch (one
    forward pass per step for all of them), each ending as `complete`'s would."""
    idx = _prompt_rows(model, tokenizer, prompt, num_samples)
    out = generate(model, idx, sampling, generator=generator, eot_id=tokenizer.eot_id)
    texts = []
    for row in out[:, idx.shape[1] :].tolist():
        row = row[: row.index(tokenizer.eot_id)] if tokenizer.eot_id in row else row
        text = tokenizer.decode(row)
        texts.append(text[: _first_stop(text, sampling.stop)])
    return texts
