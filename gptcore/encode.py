"""Encoding a stream of documents into token ids on every core, in order, in bounded memory.

`tokenize_to_file(path, texts, tokenizer, workers)` is the tokenize stage's engine: it writes what
`encode_documents(texts, tokenizer, workers)` yields into a token file (gptcore.tokens).

`encode_documents` yields `EncodedBlock`s: the ids of consecutive
documents, each followed by the <|endoftext|> id, ready to append to a token file. The blocks are
cut from the stream by text length alone, each is encoded by one worker process, and the results
come back in stream order, so the concatenated ids are the same for any number of workers (1 runs
in this process, without a pool).

Memory stays flat on any corpus: at most `2 * workers` blocks of about BLOCK_CHARS characters are in
flight, and a document longer than PIECE_CHARS (a 200 MB one-line file) is encoded in pieces. A piece
ends just before a space that sits between two non-space characters: every pre-tokenizer we use
(GPT-2's regex and its successors, and the char kind) starts a new pre-token at such a space, so the
pieces encode exactly as the whole would. A stretch of PIECE_CHARS without such a space (a base64
blob) is cut at PIECE_CHARS, the same way on every run.

Workers are spawned (not forked: the parent may hold threads and torch state) and import only this
module and the tokenizer, not torch.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gptcore.errors import GptcoreError
from gptcore.tokenizer import Tokenizer, tokenizer_from_dict
from gptcore.tokens import TokenFileSummary, TokenWriter

BLOCK_CHARS = 1 << 20  # characters per block: ~0.1-0.3 s of BPE work, enough to hide the hand-off
PIECE_CHARS = 1 << 20  # longer documents are encoded in pieces of at most this many characters
# each worker process holds ~80-95 MB (interpreter, numpy, tiktoken, blocks in hand): measured by
# benchmarks/data_memory.py, the whole stage is ~100 MB + ~95 MB per worker, so 8 keeps it under 1 GB
MAX_DEFAULT_WORKERS = 8
CUT_SEARCH = 1 << 16  # how far back from PIECE_CHARS a piece looks for a space to end before


@dataclass(frozen=True)
class EncodedBlock:
    """Token ids of a run of documents, each followed by eot; a long document may span blocks."""

    ids: np.ndarray  # 1-D uint32 (every vocabulary we write fits; half the bytes of int64 to ship)
    documents: int  # documents that end in this block (one eot each)
    source_bytes: int  # UTF-8 bytes of the text encoded in this block
    characters: int  # characters of the text encoded in this block


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
    if workers == 1:
        for block in blocks:
            yield _encode_block(tokenizer, block)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(tokenizer.to_dict(),)
    ) as pool:
        pending: collections.deque[concurrent.futures.Future[EncodedBlock]] = collections.deque()
        try:
            for block in blocks:
                pending.append(pool.submit(_encode_in_worker, block))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except concurrent.futures.process.BrokenProcessPool:
            raise GptcoreError(
                "a tokenize worker process died (killed, or out of memory?); "
                "re-run, or lower tokenize.workers"
            ) from None
        finally:
            for future in pending:  # an error or an early stop: drop the queued work
                future.cancel()


def piece_ends(text: str, limit: int = PIECE_CHARS) -> list[int]:
    """Where a long text is cut into pieces of at most `limit` characters (rules: module docstring).

    Returns the end offsets of the pieces, the last being len(text)."""
    ends: list[int] = []
    start, n = 0, len(text)
    while n - start > limit:
        end = start + limit
        cut = end
        lo = max(start + 1, end - CUT_SEARCH)
        i = text.rfind(" ", lo, end)
        while i > lo:
            if not text[i - 1].isspace() and not text[i + 1].isspace():
                cut = i
                break
            i = text.rfind(" ", lo, i)
        ends.append(cut)
        start = cut
    ends.append(n)
    return ends


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
    texts = [text for text, _ in block]
    eot = np.array([tokenizer.eot_id], dtype=np.uint32)
    parts: list[np.ndarray] = []
    documents = 0
    for (_, ends), ids in zip(block, tokenizer.encode_batch(texts), strict=True):
        parts.append(ids)
        if ends:
            parts.append(eot)
            documents += 1
    return EncodedBlock(
        ids=np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32),
        documents=documents,
        source_bytes=sum(len(t.encode("utf-8", "surrogatepass")) for t in texts),
        characters=sum(len(t) for t in texts),
    )


_worker_tokenizer: Tokenizer | None = None


def _start_worker(description: dict[str, Any]) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer_from_dict(description)


def _encode_in_worker(block: Block) -> EncodedBlock:
    assert _worker_tokenizer is not None, "worker started without a tokenizer"
    return _encode_block(_worker_tokenizer, block)


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
