"""Batched generation for many requests at once: one thread steps every live request together.

A server that ran each request's `generate_stream` on its own would either serve one at a time
or leave threads to fight over the cores. Here one engine thread owns the model: each step it
takes one token for every live row (a choice of a request) in one forward pass of a batch, whose
small matmuls cost far less than one pass per row (figures: benchmarks/serve_speed.py and
docs/serving.md, "Speed"). Rows join and leave between steps (continuous batching):

- the KV cache holds one row per slot (`max_batch` of them); the rows in use are 0..n-1, so a
  step works on a view of the cache, and a row that ends hands its slot to the last row;
- a new row's prompt (its last block_size tokens) is encoded alone into its slot, then it joins
  the batch, at its own position (`GPT.forward(..., positions=...)`);
- when a row reaches block_size its window slides by half a block and that half is encoded
  again, exactly as `gptcore.generate` does for one sequence, so a request's tokens are those of
  `generate` with the same settings (greedy output is tested equal);
- each row draws with its own `Sampling` settings (temperature, top-k, top-p, max_new_tokens)
  from its own generator, seeded with the settings' seed, through
  `gptcore.generate.sample_next`, as `generate` does.

Slots are shared between requests, not handed out row by row in order of arrival: a free slot
goes to a row of the waiting request that holds the fewest slots, the one whose last turn is
oldest among those (round-robin), and a request that holds no slot while another holds several
takes one of the other's (that row goes back to wait, and its window is encoded again when it
returns). So while there are fewer requests than slots, a new request gets a slot at the next
step however many rows the others have. The rows waiting are bounded (`max_waiting`): past it
`submit_all` raises EngineBusy.

A failure is the failing row's alone: a batched pass that raises is retried row by row, and a
row whose pass or draw fails ends its stream with the error (iterating raises GenerationFailed)
while the other rows go on.

A row's tokens arrive in a queue that its consumer reads, blocking (iterating) or not (`take`,
with a `wake` callback that says when to); `TokenStream.close()` (a client that went away, a stop
string that was reached) takes the row out at the next step.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from gptcore.generate import sample_next, seeded_generator
from gptcore.limits import check_kv_cache
from gptcore.model import GPT, KVCache
from gptcore.sampling import Sampling

_END = object()  # put in a stream's queue after its last token


class GenerationFailed(RuntimeError):
    """A row's forward pass or draw raised: that row's stream ends with this."""


class EngineBusy(RuntimeError):
    """More rows are waiting for a slot than the engine keeps (`max_waiting`)."""


class TokenStream:
    """The new token ids of one row, in order, as the engine draws them.

    Iterating blocks until the next token; it ends at <|endoftext|> (which is yielded) or after
    sampling.max_new_tokens. `finish_reason` is then "stop" (end of text) or "length". Stop
    strings are text: the consumer cuts at them (`gptcore.generate.cut_at_stop`) and closes the
    stream."""

    def __init__(self, sampling: Sampling, notify: Callable[[], None] | None = None) -> None:
        self.sampling = sampling
        self.generated = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.closed = threading.Event()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._notify = notify
        self._ended = False

    def __iter__(self) -> Iterator[int]:
        while True:
            item = self._queue.get()
            if item is _END:
                self._raise_if_failed()
                return
            yield item

    def take(self) -> tuple[list[int], bool]:
        """The tokens drawn since the last take, without waiting, and whether the stream has
        ended; raises GenerationFailed if it ended with an error."""
        tokens: list[int] = []
        while not self._ended:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _END:
                self._ended = True
                self._raise_if_failed()
            else:
                tokens.append(item)
        return tokens, self._ended

    def close(self) -> None:
        """Stop this row's generation: the engine drops it before its next step."""
        self.closed.set()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise GenerationFailed(f"generation failed: {self.error}") from self.error

    def _put(self, item: object) -> None:
        self._queue.put(item)
        if self._notify is not None:
            self._notify()


@dataclass
class _Row:
    stream: TokenStream
    generator: torch.Generator
    request: int  # the submit call it came from: slots are shared between requests
    history: list[int]  # the prompt's last block_size tokens + new tokens
    start: int = 0  # history[start:] is the window the model sees
    fed: int = 0  # history[start:fed] is in the row's cache; fed == start: encode the window anew


