"""User-facing errors, and how a stage or command reports them: one line, non-zero exit."""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


class GptcoreError(Exception):
    """An error the user can act on (bad input, bad params); printed without a traceback."""


class DataError(GptcoreError):
    """A corpus, archive, token file or model file that cannot be used as it is."""


class DiskFullError(GptcoreError):
    """The filesystem filled up while an output was written; the output was not written at all.

    `needed` is the output's size when the writer knows it in advance; otherwise the message says
    how much had been written when the disk filled, which the output needs at least."""

    def __init__(self, path: Path | str, written: int, free: int | None, needed: int | None = None) -> None:
        self.path, self.written, self.free, self.needed = Path(path), written, free, needed
        need = (
            f"need about {needed / 1e6:,.1f} MB"
            if needed is not None
            else f"need more than the {written / 1e6:,.1f} MB written when the disk filled"
        )
        room = f", {free / 1e6:,.1f} MB free" if free is not None else ""
        super().__init__(
            f"no space left on device while writing {self.path} ({need}{room}); nothing was written: "
            "free some space and re-run"
        )


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def refuse_constant(name: str) -> Any:
    """A `parse_constant` hook for json: `NaN`, `Infinity` and `-Infinity` are not JSON."""
    raise ValueError(f"{name} is not a number JSON allows (finite values only)")


def parse_json(text: str | bytes, where: str) -> Any:
    """Parse untrusted JSON text, or raise a DataError naming `where` (a file, `file:line`, a request).

    Refuses what Python's parser would otherwise let through or crash on: `NaN` and `Infinity`
    (not JSON, and a label or a model size must be a finite number) and nesting too deep to parse
    (a RecursionError, which a caller would otherwise report as a crash)."""
    try:
        return json.loads(text, parse_constant=refuse_constant)
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{where} is not valid JSON: {exc}") from None
    except ValueError as exc:  # from refuse_constant
        raise DataError(f"{where}: {exc}") from None


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's or command's `main`, turning a GptcoreError into `error: ...` and exit 1.

    A full disk met outside gptcore's own writers (a library writing its logs) is reported the
    same way, by the file it was writing."""
    try:
        main()
    except GptcoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(f"error: no space left on device{where}: free some space and re-run", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
