"""The train/val split: which document goes where, and the split files that hold them.

Split files store documents as zstd-compressed JSON Lines, the Pile's own format. Each line is
`{"text": ..., "meta": {"name": ...}}`. The text is kept exactly; the name says where the document
came from (a file path, or `archive.zip/member.md`).

Assignment is by document: a hash (blake2b) of the seed and the name puts each document in
val with probability `val_fraction`, the same way on every machine and in every run. A corpus of
at most three documents (one big `input.txt`) is split by position instead: the last
`val_fraction` of each document's text goes to val. Both splits are never empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import zstandard

from gptcore.atomic import atomic_file
from gptcore.data.streams import open_zstd
from gptcore.errors import DataError

ZSTD_LEVEL = 3
JSON_SLICE_CHARS = 1 << 20  # characters escaped at a time when writing a document
POSITION_SPLIT_MAX_DOCUMENTS = 3  # a corpus this small is split inside each document
TRAIN, VAL = "train", "val"


class Document(NamedTuple):
    name: str
    text: str


class SplitWriter:
    """Appends documents to one split file (.jsonl.zst); the file appears only if the block succeeds.

    `stats` counts what was written: documents, characters, UTF-8 bytes of the texts.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.stats = {"documents": 0, "characters": 0, "bytes": 0}
        self._exit = contextlib.ExitStack()
        self._out: zstandard.ZstdCompressionWriter | None = None

    def __enter__(self) -> SplitWriter:
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_file(self.path))
            raw = stack.enter_context(open(tmp, "wb"))
            # single-threaded zstd with a fixed level: the same documents give the same bytes
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
            self._out = stack.enter_context(compressor.stream_writer(raw, closefd=False))
            self._exit = stack.pop_all()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        self._out = None
        return self._exit.__exit__(kind, exc, tb)

    def write(self, doc: Document) -> None:
        if self._out is None:
            raise RuntimeError("SplitWriter.write outside its with-block")
        # the same bytes as json.dumps({"text": ..., "meta": {"name": ...}}, ensure_ascii=False),
        # with the text escaped a slice at a time: escaping is per character, and a 200 MB
        # document then never exists twice more in memory as JSON and as UTF-8
        text, size = doc.text, 0
        self._out.write(b'{"text": "')
        for start in range(0, len(text), JSON_SLICE_CHARS):
            piece = text[start : start + JSON_SLICE_CHARS]
            size += len(piece.encode("utf-8"))
            self._out.write(json.dumps(piece, ensure_ascii=False)[1:-1].encode("utf-8"))
        meta = json.dumps({"name": doc.name}, ensure_ascii=False)
        self._out.write(f'", "meta": {meta}}}\n'.encode())
        self.stats["documents"] += 1
        self.stats["characters"] += len(doc.text)
        self.stats["bytes"] += size


def write_split_file(path: Path | str, documents: Iterable[Document]) -> dict[str, int]:
    """Write documents to `path` (.jsonl.zst) atomically; return counts of documents, characters, bytes."""
    with SplitWriter(path) as writer:
        for doc in documents:
            writer.write(doc)
    return writer.stats


def iter_split_file(path: Path | str) -> Iterator[Document]:
    """Stream the documents of a split file written by `write_split_file`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: run the extract_split stage first")
    with open(path, "rb") as raw:
        # open_zstd, not zstandard's reader alone: a cut-off file must be an error, not fewer documents
        lines = io.TextIOWrapper(open_zstd(raw), encoding="utf-8", newline="\n")
        try:
            for lineno, line in enumerate(lines, 1):
                try:
                    obj = json.loads(line)
                    yield Document(obj["meta"]["name"], obj["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DataError(f"{path}, line {lineno}: not a split-file record ({exc})") from None
        except (zstandard.ZstdError, EOFError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: corrupt or truncated ({exc}); re-run extract_split") from None


def assign_split(doc: Document, seed: int, val_fraction: float) -> str:
    """`"val"` or `"train"` for one document, from a hash of its name and `seed` alone."""
    digest = hashlib.blake2b(f"{seed}\0{doc.name}".encode("utf-8", "surrogatepass"), digest_size=8)
    return VAL if int.from_bytes(digest.digest(), "big") / 2**64 < val_fraction else TRAIN


def iter_assigned(
    documents: Iterable[Document], seed: int, val_fraction: float
) -> Iterator[tuple[str, Document]]:
    """Stream `(split, document)` pairs; both splits always get at least one document.

    Holds at most four documents at a time: the first four, to tell a corpus of at most three
    (split by position) from a larger one; then only the first document, until a document lands
    in the other split. If none ever does, the first document moves there.
    """
    docs = iter(documents)
    head = list(itertools.islice(docs, POSITION_SPLIT_MAX_DOCUMENTS + 1))
    if not head:
        raise DataError("no documents to split")
    if len(head) <= POSITION_SPLIT_MAX_DOCUMENTS:
        yield from _split_by_position(head, val_fraction)
        return
    held: tuple[str, Document] | None = None
    for i, doc in enumerate(itertools.chain(head, docs)):
        split = assign_split(doc, seed, val_fraction)
        if i == 0:
            held = (split, doc)
            continue
        if held is not None and split != held[0]:
            yield held
            held = None
        yield split, doc
    if held is not None:  # the hash put every document in one split
        yield (VAL if held[0] == TRAIN else TRAIN), held[1]


def write_splits(
    documents: Iterable[Document],
    train_path: Path | str,
    val_path: Path | str,
    seed: int,
    val_fraction: float,
    tally: Callable[[str, Document], None] | None = None,
) -> dict[str, dict[str, int]]:
    """Split `documents` and write both split files in one pass; return each file's counts.
    `tally`, if given, sees each (split, document) written (a mixture counts its sources so)."""
    with SplitWriter(train_path) as train, SplitWriter(val_path) as val:
        writers = {TRAIN: train, VAL: val}
        for split, doc in iter_assigned(documents, seed, val_fraction):
            writers[split].write(doc)
            if tally is not None:
                tally(split, doc)
    return {TRAIN: train.stats, VAL: val.stats}


def position_cut(text: str, val_fraction: float) -> int:
    """Where a document splits by position: `text[:cut]` is train, `text[cut:]` is val.

    The cut falls `val_fraction` from the end, moved to just after the nearest newline if one lies
    within half the val part's length, so that val starts at a line. Texts of two or more
    characters give two non-empty parts.
    """
    n = len(text)
    if n < 2:
        return n
    target = min(max(round(n * (1.0 - val_fraction)), 1), n - 1)
    reach = max(1, (n - target) // 2)
    lo, hi = max(1, target - reach), min(n - 1, target + reach)
    # a cut at c follows a newline at c - 1
    before = text.rfind("\n", lo - 1, target) + 1  # 0 if none
    after = text.find("\n", target, hi) + 1
    if before and (not after or target - before <= after - target):
        return before
    return after or target


def _split_by_position(docs: list[Document], val_fraction: float) -> Iterator[tuple[str, Document]]:
    if all(len(doc.text) < 2 for doc in docs):
        total = sum(len(doc.text) for doc in docs)
        raise DataError(f"the corpus ({len(docs)} documents, {total} characters) is too small to split")
    for doc in docs:
        cut = position_cut(doc.text, val_fraction)
        if cut > 0:
            yield TRAIN, Document(doc.name, doc.text[:cut])
        if cut < len(doc.text):
            yield VAL, Document(doc.name, doc.text[cut:])
