"""Tests of gptcore.data.token_store: writing token files, reading them back, and drawing windows."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import write_token_file

from gptcore.data.encode import tokenize_to_file
from gptcore.data.split import Document, write_split_file
from gptcore.data.token_store import (
    FORMAT_VERSION,
    TokenStore,
    TokenWriter,
    token_dtype,
)
from gptcore.errors import DataError
from gptcore.tokenizer import CharTokenizer

REPO = Path(__file__).resolve().parents[1]
IDENTITY = {"kind": "char", "vocab_size": 50, "sha256": "0" * 64}


def write(path: Path, docs: list[list[int]], vocab_size: int = 50, **kw: object) -> Path:
    eot = vocab_size - 1
    identity = {**IDENTITY, "vocab_size": vocab_size}
    write_token_file(path, docs, vocab_size=vocab_size, eot_id=eot, tokenizer_identity=identity, **kw)
    return path


def random_docs(seed: int, n: int = 40, vocab: int = 49) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, int(rng.integers(0, 300))).tolist() for _ in range(n)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_documents_are_stored_in_order_each_followed_by_eot(tmp_path: Path) -> None:
    store = TokenStore(write(tmp_path / "t.h5", [[1, 2, 3], [], [4]], source_bytes=7))
    assert store.array.tolist() == [1, 2, 3, 49, 49, 4, 49]
    assert (len(store), store.tokens, store.documents, store.source_bytes) == (7, 7, 3, 7)
    assert (store.vocab_size, store.eot_id, store.format_version) == (50, 49, FORMAT_VERSION)
    assert store.tokenizer == IDENTITY


def test_token_file_is_byte_identical_for_same_input(tmp_path: Path) -> None:
    docs = random_docs(0)
    a = write(tmp_path / "a.h5", docs, source_bytes=123)
    time.sleep(1.1)  # HDF5 timestamps have 1 s resolution: a recorded time would now differ
    b = write(tmp_path / "b.h5", [np.array(d, dtype=np.int32) for d in docs], source_bytes=123)
    assert sha256(a) == sha256(b)
    c = write(tmp_path / "c.h5", random_docs(1), source_bytes=123)
    assert sha256(a) != sha256(c)


def test_the_file_records_the_sha256_of_its_token_bytes(tmp_path: Path) -> None:
    docs = random_docs(2)
    store = TokenStore(write(tmp_path / "t.h5", docs))
    expected = hashlib.sha256(store.array.astype("<u2").tobytes()).hexdigest()
    assert store.sha256() == expected
    assert TokenStore(write(tmp_path / "u.h5", random_docs(3))).sha256() != expected


def test_sha256_of_a_file_written_without_it_is_computed_the_same(tmp_path: Path) -> None:
    path = write(tmp_path / "t.h5", random_docs(2))
    recorded = TokenStore(path).sha256()
    with h5py.File(path, "r+") as f:
        del f.attrs["tokens_sha256"]
    assert TokenStore(path).sha256() == recorded


def test_dataset_is_contiguous_and_memory_mapped(tmp_path: Path) -> None:
    path = write(tmp_path / "t.h5", random_docs(0))
    with h5py.File(path, "r") as f:
        dset = f["tokens"]
        assert dset.chunks is None and dset.compression is None
        assert dset.id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS
        expected = dset[()]
    store = TokenStore(path)
    assert isinstance(store.array, np.memmap)
    assert not store.array.flags.writeable
    assert np.array_equal(store.array, expected)


def test_uint16_when_vocab_fits(tmp_path: Path) -> None:
    assert token_dtype(65536) == np.uint16
    assert TokenStore(write(tmp_path / "t.h5", [[65535, 0]], vocab_size=65536)).array.dtype == np.uint16


def test_uint32_when_vocab_does_not_fit(tmp_path: Path) -> None:
    assert token_dtype(65537) == np.uint32
    store = TokenStore(write(tmp_path / "t.h5", [[65536, 70000]], vocab_size=100277))
    assert store.array.dtype == np.uint32
    assert store.array.tolist() == [65536, 70000, 100276]


def test_out_of_range_ids_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    for bad in ([1, 50], [-1], [0.5]):
        with pytest.raises(ValueError):
            write(tmp_path / "t.h5", [[1, 2], bad])
        assert not (tmp_path / "t.h5").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind either


def test_unknown_source_bytes_is_recorded_as_absent(tmp_path: Path) -> None:
    assert TokenStore(write(tmp_path / "t.h5", [[1]])).source_bytes is None
    with TokenWriter(tmp_path / "w.h5", vocab_size=50, eot_id=49, tokenizer_identity=IDENTITY) as writer:
        writer.add_document([1], source_bytes=3)
        writer.add_document([2])
    assert writer.summary is not None and writer.summary.source_bytes is None
    assert TokenStore(tmp_path / "w.h5").source_bytes is None


def test_empty_token_file_reads_back_empty(tmp_path: Path) -> None:
    store = TokenStore(write(tmp_path / "t.h5", []))
    assert len(store) == 0 and store.array.shape == (0,)
    assert list(store.sequential_windows(8)) == []
    with pytest.raises(DataError, match="fewer than"):
        store.random_windows(2, 8, torch.Generator())


def test_random_windows_are_deterministic_for_a_seed_and_shifted_by_one(tmp_path: Path) -> None:
    store = TokenStore(write(tmp_path / "t.h5", random_docs(0)))
    tokens = torch.from_numpy(store.array.astype(np.int64))
    x1, y1 = store.random_windows(8, 16, torch.Generator().manual_seed(42))
    x2, y2 = store.random_windows(8, 16, torch.Generator().manual_seed(42))
    x3, _ = store.random_windows(8, 16, torch.Generator().manual_seed(43))
    assert x1.dtype == y1.dtype == torch.int64 and x1.shape == y1.shape == (8, 16)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    for row_x, row_y in zip(x1, y1, strict=True):  # each row is a real slice of the store
        starts = [s for s in range(len(tokens) - 16) if torch.equal(tokens[s : s + 16], row_x)]
        assert any(torch.equal(tokens[s + 1 : s + 17], row_y) for s in starts)


def test_random_windows_reach_the_last_token(tmp_path: Path) -> None:
    store = TokenStore(write(tmp_path / "t.h5", [list(range(5))]))  # 6 tokens: exactly one window of 5
    x, y = store.random_windows(4, 5, torch.Generator().manual_seed(0))
    assert x.tolist() == [[0, 1, 2, 3, 4]] * 4
    assert y.tolist() == [[1, 2, 3, 4, 49]] * 4
    with pytest.raises(DataError, match="fewer than the 7 one window needs"):
        store.random_windows(1, 6, torch.Generator())


@pytest.mark.parametrize("block_size", [1, 7, 16])
@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("max_tokens", [None, 1, 2, 100, 113, 10**9])
def test_sequential_windows_cover_every_token_once(
    tmp_path: Path, block_size: int, batch_size: int, max_tokens: int | None
) -> None:
    store = TokenStore(write(tmp_path / "t.h5", random_docs(3, n=5)))
    m = len(store) if max_tokens is None else min(len(store), max_tokens)
    xs, ys = [], []
    batches = list(store.sequential_windows(block_size, max_tokens, batch_size))
    for i, (x, y) in enumerate(batches):
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape and x.ndim == 2
        assert x.shape[0] <= batch_size
        assert x.shape[1] == block_size or (i == len(batches) - 1 and x.shape == (1, x.shape[1]))
        assert torch.equal(x[:, 1:], y[:, :-1])
        xs.append(x.flatten())
        ys.append(y.flatten())
    targets = torch.cat(ys).tolist() if ys else []
    inputs = torch.cat(xs).tolist() if xs else []
    assert targets == store.array[1:m].tolist()
    assert inputs == store.array[: max(m - 1, 0)].tolist()


def test_missing_or_corrupt_token_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.h5 not found: run the tokenize stage"):
        TokenStore(tmp_path / "nope.h5")

    (tmp_path / "text.h5").write_text("not hdf5", encoding="utf-8")
    with pytest.raises(DataError, match="text.h5 is not an HDF5 file"):
        TokenStore(tmp_path / "text.h5")

    good = write(tmp_path / "good.h5", random_docs(0))
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(DataError, match="truncated.h5"):
        TokenStore(truncated)

    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(DataError, match="empty.h5: no 'tokens' dataset"):
        TokenStore(tmp_path / "empty.h5")

    def variant(name: str, data: np.ndarray, drop: str | None = None) -> Path:
        path = tmp_path / name
        shutil.copy(good, path)
        with h5py.File(path, "r+") as f:
            del f["tokens"]
            f["tokens"] = data
            f.attrs["tokens"] = data.shape[0]
            if drop:
                del f.attrs[drop]
        return path

    with pytest.raises(DataError, match="wrong_dtype.h5: 'tokens' has dtype float32"):
        TokenStore(variant("wrong_dtype.h5", np.zeros(10, dtype=np.float32)))
    with pytest.raises(DataError, match="two_d.h5: 'tokens' has shape"):
        TokenStore(variant("two_d.h5", np.zeros((4, 4), dtype=np.uint16)))
    with pytest.raises(DataError, match="no_eot.h5: attribute 'eot_id' is missing"):
        TokenStore(variant("no_eot.h5", np.zeros(10, dtype=np.uint16), drop="eot_id"))

    path = tmp_path / "short.h5"
    shutil.copy(good, path)
    with h5py.File(path, "r+") as f:
        f.attrs["tokens"] = 5
    with pytest.raises(DataError, match="attribute tokens = 5 but the dataset holds"):
        TokenStore(path)


def test_chunked_dataset_is_read_into_memory(tmp_path: Path) -> None:
    path = write(tmp_path / "t.h5", random_docs(0))
    expected = TokenStore(path).array.tolist()
    with h5py.File(path, "r+") as f:
        del f["tokens"]
        f.create_dataset("tokens", data=np.array(expected, dtype=np.uint16), chunks=(64,), compression="gzip")
    store = TokenStore(path)
    assert not isinstance(store.array, np.memmap) and not store.array.flags.writeable
    assert store.array.tolist() == expected


def test_vocab_mismatch_is_refused(tmp_path: Path) -> None:
    store = TokenStore(write(tmp_path / "t.h5", [[1, 2]]))
    store.check_vocab(dict(IDENTITY))
    with pytest.raises(DataError, match="re-run the tokenize stage"):
        store.check_vocab({**IDENTITY, "sha256": "1" * 64})


def test_tokenize_to_file_encodes_documents_and_counts_utf8_bytes(tmp_path: Path) -> None:
    texts = ["héllo\n", "", "wörld <|endoftext|>"]
    tok = CharTokenizer.train(texts)
    summary = tokenize_to_file(tmp_path / "t.h5", iter(texts), tok)
    store = TokenStore(tmp_path / "t.h5")
    expected = [i for t in texts for i in [*tok.encode(t), tok.eot_id]]
    assert store.array.tolist() == expected
    assert summary.tokens == len(expected) and summary.documents == 3
    assert store.source_bytes == summary.source_bytes == sum(len(t.encode("utf-8")) for t in texts)
    assert summary.bytes_per_token == pytest.approx(summary.source_bytes / len(expected))
    store.check_vocab(tok.identity)


def test_build_vocab_and_tokenize_stages_write_their_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(REPO))  # stages/ is run as `python -m` from the repo root, not installed
    from stages import build_vocab, tokenize

    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["vocab"]["kind"] = "char"  # the counts below are of characters
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    train = [Document(f"doc{i}", f"Speak, speak {i}!\n" * (i + 1)) for i in range(20)]
    val = [Document("v", "Speak ¿unknown?\n")]
    write_split_file(tmp_path / "data/split/train.jsonl.zst", train)
    write_split_file(tmp_path / "data/split/val.jsonl.zst", val)
    monkeypatch.chdir(tmp_path)
    build_vocab.main()
    tokenize.main()

    report = json.loads((tmp_path / "reports/tokens.json").read_text(encoding="utf-8"))
    vocab = json.loads((tmp_path / "data/vocab/tokenizer.json").read_text(encoding="utf-8"))
    assert report["vocab_size"] == vocab["vocab_size"]
    train_store = TokenStore(tmp_path / "data/tokens/train.h5")
    val_store = TokenStore(tmp_path / "data/tokens/val.h5")
    assert report["train"]["documents"] == train_store.documents == 20
    assert report["val"] == {
        "tokens": 17,
        "documents": 1,
        "bytes_per_token": 1.0,
    }  # 16 chars + eot; ¿ is 2 bytes
    assert train_store.tokenizer == val_store.tokenizer == vocab["identity"]
    assert sorted(p.name for p in (tmp_path / "data/tokens").iterdir()) == ["train.h5", "val.h5"]
