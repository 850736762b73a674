"""The `gptcore` command run as a child process, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


# one thread: the model is tiny, and OpenMP threads spin-waiting on a busy machine cost seconds
def child_env() -> dict[str, str]:
    """The environment of a gptcore child process: built when called, so that it carries what the
    session's fixtures set (GPTCORE_CACHE_DIR: never the user's own autotune cache)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def run_cli(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gptcore.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=child_env(),
        timeout=60,
    )
