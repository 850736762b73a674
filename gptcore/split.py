"""Split files: documents stored as zstd-compressed JSON Lines, the Pile's own format.

Each line is `{"text": ..., "meta": {"name": ...}}`. The text is kept exactly; the name says where
the document came from (a file path, or `archive.zip/member.md`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import zstandard

from gptcore.atomic import atomic_file
from gptcore.errors import DataError

ZSTD_LEVEL = 3


class Document(NamedTuple):
    name: str
    text: str


def write_split_file(path: Path | str, documents: Iterable[Document]) -> dict[str, int]:
    """Write documents to `path` (.jsonl.zst) atomically; return counts of documents, characters, bytes."""
    stats = {"documents": 0, "characters": 0, "bytes": 0}
    with atomic_file(path) as tmp, open(tmp, "wb") as raw:
        # single-threaded zstd with a fixed level: the same documents give the same bytes
        with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw, closefd=False) as out:
            for doc in documents:
                line = json.dumps({"text": doc.text, "meta": {"name": doc.name}}, ensure_ascii=False)
                out.write(line.encode("utf-8") + b"\n")
                stats["documents"] += 1
                stats["characters"] += len(doc.text)
                stats["bytes"] += len(doc.text.encode("utf-8"))
    return stats


def iter_split_file(path: Path | str) -> Iterator[Document]:
    """Stream the documents of a split file written by `write_split_file`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: run the extract_split stage first")
    with open(path, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        lines = io.TextIOWrapper(reader, encoding="utf-8", newline="\n")
        try:
            for lineno, line in enumerate(lines, 1):
                try:
                    obj = json.loads(line)
                    yield Document(obj["meta"]["name"], obj["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DataError(f"{path}, line {lineno}: not a split-file record ({exc})") from None
        except zstandard.ZstdError as exc:
            raise DataError(f"{path}: corrupt zstd data ({exc}); re-run extract_split") from None
