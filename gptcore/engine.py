"""Batched generation for many requests at once: one thread steps every live request together.

A server that ran each request's `generate_stream` on its own would either serve one at a time
or leave threads to fight over the cores. Here one engine thread owns the model: each step it
takes one token for every live request in one forward pass of a batch, whose small matmuls cost
far less than one pass per request (figures: benchmarks/serve_speed.py and the README's Serve
section). Requests join and leave between steps (continuous batching):

- the KV cache holds one row per slot (`max_batch` of them); the rows in use are 0..n-1, so a
  step works on a view of the cache, and a request that ends hands its slot to the last row;
- a new request's prompt (its last block_size tokens) is encoded alone into its row, then it
  joins the batch, at its own position (`GPT.forward(..., positions=...)`);
- when a row reaches block_size its window slides by half a block and that half is encoded
  again, exactly as `gptcore.generate` does for one sequence, so a request's tokens are those of
  `generate` with the same settings (greedy output is tested equal);
- each request draws with its own `Sampling` settings (temperature, top-k, top-p,
  max_new_tokens) from its own generator, seeded with the settings' seed, through
  `gptcore.generate.sample_next`, as `generate` does.

A request's tokens arrive in a queue that its consumer reads; `TokenStream.close()` (a client
that went away, a stop string that was reached) takes the request out at the next step.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from gptcore.generate import sample_next, seeded_generator
from gptcore.model import GPT, KVCache
from gptcore.sampling import Sampling

_END = object()  # put in a stream's queue after its last token


class TokenStream:
    """The new token ids of one request, in order, as the engine draws them.

    Iterating blocks until the next token; it ends at <|endoftext|> (which is yielded) or after
    sampling.max_new_tokens. `finish_reason` is then "stop" (end of text) or "length". Stop
    strings are text: the consumer cuts at them (`gptcore.generate.cut_at_stop`) and closes the
    stream."""

    def __init__(self, prompt: list[int], sampling: Sampling) -> None:
        self.prompt = prompt
        self.sampling = sampling
        self.generated = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.closed = threading.Event()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()

    def __iter__(self) -> Iterator[int]:
        while True:
            item = self._queue.get()
            if item is _END:
                if self.error is not None:
                    raise RuntimeError(f"generation failed: {self.error}") from self.error
                return
            yield item

    def close(self) -> None:
        """Stop this request's generation: the engine drops it before its next step."""
        self.closed.set()


@dataclass
class _Row:
    stream: TokenStream
    generator: torch.Generator
    history: list[int]  # prompt + new tokens
    start: int  # history[start:] is the window the model sees
    fed: int = 0  # history[start:fed] is in the row's cache


