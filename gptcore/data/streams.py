"""Byte streams for the data path: decompressors that notice truncation, and content sniffing.

- `OPENERS` maps a compression suffix (`gz`, `xz`, `zst`) to a function wrapping a binary stream
  in its decompressor; `compression_for(name)` picks one from a file name.
- `open_zstd` reads across frames, with or without a content size in their headers (the Pile's
  shards have none), and raises EOFError when the data stops inside a frame: zstandard's own
  reader ends silently there, which would drop the tail of a cut-off file without a word.
- `sniff(head)` tells gzip, xz, zstd, zip, Parquet and tar apart by their first bytes; `peek` reads
  those bytes without losing them.
"""

from __future__ import annotations

import gzip
import io
import lzma
import tarfile
from collections.abc import Callable
from typing import BinaryIO, cast

import zstandard


def compression_for(lower_name: str) -> tuple[Callable[[BinaryIO], BinaryIO] | None, str]:
    """The decompressor for a name's last suffix, and the name without it."""
    for suffix, opener in OPENERS.items():
        if lower_name.endswith(f".{suffix}"):
            return opener, lower_name[: -len(suffix) - 1]
    return None, lower_name


def sniff(head: bytes) -> str | None:
    """What the first bytes of a stream say it is: a compression suffix, `zip`, `parquet`, `tar`, or None."""
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    return "tar" if is_tar_header(head) else None


def peek(stream: BinaryIO, size: int) -> tuple[bytes, BinaryIO]:
    """The first `size` bytes of `stream`, and a stream that still starts with them."""
    if seekable(stream):  # a file or a zip member: read and rewind, keeping it seekable for zip
        start = stream.tell()
        head = read_up_to(stream, size)
        stream.seek(start)
        return head, stream
    head = read_up_to(stream, size)
    return head, io.BufferedReader(_Prefixed(head, stream))


def open_gzip(stream: BinaryIO) -> BinaryIO:
    return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]


def open_xz(stream: BinaryIO) -> BinaryIO:
    return lzma.LZMAFile(stream)  # type: ignore[return-value]


def open_zstd(stream: BinaryIO) -> BinaryIO:
    return io.BufferedReader(_ZstdReader(stream), buffer_size=1 << 17)


OPENERS: dict[str, Callable[[BinaryIO], BinaryIO]] = {"gz": open_gzip, "xz": open_xz, "zst": open_zstd}
MAGIC = (
    (b"\x1f\x8b", "gz"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zst"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),  # an empty zip
    (b"PAR1", "parquet"),  # a Parquet file starts (and ends) with it
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
            # zstandard's stubs ask for a whole IO; it calls only read()
            cast(BinaryIO, _Tap(source, self._frames.feed)),
            read_across_frames=True,
            closefd=False,
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

    _ZSTDMAGIC = 0xFD2FB528
    _SKIPPABLE_MASK, _SKIPPABLEMAGIC = 0xFFFFFFF0, 0x184D2A50

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
            if number == self._ZSTDMAGIC:
                self._expect("descriptor", 1)
            elif number & self._SKIPPABLE_MASK == self._SKIPPABLEMAGIC:
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


def read_up_to(stream: BinaryIO, size: int) -> bytes:
    chunks, have = [], 0
    while have < size:
        chunk = stream.read(size - have)
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def is_tar_header(block: bytes) -> bool:
    """A POSIX (ustar) or GNU tar header: magic at offset 257 and a matching checksum."""
    if len(block) < tarfile.BLOCKSIZE or block[257:262] != b"ustar":
        return False
    try:
        stored = int(block[148:156].strip(b"\0 ") or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * 32 + sum(block[156:512])


def seekable(stream: BinaryIO) -> bool:
    try:
        return stream.seekable()
    except (AttributeError, OSError):  # a tar member in stream mode lacks it altogether
        return False
