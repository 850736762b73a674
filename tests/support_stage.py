"""The train stage run for real, as a child process in a workspace with a tiny character corpus:
start it, let it finish, SIGKILL it after a checkpoint, and read what DVCLive logged."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import REPO, write_token_file

from gptcore.tokenizer import CharTokenizer

STAGE_TRAIN = {
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 64,
    "block_size": 64,
    "batch_size": 16,
    "dropout": 0.1,
    "max_iters": 60,
    "eval_interval": 10,
    "eval_iters": 2,
    "log_interval": 5,
    "checkpoint_interval": 10,
    "warmup_iters": 5,
    "compile": False,
    "dtype": "float32",  # runs compared with each other must not each time bf16 against fp32
    "threads": 1,
    "device": "cpu",
}
# the data-parallel tests' run: two processes under torchrun, two micro-batches a step, no dropout
TWO = {"nproc_per_node": 2, "grad_accum_steps": 2, "dropout": 0.0, "max_iters": 40}
TEXT = "".join(
    f"Line {i}: the quick brown fox jumps over the lazy dog, {i * 7 % 13} times.\n" for i in range(800)
)


def stage_workspace(path: Path, **train: object) -> Path:
    """A folder laid out like the repo after tokenize: params.yaml (STAGE_TRAIN, then `train`
    changes), data/vocab, data/tokens."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(STAGE_TRAIN)
    params["train"].update(train)
    path.mkdir(parents=True)
    (path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    tokenizer = CharTokenizer.train([TEXT])
    tokenizer.save(path / "data" / "vocab")
    lines = TEXT.splitlines(keepends=True)
    for split, docs in (("train", lines[:700]), ("val", lines[700:])):
        write_token_file(
            path / "data" / "tokens" / f"{split}.h5",
            [tokenizer.encode(d) for d in docs],
            vocab_size=tokenizer.vocab_size,
            eot_id=tokenizer.eot_id,
            tokenizer_identity=tokenizer.identity,
        )
    return path


def stage_env() -> dict[str, str]:
    """The environment a stage runs in: this checkout importable, no progress bars. Built when
    called, so that it carries what the session's fixtures set (GPTCORE_CACHE_DIR)."""
    return {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}


def start_stage(ws: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=ws,
        env=stage_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal job would be
    )


def kill_after_checkpoints(ws: Path, writes: int, extra_seconds: float, group: bool = False) -> str:
    """Run the stage, SIGKILL it `extra_seconds` after its `writes`-th checkpoint write: the
    stage's process, or with `group` its whole process group (torchrun and its workers)."""
    ckpt = ws / "models" / "checkpoint.pt"
    proc = start_stage(ws)
    seen: set[tuple[int, int]] = set()
    deadline = time.monotonic() + 120
    while len(seen) < writes:
        assert proc.poll() is None, f"the stage ended before it could be killed:\n{proc.communicate()[0]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        with contextlib.suppress(FileNotFoundError):
            stat = ckpt.stat()
            seen.add((stat.st_ino, stat.st_mtime_ns))  # each atomic write is a new file
        time.sleep(0.005)
    time.sleep(extra_seconds)
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out
    return out


def finish(ws: Path) -> str:
    proc = start_stage(ws)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def logged(ws: Path, name: str) -> list[tuple[str, str]]:
    """(step, value) rows of a DVCLive metric, as the text DVC plots read."""
    with open(ws / "dvclive" / "plots" / "metrics" / f"{name}.tsv", encoding="utf-8") as fh:
        return [(row["step"], row[name.rsplit("/", 1)[-1]]) for row in csv.DictReader(fh, delimiter="\t")]