class Engine:
    """The thread that generates for every submitted request, `max_batch` of them at a time
    (the others wait their turn, in order of arrival)."""

    def __init__(self, model: GPT, eot_id: int, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.eot_id = eot_id
        self.block_size = model.config.block_size
        param = next(model.parameters())
        self.device = param.device
        self.cache = KVCache(model.config, max_batch, param.device, param.dtype)
        self.max_batch = max_batch
        self._rows: list[_Row] = []
        self._waiting: deque[TokenStream] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._threads = torch.get_num_threads()
        self._thread = threading.Thread(target=self._run, name="gptcore-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], sampling: Sampling) -> TokenStream:
        """Queue a request, to be sampled with `sampling`, whose seed must be set (a request's
        draws do not depend on the others'); its tokens come out of the returned stream."""
        if not prompt:
            raise ValueError("a prompt needs at least one token")
        if sampling.seed is None:
            raise ValueError("a request's sampling needs a seed")
        stream = TokenStream(prompt, sampling)
        with self._wake:
            self._waiting.append(stream)
            self._wake.notify()
        return stream

    def live(self) -> int:
        """Requests being generated or waiting for a slot."""
        with self._wake:
            return len(self._rows) + len(self._waiting)

    def shutdown(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    # -- the engine thread ---------------------------------------------------------------------

    def _run(self) -> None:
        # a new thread starts with OpenMP's default team, not what its creator set (--threads)
        torch.set_num_threads(self._threads)
        while True:
            with self._wake:
                while not (self._stopping or self._rows or self._waiting):
                    self._wake.wait()
                if self._stopping:
                    break
                while self._waiting and len(self._rows) < self.max_batch:
                    self._admit(self._waiting.popleft())
            try:
                with torch.inference_mode():
                    self._step()
            except Exception as exc:  # a bug or an out-of-memory: fail the requests, not the server
                for row in self._rows:
                    row.stream.error = exc
                    self._finish(row, None)
                self._rows.clear()
        with self._wake:
            for stream in [row.stream for row in self._rows] + list(self._waiting):
                stream._queue.put(_END)

    def _admit(self, stream: TokenStream) -> None:
        if stream.closed.is_set():
            stream._queue.put(_END)
            return
        generator = seeded_generator(stream.sampling)
        assert generator is not None  # submit checked the seed
        self._rows.append(
            _Row(
                stream=stream,
                generator=generator,
                history=list(stream.prompt),
                start=max(0, len(stream.prompt) - self.block_size),  # a long prompt: its last block
            )
        )

    def _step(self) -> None:
        """One new token for every row: the rows that continue their window go through one
        batched forward pass at their own positions; rows with a new window (a fresh prompt, or
        one that slid) are encoded alone."""
        self._drop_closed()
        if not self._rows:
            return
        for row in self._rows:
            if len(row.history) - row.start > self.block_size:  # full: keep the last half block
                row.start = len(row.history) - max(1, self.block_size // 2)
                row.fed = row.start
        self._partition(lambda row: row.fed > row.start)
        logits: list[torch.Tensor] = []
        decoding = [row for row in self._rows if row.fed > row.start]
        if decoding:
            idx = torch.tensor([[row.history[-1]] for row in decoding], dtype=torch.long, device=self.device)
            pos = torch.tensor(
                [row.fed - row.start for row in decoding], dtype=torch.long, device=self.device
            )
            out, _ = self.model(idx, cache=self.cache.rows(0, len(decoding)), positions=pos)
            logits.extend(out[:, -1])
        for i in range(len(decoding), len(self._rows)):
            row = self._rows[i]
            idx = torch.tensor([row.history[row.start :]], dtype=torch.long, device=self.device)
            out, _ = self.model(idx, cache=self.cache.rows(i, i + 1))
            logits.append(out[0, -1])
        for row, row_logits in zip(self._rows, logits, strict=True):
            row.fed = len(row.history)
            token = int(sample_next(row_logits[None].float(), row.stream.sampling, row.generator)[0])
            row.history.append(token)
            row.stream.generated += 1
            row.stream._queue.put(token)
            if token == self.eot_id:
                row.stream.finish_reason = "stop"
            elif row.stream.generated >= row.stream.sampling.max_new_tokens:
                row.stream.finish_reason = "length"
        for row in [r for r in self._rows if r.stream.finish_reason is not None]:
            self._remove(row)

    def _partition(self, first: Callable[[_Row], bool]) -> None:
        """Reorder the rows (and their cache rows) so that those for which `first` holds come
        first, in their order; the others' cache rows are about to be refilled and are not kept."""
        order = [row for row in self._rows if first(row)]
        for j, row in enumerate(order):
            i = self._rows.index(row)
            if i != j:  # i > j: every row moves towards the front, so a source is never overwritten
                self.cache.k[:, j] = self.cache.k[:, i]
                self.cache.v[:, j] = self.cache.v[:, i]
        self._rows[:] = order + [row for row in self._rows if not first(row)]

    def _drop_closed(self) -> None:
        for row in [r for r in self._rows if r.stream.closed.is_set()]:
            self._remove(row)

    def _remove(self, row: _Row) -> None:
        """End a row's stream and give its slot to the last row (rows in use stay 0..n-1)."""
        i = self._rows.index(row)
        last = len(self._rows) - 1
        if i != last:
            self.cache.k[:, i] = self.cache.k[:, last]
            self.cache.v[:, i] = self.cache.v[:, last]
            self._rows[i] = self._rows[last]
        self._rows.pop()
        self._finish(row, row.stream.finish_reason)

    @staticmethod
    def _finish(row: _Row, reason: str | None) -> None:
        row.stream.finish_reason = reason
        row.stream._queue.put(_END)
