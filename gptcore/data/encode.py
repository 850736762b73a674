"""Encoding a stream of documents into token ids on every core, in order, in bounded memory.

`tokenize_to_file(path, texts, tokenizer, workers)` is the tokenize stage's engine: it writes what
`encode_documents(texts, tokenizer, workers)` yields into a token file (gptcore.data.token_store).

`encode_documents` yields `EncodedBlock`s: the ids of consecutive
documents, each followed by the <|endoftext|> id, ready to append to a token file. The blocks are
cut from the stream by text length alone, each is encoded by one worker, and the results come back
in stream order, so the concatenated ids are the same for any number of workers (1 runs in this
thread, without a pool).

A BPE block (bpe and tiktoken kinds) is encoded by tiktoken in one call: its documents joined, each
followed by the <|endoftext|> string, and that string allowed as the special token, so that tiktoken
cuts the text there and encodes each document on its own, exactly as `encode_ordinary` would, and
hands back one array (no Python list of ints per document, which costs about as much as reading the
split file). A document that itself holds the <|endoftext|> string is ordinary text, and its block
is encoded a document at a time instead. tiktoken releases the GIL while it encodes, so BPE workers
are threads of this process: no process start, no copies of the text through pipes, and the main
thread reads the next block while they encode.

The char kind encodes in Python and numpy, which hold the GIL: its workers are processes, spawned
(not forked: the parent may hold threads and torch state), each importing only this module and the
tokenizer, not torch.

Memory stays flat on any corpus: at most `workers` + 1 blocks of about BLOCK_CHARS characters are
in flight, and a document longer than PIECE_CHARS (a 200 MB one-line file) is encoded in pieces. A
piece ends just before a space that sits between two non-space characters: every pre-tokenizer we
use (GPT-2's regex and its successors, and the char kind) starts a new pre-token at such a space, so
the pieces encode exactly as the whole would. A stretch of PIECE_CHARS without such a space (a
base64 blob) is cut at PIECE_CHARS, the same way on every run.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from gptcore.bpe import piece_ends
from gptcore.data.token_store import TokenFileSummary, TokenWriter
from gptcore.errors import GptcoreError
from gptcore.tokenizer import EOT, BpeTokenizer, Tokenizer, tokenizer_from_dict

BLOCK_CHARS = 1 << 20  # characters per block: enough BPE work per hand-off to hide its cost
PIECE_CHARS = 1 << 20  # longer documents are encoded in pieces of at most this many characters
# each char worker process holds its own interpreter, numpy and the blocks in hand; 8 keeps the
# stage within the data stages' 1 GB target (measured by benchmarks/data_memory.py: docs/data.md,
# "Data stages: time and memory")
MAX_DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class EncodedBlock:
    """Token ids of a run of documents, each followed by eot; a long document may span blocks."""

    ids: np.ndarray  # 1-D uint32 (every vocabulary we write fits; half the bytes of int64 to ship)
    documents: int  # documents that end in this block (one eot each)
    source_bytes: int  # UTF-8 bytes of the text encoded in this block


def default_workers() -> int:
    """One worker per core this process may run on, up to MAX_DEFAULT_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


def encode_documents(texts: Iterable[str], tokenizer: Tokenizer, workers: int = 1) -> Iterator[EncodedBlock]:
    """Encode `texts` in order; yields blocks whose ids concatenate to every document + eot."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    blocks = _blocks(texts)
    block: Block | None  # None: next() found the blocks exhausted
    if workers == 1:
        for block in blocks:
            yield _encode_block(tokenizer, block)
        return
    if isinstance(tokenizer, BpeTokenizer):
        yield from _encode_on_threads(blocks, tokenizer, workers)
        return
    with _Workers(workers, tokenizer.to_dict()) as pool:
        # block k goes to worker k % n, one block per worker at a time: results come back in order,
        # and a worker is only ever sent a block once it has handed back the previous one, so
        # neither side can block writing to a pipe the other is not reading
        sent = 0
        for block in itertools.islice(blocks, workers):
            pool.send(sent % workers, block)
            sent += 1
        for k in itertools.count():
            if k == sent:
                return
            result = pool.receive(k % workers)
            block = next(blocks, None)
            if block is not None:
                pool.send(sent % workers, block)
                sent += 1
            yield result


def _encode_on_threads(blocks: Iterator[Block], tokenizer: Tokenizer, workers: int) -> Iterator[EncodedBlock]:
    """Encode `blocks` on `workers` threads, in order: one block more than there are threads is
    queued, so that every thread has the next block at hand while this thread reads and writes."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="tokenize")
    pending: collections.deque[Future[EncodedBlock]] = collections.deque()
    try:
        for block in blocks:
            pending.append(pool.submit(_encode_block, tokenizer, block))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # an error, or a consumer that stopped early: drop the queued blocks, do not encode them
        pool.shutdown(wait=True, cancel_futures=True)


# a block: (text, whether the document ends with this text) pairs
Block = list[tuple[str, bool]]


