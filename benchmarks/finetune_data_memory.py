"""Peak memory of the fine-tuning data stages (classify_data, instruct_data) on huge and hostile files.

Target: peak RSS that does not grow with the file. A record longer than the readers' limit
(gptcore.finetune.data.MAX_RECORD_BYTES) is refused with an error naming the file and the record,
after reading no more than that limit of it; a file of many records is streamed into the split
files, so its peak is the reader's buffers plus a few bytes of bookkeeping per example.

Files generated in `--work` (reused when present with the same size), `--size` bytes each:

  one-record.json     an Alpaca JSON array of one record whose output is `--size` bytes of text
  one-record.jsonl    the same record as one JSON line
  many-records.json   a JSON array of Alpaca records of ~500 bytes (indented, as Alpaca ships)
  many-records.jsonl  the same records, one a line
  many-labelled.csv   `label,text` rows of ~300 bytes, six classes, some texts quoted over two lines

Each file is the source of one stage run, `python -m stages.<stage>` in a workspace of its own
(`--work/ws-<file>/`, with the repository's params.yaml and the source edited in) as DVC would run
it, with `--repo` on PYTHONPATH: point `--repo` at another checkout to measure the code before a
change. The peak is the stage process's maximum resident set (wait4's ru_maxrss, kernel-tracked,
exact); CPU seconds (user + system) beside the wall time say more than it on a busy machine.
MB are 10^6 bytes.

    python benchmarks/finetune_data_memory.py                       # 1 GB files (~3 min to generate)
    python benchmarks/finetune_data_memory.py --size 200MB --files many-records.jsonl
    python benchmarks/finetune_data_memory.py --repo /tmp/before    # the code of another checkout
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml
from data_memory import claim_work_folder  # benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parent.parent
FILES = {  # file -> the stage that reads it
    "one-record.json": "instruct_data",
    "one-record.jsonl": "instruct_data",
    "many-records.json": "instruct_data",
    "many-records.jsonl": "instruct_data",
    "many-labelled.csv": "classify_data",
}
LABELS = ("comedies", "histories", "problems", "roman", "romances", "tragedies")
# fmt: off
WORDS = [
    "the", "of", "and", "to", "a", "in", "that", "is", "was", "he", "for", "it", "with", "as", "his",
    "on", "be", "at", "by", "had", "are", "but", "from", "or", "have", "an", "they", "which", "one",
    "you", "were", "all", "her", "she", "there", "would", "their", "we", "him", "been", "has", "when",
    "who", "will", "no", "more", "if", "out", "so", "said", "what", "up", "its", "about", "into",
    "than", "them", "can", "only", "other", "new", "some", "could", "time", "these", "two", "may",
    "then", "do", "first", "any", "my", "now", "such", "like", "our", "over", "man", "me", "even",
    "most", "made", "after", "also", "did", "many", "before",
]
# fmt: on
BLOCK = 1 << 20  # bytes of text generated at a time for the one-record files


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?B?)", text.strip().upper())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 200MB, 1GB)")
    scale = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[match[2]]
    return int(float(match[1]) * scale)


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


class Sentences:
    """Sentences drawn from a fixed pool: text generation costs little next to the stage measured."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.pool = [sentence(self.rng, self.rng.randint(6, 20)) for _ in range(4096)]

    def take(self, n: int) -> str:
        return " ".join(self.rng.choices(self.pool, k=n))


