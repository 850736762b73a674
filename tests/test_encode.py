"""Specification of gptcore.data.encode: parallel encoding that never changes the tokens."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from gptcore.data import encode
from gptcore.data.encode import encode_documents, piece_ends, tokenize_to_file
from gptcore.data.token_store import TokenStore
from gptcore.errors import DataError, GptcoreError
from gptcore.tokenizer import BpeTokenizer, CharTokenizer

WORDS = ["the", "king", "  ", "queen,", "\n", "crown", "\t", "to", "be", "or", "not", "é", "🙂"]


def corpus(seed: int, documents: int, mean_words: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 2 * mean_words))) for _ in range(documents)
    ]


def expected_ids(texts: list[str], tokenizer: CharTokenizer) -> np.ndarray:
    out: list[int] = []
    for text in texts:
        out += tokenizer.encode(text) + [tokenizer.eot_id]
    return np.array(out, dtype=np.int64)


def concat(blocks: Iterator[encode.EncodedBlock]) -> tuple[np.ndarray, int, int]:
    blocks = list(blocks)
    ids = np.concatenate([b.ids for b in blocks]).astype(np.int64)
    return ids, sum(b.documents for b in blocks), sum(b.source_bytes for b in blocks)


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


TEXTS = corpus(1, documents=800, mean_words=900)  # ~3 MB: several blocks, so workers share them
TOKENIZER = CharTokenizer.train(TEXTS)


@pytest.mark.parametrize("workers", [1, 2])
def test_blocks_hold_every_document_in_order_each_followed_by_eot(workers: int) -> None:
    ids, documents, source_bytes = concat(encode_documents(TEXTS, TOKENIZER, workers))
    np.testing.assert_array_equal(ids, expected_ids(TEXTS, TOKENIZER))
    assert documents == len(TEXTS)
    assert source_bytes == sum(len(t.encode()) for t in TEXTS)


@pytest.mark.slow
def test_token_files_are_byte_identical_for_any_number_of_workers(tmp_path: Path) -> None:
    digests = set()
    for workers in (1, 2, 3):
        path = tmp_path / f"w{workers}.h5"
        summary = tokenize_to_file(path, iter(TEXTS), TOKENIZER, workers)
        assert summary.documents == len(TEXTS)
        digests.add(file_sha(path))
    assert len(digests) == 1
    store = TokenStore(tmp_path / "w2.h5")
    np.testing.assert_array_equal(np.asarray(store.array, dtype=np.int64), expected_ids(TEXTS, TOKENIZER))


def test_an_error_in_the_document_stream_propagates_and_writes_nothing(tmp_path: Path) -> None:
    def broken() -> Iterator[str]:
        yield from TEXTS[:300]
        raise DataError("data/split/train.jsonl.zst, line 301: not a split-file record")

    with pytest.raises(DataError, match="line 301"):
        tokenize_to_file(tmp_path / "t.h5", broken(), TOKENIZER, workers=2)
    assert list(tmp_path.iterdir()) == []


def test_zero_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="workers"):
        list(encode_documents(["a"], TOKENIZER, 0))


def test_the_stream_is_read_lazily_with_a_bounded_number_of_blocks_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encode, "BLOCK_CHARS", 10)
    pulled = 0

    def counting() -> Iterator[str]:
        nonlocal pulled
        for _ in range(10_000):
            pulled += 1
            yield "x" * 10  # one block per document

    blocks = encode_documents(counting(), TOKENIZER, workers=1)
    next(blocks)
    assert pulled <= 2


# -- long documents in pieces


def test_piece_ends_cut_before_a_space_between_two_words() -> None:
    text = "aaaa bbbb cccc dddd"
    ends = piece_ends(text, limit=8)
    assert ends[-1] == len(text)
    starts = [0, *ends[:-1]]
    for start, end in zip(starts, ends, strict=True):
        assert 0 < end - start <= 8
    for cut in ends[:-1]:
        assert text[cut] == " " and not text[cut - 1].isspace() and not text[cut + 1].isspace()


def test_piece_ends_avoid_whitespace_runs_and_fall_back_to_the_limit() -> None:
    assert piece_ends("ab  cd ef", limit=7) == [6, 9]  # not inside "  ": before " ef"
    assert piece_ends("x" * 25, limit=10) == [10, 20, 25]  # no space at all: cut at the limit


def test_a_document_longer_than_a_piece_is_encoded_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "PIECE_CHARS", 1000)
    monkeypatch.setattr(encode, "BLOCK_CHARS", 1500)
    texts = [TEXTS[0] * 3, "short", TEXTS[1]]
    blocks = list(encode_documents(texts, TOKENIZER, workers=1))
    assert len(texts[0]) > 2000 and blocks[0].documents == 0  # the first document spans blocks
    ids, documents, _ = concat(iter(blocks))
    np.testing.assert_array_equal(ids, expected_ids(texts, TOKENIZER))
    assert documents == 3


def test_a_worker_that_dies_is_a_clear_error_not_a_hang() -> None:
    def texts() -> Iterator[str]:
        for _ in range(12):
            yield "x" * encode.BLOCK_CHARS

    # a worker killed from outside (the OOM killer, say) breaks the pool: the run must stop, clearly
    blocks = encode_documents(texts(), TOKENIZER, workers=2)
    first = next(blocks)
    assert first.documents == 1
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
    with pytest.raises(GptcoreError, match="worker process died"):
        list(blocks)


# -- BPE: one tiktoken call a block, on threads

# texts whose ends test the pre-tokenizer's lookaheads (`\s+(?!\S)`, `\s++$`) at every document
# boundary: trailing spaces and newlines, leading ones, empty documents, digits, apostrophes
BPE_PIECES = ["the", " king", "  ", "\n", "\n\n", " 's", "'ll", "42", "é", "🙂", "\t", "queen,", " "]
BPE = BpeTokenizer.train(["the king's crown 42 queen, é 🙂\n\n  to be or not"] * 20, 300)


def bpe_corpus(seed: int, documents: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(BPE_PIECES) for _ in range(rng.randint(0, 60))) for _ in range(documents)]


def bpe_expected(texts: list[str]) -> np.ndarray:
    out: list[int] = []
    for text in texts:
        out += BPE.encoding.encode_ordinary(text) + [BPE.eot_id]
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_bpe_blocks_encode_every_document_as_encode_ordinary_would(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encode, "BLOCK_CHARS", 500)  # many blocks, so the threads share them
    texts = bpe_corpus(seed=workers, documents=400)
    ids, documents, source_bytes = concat(encode_documents(texts, BPE, workers))
    np.testing.assert_array_equal(ids, bpe_expected(texts))
    assert documents == len(texts) and source_bytes == sum(len(t.encode()) for t in texts)


def test_bpe_text_holding_the_endoftext_string_or_a_lone_surrogate_is_ordinary_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encode, "BLOCK_CHARS", 40)
    texts = ["before <|endoftext|> after", "a lone surrogate \ud800 here", "plain", *bpe_corpus(9, 20)]
    ids, documents, _ = concat(encode_documents(texts, BPE, workers=2))
    # tiktoken's own rule for a lone surrogate: U+FFFD in its place
    np.testing.assert_array_equal(
        ids, bpe_expected([t.encode("utf-16", "surrogatepass").decode("utf-16", "replace") for t in texts])
    )
    assert documents == len(texts)
    assert np.count_nonzero(ids == BPE.eot_id) == len(texts)  # only the eot appended to each


def test_bpe_endoftext_string_cut_between_two_pieces_is_ordinary_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(encode, "PIECE_CHARS", 30)
    text = "y" * 28 + "<|endoftext|>" + "z" * 10  # no space: cut at 30 characters, inside the string
    assert piece_ends(text, 30) == [30, len(text)]
    ids, documents, _ = concat(encode_documents([text, "after"], BPE, workers=1))
    pieces = BPE.encoding.encode_ordinary(text[:30]) + BPE.encoding.encode_ordinary(text[30:])
    np.testing.assert_array_equal(
        ids, pieces + [BPE.eot_id] + BPE.encoding.encode_ordinary("after") + [BPE.eot_id]
    )
    assert documents == 2


def test_bpe_token_files_are_byte_identical_for_any_number_of_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encode, "BLOCK_CHARS", 2000)
    texts = bpe_corpus(seed=4, documents=3000)
    digests = set()
    for workers in (1, 2, 4):
        tokenize_to_file(tmp_path / f"w{workers}.h5", iter(texts), BPE, workers)
        digests.add(file_sha(tmp_path / f"w{workers}.h5"))
    assert len(digests) == 1
    np.testing.assert_array_equal(
        np.asarray(TokenStore(tmp_path / "w2.h5").array, dtype=np.int64), bpe_expected(texts)
    )


def test_bpe_threads_pass_an_error_in_the_stream_on_and_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "BLOCK_CHARS", 100)

    def broken() -> Iterator[str]:
        yield from bpe_corpus(seed=1, documents=50)
        raise DataError("data/split/train.jsonl.zst, line 51: not a split-file record")

    with pytest.raises(DataError, match="line 51"):
        list(encode_documents(broken(), BPE, workers=2))
    assert not [t for t in threading.enumerate() if t.name.startswith("tokenize")]  # no thread left behind


def test_bpe_threads_read_the_stream_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "BLOCK_CHARS", 10)
    pulled = 0

    def counting() -> Iterator[str]:
        nonlocal pulled
        for _ in range(10_000):
            pulled += 1
            yield "the king " * 2  # one block per document

    blocks = encode_documents(counting(), BPE, workers=2)
    next(blocks)
    assert pulled <= 4  # the block handed back, one per thread, and one queued
    blocks.close()
