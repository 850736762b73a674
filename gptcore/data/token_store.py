"""The HDF5 token store: writing token files, reading them memory-mapped, and drawing batches.

A token file (`data/tokens/{train,val}.h5`) holds one 1-D dataset `tokens`: every document's ids
followed by the <|endoftext|> id, documents in split-file order. Its dtype is little-endian uint16
when the vocabulary fits (vocab_size <= 65536), else uint32. The layout is contiguous, never chunked
or compressed, so a reader memory-maps the raw bytes at `dset.id.get_offset()` and pays nothing to
open a file of billions of tokens. Attributes on the file root:

    format_version  int   FORMAT_VERSION
    vocab_size      int   ids lie in 0 .. vocab_size - 1
    eot_id          int   the id appended after each document
    documents       int   documents written
    tokens          int   length of `tokens` (document ids plus one eot per document)
    source_bytes    int   UTF-8 bytes of the documents' text; absent when unknown
    tokenizer       str   JSON of the tokenizer identity {kind, vocab_size, sha256}
    tokens_sha256   str   sha256 of the dataset's raw bytes, so training can tell one token
                          file from another without reading it (absent in older files)

The same documents give a byte-identical file: no timestamps, a fixed order of writes.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from gptcore.atomic import atomic_file, free_bytes
from gptcore.errors import DISK_FULL_ERRNOS, DataError, DiskFullError

if TYPE_CHECKING:
    import torch


FORMAT_VERSION = 1
DATASET = "tokens"
REQUIRED_ATTRS = ("format_version", "vocab_size", "eot_id", "documents", "tokens", "tokenizer")
# tokens copied per step from the temporary raw file into the HDF5 dataset (8 MiB of uint16)
COPY_BLOCK = 4 * 1024 * 1024

TokenIds = Sequence[int] | np.ndarray


def token_dtype(vocab_size: int) -> np.dtype:
    """The on-disk dtype of a vocabulary's ids: uint16 when they fit, else uint32 (little-endian)."""
    if not 0 < vocab_size <= 2**32:
        raise ValueError(f"vocab_size {vocab_size} is out of range (1 .. 2**32)")
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


@dataclass(frozen=True)
class TokenFileSummary:
    """What a token file holds, as counted while writing it."""

    tokens: int
    documents: int
    source_bytes: int | None

    @property
    def bytes_per_token(self) -> float | None:
        """UTF-8 bytes of text per token (eot included): the tokenizer's compression."""
        if self.source_bytes is None or self.tokens == 0:
            return None
        return self.source_bytes / self.tokens


