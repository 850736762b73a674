"""User-facing errors, and how a stage or command reports them: one line, non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable


class GptcoreError(Exception):
    """An error the user can act on (bad input, bad params); printed without a traceback."""


class DataError(GptcoreError):
    """A corpus, archive, token file or model file that cannot be used as it is."""


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's or command's `main`, turning a GptcoreError into `error: ...` and exit 1."""
    try:
        main()
    except GptcoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
