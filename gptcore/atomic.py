"""Atomic outputs: write under a temporary name beside the target, rename only when complete.

A stage that fails or is killed never leaves a half-written file or folder that DVC could take
for a good output. Temporary names carry the writer's process id; one left by a process that died
(SIGKILL leaves no chance to clean up) is removed the next time the same target is written.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptcore.errors import DISK_FULL_ERRNOS, DiskFullError

DISK_FULL_BYTES = 1 << 20  # free space under which a failed write is blamed on a full disk


@contextlib.contextmanager
def atomic_file(path: Path | str, expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; on success rename it to `path`, else delete it.
    `expected_bytes`, the file's size if known, is what a full-disk error says it needs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _disk_full_as_error(path, tmp_path, expected_bytes):
            yield tmp_path
            os.chmod(tmp_path, 0o644)  # mkstemp makes it owner-only; outputs are ordinary files
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path`; on success it replaces `path` whole. For the
    pipeline's own outputs only: a folder the user names goes through `output_folder`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep(path)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        with _disk_full_as_error(path, tmp_path, None):
            yield tmp_path
            os.chmod(tmp_path, 0o755)
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            shutil.rmtree(tmp_path, ignore_errors=True)


@contextlib.contextmanager
def _disk_full_as_error(path: Path, tmp_path: Path, expected_bytes: int | None) -> Iterator[None]:
    """Turn a write that failed for want of space into a DiskFullError naming `path`."""
    try:
        yield
    except DiskFullError as exc:  # from a writer inside this one's temporary folder: name the output
        if exc.path.is_relative_to(tmp_path):
            inner = path / exc.path.relative_to(tmp_path)
            raise DiskFullError(inner, exc.written, exc.free, exc.needed) from None
        raise
    except (OSError, RuntimeError) as exc:
        free = free_bytes(path.parent)
        full = isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS
        if not full and (free is None or free >= DISK_FULL_BYTES):
            raise
        raise DiskFullError(path, _size(tmp_path), free, expected_bytes) from None


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use on `folder`'s filesystem (None: unknown)."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _size(path: Path) -> int:
    """Bytes in a file, or in the files under a folder; 0 if gone."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return 0


def sweep(path: Path) -> None:
    """Remove temporaries of `path` whose writing process no longer runs."""
    prefix = f".{path.name}."
    for entry in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = entry.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_text(path: Path | str, text: str) -> None:
    """Write a small text file atomically (UTF-8)."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, data: dict[str, Any]) -> None:
    """Pretty, key-sorted JSON, written atomically: stable diffs in git and in `dvc metrics diff`.
    The one writer of the reports/*.json metrics files."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