class TokenWriter:
    """Stream documents' token ids into a token file, in bounded memory, written atomically.

        with TokenWriter(path, vocab_size=..., eot_id=..., tokenizer_identity=tok.identity) as w:
            for text in texts:
                w.add_document(tok.encode(text), source_bytes=len(text.encode("utf-8")))
        w.summary  # TokenFileSummary

    Ids go to an anonymous temporary file beside `path` as they come; on a clean exit the HDF5
    file is built from it (its length is known only then, and a contiguous dataset needs it up
    front). On an exception nothing is written and the temporary data is dropped.
    """

    def __init__(
        self, path: Path | str, *, vocab_size: int, eot_id: int, tokenizer_identity: dict[str, Any]
    ) -> None:
        self.path = Path(path)
        self.vocab_size = vocab_size
        self.dtype = token_dtype(vocab_size)
        if not 0 <= eot_id < vocab_size:
            raise ValueError(f"eot_id {eot_id} is outside the vocabulary (0..{vocab_size - 1})")
        self.eot_id = eot_id
        self.tokenizer_identity = dict(tokenizer_identity)
        self.summary: TokenFileSummary | None = None
        self._eot = np.array([eot_id], dtype=self.dtype).tobytes()
        self._tokens = 0
        self._documents = 0
        self._source_bytes: int | None = 0
        self._raw: Any = None

    def __enter__(self) -> TokenWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._raw = tempfile.TemporaryFile(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".raw")
        return self

    def add_document(self, ids: TokenIds, source_bytes: int | None = None) -> None:
        """Append one document's ids and then the eot id. `source_bytes`: UTF-8 bytes of its text;
        the file's total is recorded only if every document gave it."""
        if self._raw is None:
            raise RuntimeError("TokenWriter.add_document outside its `with` block")
        arr = np.asarray(ids)
        if arr.size:
            self._check_range(arr)
            self._raw.write(arr.astype(self.dtype, copy=False).tobytes())
        self._raw.write(self._eot)
        self._tokens += arr.size + 1
        self._documents += 1
        if source_bytes is None or self._source_bytes is None:
            self._source_bytes = None
        else:
            self._source_bytes += source_bytes

    def add_block(self, ids: np.ndarray, documents: int, source_bytes: int) -> None:
        """Append ids that already hold their documents' eot ids (`gptcore.data.encode.EncodedBlock`)."""
        if self._raw is None:
            raise RuntimeError("TokenWriter.add_block outside its `with` block")
        if ids.size:
            self._check_range(ids)
            self._raw.write(ids.astype(self.dtype, copy=False).tobytes())
        self._tokens += ids.size
        self._documents += documents
        if self._source_bytes is not None:
            self._source_bytes += source_bytes

    def _check_range(self, arr: np.ndarray) -> None:
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"document ids must be a 1-D sequence of integers, got {arr.dtype} {arr.shape}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self._finish()
            elif isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
                # the ids' temporary file filled the disk: name the token file, not the temporary
                raise DiskFullError(self.path, self._raw.tell(), free_bytes(self.path.parent)) from None
        finally:
            self._raw.close()
            self._raw = None

    def _finish(self) -> None:
        raw, n = self._raw, self._tokens
        raw.flush()
        raw.seek(0)
        # the ids and a few KB of HDF5 structure: the size a full-disk error says the file needs
        expected = n * self.dtype.itemsize + (1 << 12)
        with atomic_file(self.path, expected) as tmp, h5py.File(tmp, "w") as f:
            # track_times=False: a creation timestamp would make identical inputs differ
            dset = f.create_dataset(DATASET, shape=(n,), dtype=self.dtype, track_times=False)
            digest = hashlib.sha256()
            for start in range(0, n, COPY_BLOCK):
                data = raw.read(COPY_BLOCK * self.dtype.itemsize)
                digest.update(data)
                block = np.frombuffer(data, dtype=self.dtype)
                dset[start : start + len(block)] = block
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            f.attrs["vocab_size"] = np.int64(self.vocab_size)
            f.attrs["eot_id"] = np.int64(self.eot_id)
            f.attrs["documents"] = np.int64(self._documents)
            f.attrs["tokens"] = np.int64(n)
            if self._source_bytes is not None:
                f.attrs["source_bytes"] = np.int64(self._source_bytes)
            f.attrs["tokenizer"] = json.dumps(self.tokenizer_identity, sort_keys=True)
            f.attrs["tokens_sha256"] = digest.hexdigest()
        self.summary = TokenFileSummary(n, self._documents, self._source_bytes)


