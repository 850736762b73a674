"""Specification of gptcore.atomic: outputs appear whole or not at all, and leave no litter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptcore.atomic import atomic_dir, atomic_file


def dead_pid() -> int:
    """The id of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_failed_write_keeps_the_old_output_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed halfway")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_temporaries_of_dead_writers_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    stale_dir = tmp_path / f".split.{dead_pid()}.abc123.tmp"
    stale_dir.mkdir()
    (stale_dir / "train.jsonl.zst").write_bytes(b"partial")
    stale_file = tmp_path / f".report.json.{dead_pid()}.xyz.tmp"
    stale_file.write_text("{")
    live = tmp_path / f".split.{os.getppid()}.def456.tmp"  # our parent runs: not ours to remove
    live.mkdir()
    other = tmp_path / ".splits.1.tmp"  # another target's name

    other.mkdir()
    with atomic_dir(tmp_path / "split") as tmp:
        (tmp / "ok").write_text("done")
    with atomic_file(tmp_path / "report.json") as tmp:
        tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, "split", "report.json"]
    )
