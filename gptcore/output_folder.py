"""A folder the user names for gptcore to write into (`gptcore export --out`): only gptcore's own files
are ever replaced, and nothing else in it is touched.

A stage's outputs are paths that dvc.yaml owns, so `atomic.atomic_dir` may replace them whole. A
path typed on the command line is the user's: it may be a folder of their notes, the working copy,
their home directory or the folder holding the model being exported. So here:

- a new path, or an empty folder, is written;
- a folder that gptcore wrote before (it holds the marker file, which lists the files written) has
  those files replaced and the ones the new output no longer writes removed;
- any other existing folder is refused, unless `force` is given; even then the output is added
  beside what is there, and a file of the same name that gptcore did not write is refused;
- a path that is not a folder (a file, a device), the filesystem root, the home directory, a
  repository (it holds `.git` or `.dvc`) and any folder holding a protected path (the model being
  exported, the working directory) are refused, `force` or not.

The marker is written before the files move in, naming both old and new files, and again when they
are all in: an interrupted write leaves a folder that the next run still recognises as its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from gptcore.atomic import atomic_file, sweep
from gptcore.errors import DISK_FULL_ERRNOS, GptcoreError

MARKER = ".gptcore-output.json"
_SHOWN = 5  # names of foreign files an error lists


class OutputFolderError(GptcoreError):
    """A user-named output folder that gptcore will not write into, and why."""


@contextlib.contextmanager
def output_folder(
    folder: Path | str,
    kind: str,
    names: Iterable[str],
    *,
    force: bool = False,
    protect: Iterable[Path | str] = (),
    flag: str = "--out",
) -> Iterator[Path]:
    """Check `folder`, yield an empty staging folder for the files `names`, then move them in.

    `kind` tells outputs apart (an `hf` export does not replace a `gguf` one without `force`);
    `protect` lists paths the output folder must not hold (the input model, for one); `flag` is how
    the error names the option the user typed."""
    names = sorted(set(names))
    target = _resolve(folder, flag)
    owned = _check(target, Path(folder), kind, names, force, [_resolve(p, flag) for p in protect], flag)
    new = not target.exists()
    with _cannot_write(folder):
        if new:
            target.parent.mkdir(parents=True, exist_ok=True)
            sweep(target)
            stage = _staging(target.parent, f".{target.name}.")
        else:
            sweep(target / MARKER)
            stage = _staging(target, f".{MARKER}.")  # the marker's temporaries' names: swept with them
    try:
        yield stage
        _only(stage, names)
        with _cannot_write(folder):
            if new:
                _write_marker(stage, kind, names)
                os.chmod(stage, 0o755)  # mkdtemp makes it owner-only
                os.rename(stage, target)  # atomic; fails if the path appeared meanwhile
            else:
                _write_marker(target, kind, sorted(set(owned) | set(names)))
                for name in names:
                    os.replace(stage / name, target / name)
                for stale in set(owned) - set(names):
                    (target / stale).unlink(missing_ok=True)
                _write_marker(target, kind, names)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def _cannot_write(folder: Path | str) -> Iterator[None]:
    """An OSError of gptcore's own file operations, as one line naming the folder (a full disk is
    left to `errors.run_main`, which names the file)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise
        raise OutputFolderError(f"cannot write {folder}: {exc.strerror or exc}") from None


def _resolve(path: Path | str, flag: str) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, an unreadable parent
        raise OutputFolderError(f"{flag} {path}: cannot follow this path ({exc})") from None


def _check(
    target: Path, given: Path, kind: str, names: list[str], force: bool, protect: list[Path], flag: str
) -> list[str]:
    """The files of `target` that gptcore wrote; raise if writing there could lose anything."""
    shown = f"{flag} {given}" if str(given) == str(target) else f"{flag} {given} (= {target})"
    if target.exists() and not target.is_dir():
        raise OutputFolderError(f"{shown} exists and is not a folder: gptcore never replaces it")
    refuse = f"{shown} is {{}}: gptcore will not write its output there; name a new folder"
    if target == Path(target.anchor):
        raise OutputFolderError(refuse.format("the filesystem root"))
    if target == Path.home().resolve():
        raise OutputFolderError(refuse.format("your home directory"))
    for held in [*protect, Path.cwd().resolve()]:
        if held == target or target in held.parents:
            what = "the working directory" if held == Path.cwd().resolve() else str(held)
            raise OutputFolderError(refuse.format(what if held == target else f"a folder holding {what}"))
    if not target.exists():
        return []
    for repo in (".git", ".dvc"):
        if (target / repo).exists():
            raise OutputFolderError(refuse.format(f"a repository (it holds {repo})"))
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return []
    marker = _read_marker(target)
    owned = marker["files"] if marker is not None and marker["kind"] == kind else []
    if marker is None and not force:
        listed = ", ".join(entries[:_SHOWN]) + (", ..." if len(entries) > _SHOWN else "")
        raise OutputFolderError(
            f"{shown} exists and holds files gptcore did not write ({listed}): name a new or empty "
            f"folder, or add --force to write beside them (nothing of theirs is replaced or removed)"
        )
    if marker is not None and marker["kind"] != kind and not force:
        raise OutputFolderError(
            f"{shown} holds a gptcore {marker['kind']} output, not {kind}: name another folder, or add "
            f"--force to write beside it"
        )
    for name in names:
        path = target / name
        if name not in owned and (path.exists() or path.is_symlink()):
            raise OutputFolderError(
                f"{path} exists and gptcore did not write it: it is never replaced, even with --force; "
                "move it away or name another folder"
            )
        if path.is_dir() and not path.is_symlink():
            raise OutputFolderError(f"{path} is a folder: gptcore never replaces it")
    return owned


def _read_marker(folder: Path) -> dict | None:
    """The marker's content if it is gptcore's and well-formed, else None (a foreign folder)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if (
        isinstance(data, dict)
        and data.get("written_by") == "gptcore"
        and isinstance(data.get("kind"), str)
        and isinstance(data.get("files"), list)
        and all(isinstance(n, str) and n and "/" not in n and n not in (".", "..") for n in data["files"])
    ):
        return {"kind": data["kind"], "files": [n for n in data["files"] if n != MARKER]}
    return None


def _write_marker(folder: Path, kind: str, names: list[str]) -> None:
    text = json.dumps({"written_by": "gptcore", "kind": kind, "files": names}, indent=2) + "\n"
    with atomic_file(folder / MARKER) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _staging(parent: Path, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", suffix=".tmp", dir=parent))


def _only(stage: Path, names: list[str]) -> None:
    """Every staged file is one `names` promised (so the marker lists all gptcore wrote), readable."""
    found = sorted(p.name for p in stage.iterdir())
    if found != names:
        raise RuntimeError(f"output files {found} differ from the declared {names}")
    for name in names:
        os.chmod(stage / name, 0o644)  # some writers (safetensors) make files owner-only