class TokenStore:
    """A token file opened for reading: validated metadata and a read-only memory map of the ids.

    The HDF5 file is closed once opened (the map reads the raw bytes), so a store is cheap to
    keep, to share with forked data-loader workers, and to open many times.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path} not found: run the tokenize stage first")
        if not h5py.is_hdf5(self.path):
            raise DataError(f"{self.path} is not an HDF5 file: re-run the tokenize stage")
        try:
            with h5py.File(self.path, "r") as f:
                self._read(f)
        except OSError as exc:  # truncated or damaged past the superblock
            raise DataError(
                f"{self.path} cannot be read as HDF5 ({exc}): re-run the tokenize stage"
            ) from None

    def _fail(self, what: str) -> DataError:
        return DataError(f"{self.path}: {what}; re-run the tokenize stage")

    def _read(self, f: h5py.File) -> None:
        dset = f.get(DATASET)
        if not isinstance(dset, h5py.Dataset):
            raise self._fail(f"no '{DATASET}' dataset, so not a gptcore token file")
        if dset.ndim != 1:
            raise self._fail(f"'{DATASET}' has shape {dset.shape}, expected 1-D")
        if dset.dtype not in (np.dtype("<u2"), np.dtype("<u4")):
            raise self._fail(f"'{DATASET}' has dtype {dset.dtype}, expected uint16 or uint32")
        missing = [name for name in REQUIRED_ATTRS if name not in f.attrs]
        if missing:
            raise self._fail(f"attribute '{missing[0]}' is missing")
        attrs = {name: f.attrs[name] for name in f.attrs}
        if int(attrs["format_version"]) != FORMAT_VERSION:
            raise self._fail(f"format_version {attrs['format_version']} is not {FORMAT_VERSION}")
        self.format_version = FORMAT_VERSION
        self.vocab_size = int(attrs["vocab_size"])
        self.eot_id = int(attrs["eot_id"])
        self.documents = int(attrs["documents"])
        self.tokens = int(attrs["tokens"])
        self.source_bytes: int | None = int(attrs["source_bytes"]) if "source_bytes" in attrs else None
        try:
            self.tokenizer: dict[str, Any] = json.loads(attrs["tokenizer"])
        except (TypeError, json.JSONDecodeError):
            raise self._fail(f"attribute 'tokenizer' is not JSON: {attrs['tokenizer']!r}") from None
        self._sha256: str | None = str(attrs["tokens_sha256"]) if "tokens_sha256" in attrs else None
        if self.tokens != dset.shape[0]:
            raise self._fail(f"attribute tokens = {self.tokens} but the dataset holds {dset.shape[0]}")
        if self.vocab_size > np.iinfo(dset.dtype).max + 1:
            raise self._fail(f"vocab_size {self.vocab_size} does not fit its dtype {dset.dtype}")
        self.array = self._map(dset)

    def _map(self, dset: h5py.Dataset) -> np.ndarray:
        offset = dset.id.get_offset()
        # get_offset is None for chunked layouts and for storage never written (empty dataset)
        if offset is None or dset.chunks is not None or dset.compression is not None:
            array = dset[()] if dset.shape[0] else np.empty(0, dtype=dset.dtype)
            array.setflags(write=False)
            return array
        return np.memmap(self.path, dtype=dset.dtype, mode="r", offset=offset, shape=dset.shape)

    def __len__(self) -> int:
        return self.tokens

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, tokens={self.tokens}, documents={self.documents})"

    def sha256(self) -> str:
        """sha256 of the token ids' raw bytes: recorded by the writer, computed for older files."""
        if self._sha256 is None:
            digest = hashlib.sha256()
            for start in range(0, self.tokens, COPY_BLOCK):
                digest.update(np.ascontiguousarray(self.array[start : start + COPY_BLOCK]).tobytes())
            self._sha256 = digest.hexdigest()
        return self._sha256

    def check_vocab(self, identity: dict[str, Any]) -> None:
        """Refuse to use these tokens with another vocabulary than the one that made them."""
        if dict(identity) != self.tokenizer:
            raise DataError(
                f"{self.path} was tokenized with vocabulary {self.tokenizer}, but the current one is "
                f"{dict(identity)}: re-run the tokenize stage (dvc repro)"
            )

    def _need(self, tokens: int) -> None:
        if self.tokens < tokens:
            raise DataError(
                f"{self.path} holds {self.tokens} tokens, fewer than the {tokens} one window needs: "
                "use a smaller block_size or more data"
            )

    def random_windows(
        self, batch_size: int, block_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch: `batch_size` windows at random positions, inputs and next-token targets.

        Returns int64 tensors x, y of shape (B, T), y[:, t] == x[:, t + 1]. Positions come from
        torch.randint with `generator` (a CPU generator), so a seed fixes every batch."""
        import torch  # here, not at the top: tokenize's worker processes import this module

        self._need(block_size + 1)
        starts = torch.randint(self.tokens - block_size, (batch_size,), generator=generator).numpy()
        # (B, 1) + (T+1,) -> (B, T+1) positions, gathered from the map in one numpy call
        picked = self.array[starts[:, None] + np.arange(block_size + 1)]
        windows = torch.from_numpy(picked.astype(np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def sequential_windows(
        self, block_size: int, max_tokens: int | None = None, batch_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Evaluation batches in which every token is a target exactly once.

        Over the first `max_tokens` tokens (all when None), windows of block_size + 1 tokens start
        every block_size tokens, so consecutive windows share one token: the target of one is the
        first input of the next. Token 0 is never a target (nothing precedes it), so m tokens give
        m - 1 targets. Yields int64 (x, y) of shape (b, block_size), b <= batch_size; a last,
        shorter window (fewer than block_size targets) comes alone as shape (1, t)."""
        import torch

        if block_size < 1 or batch_size < 1:
            raise ValueError(f"block_size ({block_size}) and batch_size ({batch_size}) must be >= 1")
        m = self.tokens if max_tokens is None else min(self.tokens, max_tokens)
        full = max(m - 1, 0) // block_size
        for first in range(0, full, batch_size):
            count = min(batch_size, full - first)
            # windows first .. first+count-1 span tokens first*T .. (first+count)*T inclusive
            span = torch.from_numpy(
                self.array[first * block_size : (first + count) * block_size + 1].astype(np.int64)
            )
            yield span[:-1].view(count, block_size), span[1:].clone().view(count, block_size)
        tail = self.array[full * block_size : m]
        if len(tail) >= 2:
            rest = torch.from_numpy(tail.astype(np.int64))
            yield rest[None, :-1].clone(), rest[None, 1:].clone()