class Engine:
    """The thread that generates for every submitted request, `max_batch` rows at a time; at most
    `max_waiting` more wait for a slot (None: no bound)."""

    def __init__(self, model: GPT, eot_id: int, max_batch: int, max_waiting: int | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model = model
        self.eot_id = eot_id
        self.block_size = model.config.block_size
        param = next(model.parameters())
        self.device = param.device
        check_kv_cache(
            "gptcore serve", model.config, max_batch, param.dtype, param.device
        )  # --max-batch rows
        self.cache = KVCache(model.config, max_batch, param.device, param.dtype)
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self._rows: list[_Row] = []
        self._waiting: dict[int, deque[_Row]] = {}  # request -> its rows waiting for a slot, in order
        self._queued = 0  # rows in self._waiting
        self._requests = itertools.count()
        self._admissions = itertools.count()
        self._last_turn: dict[int, int] = {}  # waiting request -> when it last had a row admitted
        self._wake = threading.Condition()
        self._stopping = False
        self._threads = torch.get_num_threads()
        self._thread = threading.Thread(target=self._run, name="gptcore-engine", daemon=True)
        self._thread.start()

    def submit(self, prompt: list[int], sampling: Sampling) -> TokenStream:
        """Queue a request of one row (see `submit_all`)."""
        return self.submit_all([(prompt, sampling)])[0]

    def submit_all(
        self, rows: Sequence[tuple[list[int], Sampling]], wake: Callable[[], None] | None = None
    ) -> list[TokenStream]:
        """Queue one request's rows, each (prompt, sampling) with the sampling's seed set (a row's
        draws do not depend on the others'); their tokens come out of the returned streams, and
        `wake`, when given, is called (on the engine thread) after each token or end. Raises
        EngineBusy, queuing nothing, when the rows would not fit in the slots and the wait."""
        for prompt, sampling in rows:
            if not prompt:
                raise ValueError("a prompt needs at least one token")
            if sampling.seed is None:
                raise ValueError("a request's sampling needs a seed")
        request = next(self._requests)
        made = []
        for prompt, sampling in rows:
            generator = seeded_generator(sampling)
            assert generator is not None  # the seed was checked
            stream = TokenStream(sampling, wake)
            # only the window the model can see is kept: a long prompt costs no memory per step
            made.append(_Row(stream, generator, request, list(prompt[-self.block_size :])))
        with self._wake:
            live = len(self._rows) + self._queued
            if self.max_waiting is not None and live + len(made) > self.max_batch + self.max_waiting:
                raise EngineBusy(f"{len(self._rows)} rows generating and {self._queued} waiting")
            self._waiting[request] = deque(made)
            self._queued += len(made)
            self._wake.notify()
        return [row.stream for row in made]

    def live(self) -> int:
        """Rows being generated or waiting for a slot."""
        with self._wake:
            return len(self._rows) + self._queued

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
                while not (self._stopping or self._rows or self._queued):
                    self._wake.wait()
                if self._stopping:
                    break
                with torch.inference_mode():
                    self._schedule()
            try:
                with torch.inference_mode():
                    self._step()
            except Exception as exc:  # a bug outside the rows' own guards: fail what was generating
                for row in list(self._rows):
                    self._fail(row, exc)
        with self._wake:
            for row in self._rows + [row for rows in self._waiting.values() for row in rows]:
                row.stream._put(_END)

    def _schedule(self) -> None:
        """Fill the free slots from the waiting rows, a row at a time from the request whose turn
        it is; then, while that request holds no slot and another holds several, move one of the
        other's rows back to wait and give its slot to the one without."""
        for request, rows in list(self._waiting.items()):  # rows whose client went away
            for row in [r for r in rows if r.stream.closed.is_set()]:
                rows.remove(row)
                self._queued -= 1
                row.stream._put(_END)
            if not rows:
                del self._waiting[request]
                self._last_turn.pop(request, None)
        while self._waiting and len(self._rows) < self.max_batch:
            self._admit(self._turn())
        while self._waiting:
            held = Counter(row.request for row in self._rows)
            turn = self._turn()
            richest, most = held.most_common(1)[0]
            if held[turn] > 0 or most < 2:
                return
            row = next(r for r in reversed(self._rows) if r.request == richest)
            self._vacate(row)
            row.fed = row.start  # its cache slot is gone: the window is encoded again on return
            self._waiting.setdefault(richest, deque()).appendleft(row)
            self._last_turn[richest] = next(self._admissions)
            self._queued += 1
            self._admit(turn)

    def _turn(self) -> int:
        """The waiting request to admit a row of next: the one holding the fewest slots, then the
        one whose last turn is oldest (a new request's first), then the first to arrive."""
        held = Counter(row.request for row in self._rows)
        return min(self._waiting, key=lambda r: (held[r], self._last_turn.get(r, -1), r))

    def _admit(self, request: int) -> None:
        """Give a slot to the next waiting row of `request`."""
        rows = self._waiting[request]
        self._rows.append(rows.popleft())
        self._queued -= 1
        self._last_turn[request] = next(self._admissions)
        if not rows:
            del self._waiting[request]
            del self._last_turn[request]

    def _step(self) -> None:
        """One new token for every row: the rows that continue their window go through one
        batched forward pass at their own positions; rows with a new window (a fresh prompt, or
        one that slid) are encoded alone. A row whose pass or draw fails ends with the error."""
        self._drop_closed()
        if not self._rows:
            return
        for row in self._rows:
            if len(row.history) - row.start > self.block_size:  # full: keep the last half block
                row.start = len(row.history) - max(1, self.block_size // 2)
                row.fed = row.start
        self._partition(lambda row: row.fed > row.start)
        decoding = sum(1 for row in self._rows if row.fed > row.start)
        outcomes: list[torch.Tensor | Exception] = []
        if decoding:
            try:
                outcomes.extend(self._decode(0, decoding))
            except Exception:  # out of memory, or one bad row: each row alone, so only a bad one fails
                for i in range(decoding):
                    try:
                        outcomes.extend(self._decode(i, i + 1))
                    except Exception as exc:
                        outcomes.append(exc)
        for i in range(decoding, len(self._rows)):
            try:
                outcomes.append(self._encode(i))
            except Exception as exc:
                outcomes.append(exc)
        failed: list[tuple[_Row, Exception]] = []
        for row, outcome in zip(self._rows, outcomes, strict=True):
            if isinstance(outcome, Exception):
                failed.append((row, outcome))
                continue
            try:
                token = int(sample_next(outcome[None].float(), row.stream.sampling, row.generator)[0])
            except Exception as exc:
                failed.append((row, exc))
                continue
            row.fed = len(row.history)
            row.history.append(token)
            row.stream.generated += 1
            row.stream._put(token)
            if token == self.eot_id:
                row.stream.finish_reason = "stop"
            elif row.stream.generated >= row.stream.sampling.max_new_tokens:
                row.stream.finish_reason = "length"
        for row, error in failed:
            self._fail(row, error)
        for row in [r for r in self._rows if r.stream.finish_reason is not None]:
            self._remove(row)

    def _decode(self, first: int, stop: int) -> list[torch.Tensor]:
        """Next-token logits (V,) of rows first..stop-1, each continuing its cached window."""
        rows = self._rows[first:stop]
        idx = torch.tensor([[row.history[-1]] for row in rows], dtype=torch.long, device=self.device)
        pos = torch.tensor([row.fed - row.start for row in rows], dtype=torch.long, device=self.device)
        out, _ = self.model(idx, cache=self.cache.rows(first, stop), positions=pos)
        return list(out[:, -1])

    def _encode(self, i: int) -> torch.Tensor:
        """Next-token logits (V,) of row i, its window encoded anew into its slot."""
        row = self._rows[i]
        idx = torch.tensor([row.history[row.start :]], dtype=torch.long, device=self.device)
        out, _ = self.model(idx, cache=self.cache.rows(i, i + 1))
        return out[0, -1]

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

    def _vacate(self, row: _Row) -> None:
        """Take a row out of its slot, which the last row takes (rows in use stay 0..n-1)."""
        i = self._rows.index(row)
        last = len(self._rows) - 1
        if i != last:
            self.cache.k[:, i] = self.cache.k[:, last]
            self.cache.v[:, i] = self.cache.v[:, last]
            self._rows[i] = self._rows[last]
        self._rows.pop()

    def _remove(self, row: _Row) -> None:
        """End a row's stream and free its slot."""
        self._vacate(row)
        row.stream._put(_END)

    def _fail(self, row: _Row, exc: BaseException) -> None:
        row.stream.error = exc
        row.stream.finish_reason = None
        self._remove(row)
