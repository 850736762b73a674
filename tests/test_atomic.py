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


def test_what_a_killed_writer_leaves_is_invisible_to_git(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for name in (".gitignore", ".dvcignore", "data/.gitignore"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((repo / name).read_text())
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    # a stage killed with SIGKILL while it writes a folder output and a file output
    script = (
        "import os, signal\n"
        "from gptcore.atomic import atomic_dir, atomic_file\n"
        "with atomic_dir('data/tokens') as d, atomic_file('reports/tokens.json') as f:\n"
        "    (d / 'train.h5').write_bytes(b'x' * 1000); f.write_text('{')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(repo)}
    killed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env)
    assert killed.returncode == -9
    left = sorted(p.name for p in [*(tmp_path / "data").iterdir(), *(tmp_path / "reports").iterdir()])
    assert any(name.startswith(".tokens.") for name in left) and any(
        name.startswith(".tokens.json.") for name in left
    )
    status = subprocess.run(["git", "status", "--porcelain"], cwd=tmp_path, capture_output=True, text=True)
    assert status.stdout == ""