def _blocks(texts: Iterable[str]) -> Iterator[Block]:
    block: Block = []
    chars = 0
    for text in texts:
        start = 0
        for end in piece_ends(text, PIECE_CHARS) if len(text) > PIECE_CHARS else [len(text)]:
            block.append((text[start:end], end == len(text)))
            chars += end - start
            start = end
            if chars >= BLOCK_CHARS:
                yield block
                block, chars = [], 0
    if block:
        yield block


def _encode_block(tokenizer: Tokenizer, block: Block) -> EncodedBlock:
    documents = sum(ends for _, ends in block)
    ids = _encode_joined(tokenizer, block, documents) if isinstance(tokenizer, BpeTokenizer) else None
    if ids is None:
        ids = _encode_each(tokenizer, block)
    return EncodedBlock(
        ids=ids,
        documents=documents,
        # an ASCII string knows it is ASCII: its length is its UTF-8 size, with no copy made
        source_bytes=sum(
            len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass")) for t, _ in block
        ),
    )


def _encode_joined(tokenizer: BpeTokenizer, block: Block, documents: int) -> np.ndarray | None:
    """The block's ids from one tiktoken call (module docstring), or None when the text itself holds
    the <|endoftext|> string, or a lone surrogate (which only `encode_ordinary` turns into U+FFFD)."""
    parts: list[str] = []
    for text, ends in block:
        parts.append(text)
        if ends:
            parts.append(EOT)
    joined = "".join(parts)
    # <|endoftext|> overlaps no shifted copy of itself, so the count finds every one in the text
    if joined.count(EOT) != documents:
        return None
    try:
        ids = tokenizer.encoding.encode_to_numpy(joined, allowed_special={EOT}, disallowed_special=())
    except UnicodeEncodeError:
        return None
    return ids.astype(np.uint32, copy=False)


def _encode_each(tokenizer: Tokenizer, block: Block) -> np.ndarray:
    eot = np.array([tokenizer.eot_id], dtype=np.uint32)
    parts: list[np.ndarray] = []
    for (_, ends), ids in zip(block, tokenizer.encode_batch([text for text, _ in block]), strict=True):
        parts.append(ids)
        if ends:
            parts.append(eot)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32)


class _Workers:
    """Encoding processes, each behind its own pipe. A worker that dies (killed, out of memory) is
    noticed at the next send or receive and stops the run with an error: never a hang."""

    def __init__(self, n: int, description: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[Connection] = []
        for _ in range(n):
            ours, theirs = context.Pipe(duplex=True)
            process = context.Process(target=_worker_main, args=(theirs, description), daemon=True)
            process.start()
            theirs.close()  # only the worker holds its end: if it dies, our reads and writes fail
            self.processes.append(process)
            self.pipes.append(ours)

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)  # asks the worker to stop
            pipe.close()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():  # still busy with a block nobody wants any more
                process.kill()
                process.join()

    def send(self, i: int, block: Block) -> None:
        try:
            self.pipes[i].send(block)
        except OSError:  # BrokenPipeError, ConnectionResetError: the worker is gone
            raise self._died(i) from None

    def receive(self, i: int) -> EncodedBlock:
        pipe, process = self.pipes[i], self.processes[i]
        wait([pipe, process.sentinel])  # whichever comes first: a result, or the worker's end
        status: str | None
        value: Any  # the EncodedBlock of "ok", the exception of "error"
        try:
            status, value = pipe.recv() if pipe.poll() else (None, None)
        except (EOFError, OSError):
            status, value = None, None
        if status == "ok":
            return value
        if status == "error":
            raise value
        raise self._died(i)

    def _died(self, i: int) -> GptcoreError:
        code = self.processes[i].exitcode
        return GptcoreError(
            f"a tokenize worker process died (exit code {code}: killed, or out of memory?); "
            "re-run, or lower tokenize.workers"
        )


def _worker_main(pipe: Connection, description: dict[str, Any]) -> None:
    tokenizer = tokenizer_from_dict(description)
    while True:
        try:
            block = pipe.recv()
        except EOFError:  # the parent is gone
            return
        if block is None:
            return
        try:
            result: tuple[str, Any] = ("ok", _encode_block(tokenizer, block))
        except Exception as exc:  # handed to the parent, which raises it
            result = ("error", exc)
        try:
            pipe.send(result)
        except OSError:  # the parent stopped listening (it failed, or stopped early)
            return


def tokenize_to_file(
    path: Path | str,
    texts: Iterable[str],
    tokenizer: Tokenizer,
    workers: int = 1,
    on_block: Callable[[EncodedBlock], None] | None = None,
) -> TokenFileSummary:
    """Encode documents' texts with `tokenizer` on `workers` processes and write them to a token
    file, streaming; `on_block` sees each block as it is written (for progress). The file is
    byte-identical for any number of workers."""
    with TokenWriter(
        path, vocab_size=tokenizer.vocab_size, eot_id=tokenizer.eot_id, tokenizer_identity=tokenizer.identity
    ) as writer:
        for block in encode_documents(texts, tokenizer, workers):
            writer.add_block(block.ids, block.documents, block.source_bytes)
            if on_block is not None:
                on_block(block)
    assert writer.summary is not None
    return writer.summary