def one_record(path: Path, size: int, array: bool) -> None:
    """One Alpaca record whose output holds `size` bytes of text, streamed out a block at a time."""
    rng = random.Random(0)
    block = " ".join(sentence(rng, 12) for _ in range(BLOCK // 60)).encode()
    head = b'{"instruction": "Recite the play.", "input": "", "output": "'
    with open(path, "wb") as fh:
        fh.write(b"[\n  " + head if array else head)
        written = 0
        while written < size:
            piece = block[: size - written]
            fh.write(piece)
            written += len(piece)
        fh.write(b'"}\n]\n' if array else b'"}\n')


def records(size: int) -> Iterator[dict[str, str]]:
    """Alpaca records of ~500 bytes of JSON each, until about `size` bytes of them."""
    text = Sentences(1)
    total, i = 0, 0
    while total < size:
        record = {
            "instruction": f"Answer question {i}: " + text.take(1),
            "input": text.take(2) if i % 3 else "",
            "output": text.take(4),
        }
        total += len(json.dumps(record)) + 1
        i += 1
        yield record


def many_records(path: Path, size: int, array: bool) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        if array:
            fh.write("[")
            for i, record in enumerate(records(size)):
                fh.write(("," if i else "") + "\n  " + json.dumps(record, indent=4).replace("\n", "\n  "))
            fh.write("\n]\n")
        else:
            for record in records(size):
                fh.write(json.dumps(record) + "\n")


def many_labelled(path: Path, size: int) -> None:
    sentences = Sentences(2)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["label", "text"])
        i = total = 0
        while total < size:
            text = sentences.take(4)
            if i % 10 == 0:
                text = f'"{text[:40]}"\n{text[40:]}'  # a quoted field over two lines
            row = [LABELS[i % len(LABELS)], f"{i} {text}"]
            writer.writerow(row)
            total += len(row[0]) + len(row[1]) + 6  # the comma, quotes and line end, about
            i += 1


def generate(work: Path, name: str, size: int) -> Path:
    path = work / name
    stamp = work / f"{name}.size"
    if path.is_file() and stamp.is_file() and stamp.read_text() == str(size):
        return path
    start = time.perf_counter()
    if name.startswith("one-record"):
        one_record(path, size, array=name.endswith(".json"))
    elif name.startswith("many-records"):
        many_records(path, size, array=name.endswith(".json"))
    else:
        many_labelled(path, size)
    stamp.write_text(str(size))
    print(f"generated {path} ({path.stat().st_size / 1e6:,.0f} MB, {time.perf_counter() - start:.0f} s)")
    return path


def run_stage(repo: Path, work: Path, source: Path, stage: str) -> tuple[int, float, float, float, str]:
    """Exit status, peak RSS (MB), wall and CPU seconds and the last line of stderr of one stage run."""
    ws = work / f"ws-{source.name}"
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    params = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    params[stage]["source"] = str(source)
    (ws / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(repo), "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=ws,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    err = io.TextIOWrapper(proc.stderr, encoding="utf-8", errors="replace").read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    wall = time.perf_counter() - start
    last = err.strip().splitlines()[-1] if err.strip() else "ok"
    shutil.rmtree(ws, ignore_errors=True)
    return proc.returncode, usage.ru_maxrss * 1024 / 1e6, wall, usage.ru_utime + usage.ru_stime, last


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    found = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
    return found[1].strip() if found else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1GB"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/gptcore-finetune-memory"))
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose stages run")
    parser.add_argument("--files", default=",".join(FILES), help="which files, comma-separated")
    args = parser.parse_args()
    names = [n for n in args.files.split(",") if n]
    if unknown := [n for n in names if n not in FILES]:
        parser.error(f"unknown files {unknown}; known: {', '.join(FILES)}")
    claim_work_folder(args.work, parser)  # it replaces files and workspaces inside: never a folder of yours
    repo = args.repo.resolve()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; repo: {repo}; file size {args.size / 1e6:,.0f} MB")
    print(f"{'file':20s} {'stage':14s} {'exit':>4s} {'peak MB':>9s} {'wall s':>7s} {'CPU s':>7s}  result")
    for name in names:
        source = generate(args.work, name, args.size)
        code, peak, wall, cpu, last = run_stage(repo, args.work, source, FILES[name])
        print(
            f"{name:20s} {FILES[name]:14s} {code:4d} {peak:9,.0f} {wall:7.1f} {cpu:7.1f}  {last[:150]}",
            flush=True,
        )


if __name__ == "__main__":
    main()
