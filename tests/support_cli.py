"""The `gptcore` command run as a child process, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

# one thread: the model is tiny, and OpenMP threads spin-waiting on a busy machine cost seconds
CHILD_ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def run_cli(args: list[str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gptcore.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=CHILD_ENV,
        timeout=60,
    )
