"""Throughput of the tokenize stage's engine against tiktoken's own batch encoder, for a BPE vocabulary.

The tokenize stage reads a split file (zstd JSON Lines), encodes every document on `workers`
threads (BPE kinds; gptcore/data/encode.py), keeps stream order, and writes an HDF5 token file.
This script times exactly that (`gptcore.data.encode.tokenize_to_file` over `iter_split_file`) and,
on the same documents held in memory, tiktoken's `Encoding.encode_ordinary_batch(texts,
num_threads=workers)` with the same ranks, which does no reading or writing at all. Each round runs
both back to back, in alternating order, so that machine noise and drift hit both alike. Printed
side by side: medians over the rounds of each one's MB/s, the ratio (the target is >= 1.0: the
median over rounds of the two runs' ratio), and the CPU seconds of each (all threads of this
process), which a busy machine disturbs less; both must make the same number of tokens.

It also times reading the split file alone, the stage's main thread's share of the work, which
more workers cannot share. Then the tokenize stage itself runs on the corpus (`python -m
stages.tokenize` in a scratch workspace, as DVC runs it) once per worker count, for its wall time
and peak RSS (VmHWM, the kernel's high-water mark of the stage's process: BPE workers are threads
of that one process).

The corpus is generated, web-like: the lines of a split file (by default the plays'
`data/split/train.jsonl.zst`, written by `dvc repro`) shuffled and regrouped into documents whose
sizes follow a log-normal law (median 2.6 KB, mean about 4.8 KB, near FineWeb-Edu's pages), up to
`--megabytes`; `--whole-documents` takes the split's own documents instead, repeated. The BPE
vocabulary (`--vocab-size`, default 4096) is learned from the split first.

    python benchmarks/tokenize_speed.py
    python benchmarks/tokenize_speed.py --workers 1 2 --megabytes 20 --rounds 9
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from gptcore.data.encode import default_workers, tokenize_to_file
from gptcore.data.split import Document, iter_split_file, write_split_file
from gptcore.tokenizer import BpeTokenizer

REPO = Path(__file__).resolve().parents[1]
MEDIAN_DOCUMENT_BYTES = 2600
SIGMA = 1.1  # log-normal spread: mean = median * exp(sigma^2 / 2), about 4.8 KB
# the stage as DVC runs it, then its peak RSS as its own process saw it (ru_maxrss would count this
# big benchmark process, which the child's fork copied before its exec)
STAGE_AND_PEAK = """
import runpy, sys
try:
    runpy.run_module("stages.tokenize", run_name="__main__")
finally:
    print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")), file=sys.stderr)
"""


def web_like_documents(split: Path, megabytes: float, seed: int) -> list[Document]:
    """Documents of log-normal sizes made of the split's lines, shuffled, until `megabytes`."""
    lines = [
        line for doc in iter_split_file(split) for line in doc.text.splitlines(keepends=True) if line.strip()
    ]
    rng = random.Random(seed)
    docs: list[Document] = []
    total, budget = 0, int(megabytes * 1e6)
    while total < budget:
        rng.shuffle(lines)
        i = 0
        while i < len(lines) and total < budget:
            size = int(rng.lognormvariate(math.log(MEDIAN_DOCUMENT_BYTES), SIGMA))
            text, n = [], 0
            while i < len(lines) and n < size:
                text.append(lines[i])
                n += len(lines[i].encode())
                i += 1
            docs.append(Document(f"web/{len(docs):08d}", "".join(text)))
            total += n
    return docs


def whole_documents(split: Path, megabytes: float) -> list[Document]:
    """The split's documents as they are, repeated to about `megabytes`."""
    docs = list(iter_split_file(split))
    repeat = max(1, round(megabytes * 1e6 / sum(len(d.text.encode()) for d in docs)))
    return [Document(f"{i}/{d.name}", d.text) for i in range(repeat) for d in docs]


def compare(
    split: Path, texts: list[str], tokenizer: BpeTokenizer, workers: int, rounds: int
) -> dict[str, float]:
    """Median wall and CPU seconds of tiktoken's batch encoder and of the stage's engine."""
    out = split.with_name("train.h5")
    timings: dict[str, list[tuple[float, float]]] = {"tiktoken": [], "stage": []}
    tokens = 0
    for round_ in range(rounds):
        for variant in ("tiktoken", "stage") if round_ % 2 == 0 else ("stage", "tiktoken"):
            wall, cpu = time.perf_counter(), time.process_time()
            if variant == "tiktoken":
                encoded = tokenizer.encoding.encode_ordinary_batch(texts, num_threads=workers)
                made = sum(map(len, encoded)) + len(texts)  # + one eot per document, as stored
                del encoded
            else:
                made = tokenize_to_file(
                    out, (d.text for d in iter_split_file(split)), tokenizer, workers
                ).tokens
            timings[variant].append((time.perf_counter() - wall, time.process_time() - cpu))
            if tokens and made != tokens:
                raise SystemExit(f"{variant} made {made:,} tokens, the other {tokens:,}")
            tokens = made
    raw, ours = timings["tiktoken"], timings["stage"]
    return {
        "tokens": tokens,
        "tiktoken_s": statistics.median(r[0] for r in raw),
        "stage_s": statistics.median(o[0] for o in ours),
        "ratio": statistics.median(r[0] / o[0] for r, o in zip(raw, ours, strict=True)),
        "tiktoken_cpu": statistics.median(r[1] for r in raw),
        "stage_cpu": statistics.median(o[1] for o in ours),
    }


def stage_run(ws: Path, split: Path, tokenizer: BpeTokenizer, workers: int) -> tuple[float, float]:
    """Run the tokenize stage on `split` (as both splits) in a workspace: wall s, peak RSS MB."""
    for sub in ("split", "vocab", "tokens"):
        (ws / "data" / sub).mkdir(parents=True, exist_ok=True)
    for name in ("train", "val"):
        target = ws / "data/split" / f"{name}.jsonl.zst"
        target.unlink(missing_ok=True)
        os.link(split, target)
    tokenizer.save(ws / "data/vocab")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["tokenize"]["workers"] = workers
    (ws / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", STAGE_AND_PEAK], cwd=ws, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"the tokenize stage failed (exit {done.returncode}): {done.stderr}")
    peak_kib = int(done.stderr.strip().splitlines()[-1].split()[1])
    return seconds, peak_kib * 1024 / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", type=Path, default=Path("data/split/train.jsonl.zst"))
    parser.add_argument("--megabytes", type=float, default=50.0, help="size of the generated corpus")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--workers", type=int, nargs="+", default=[default_workers()])
    parser.add_argument("--rounds", type=int, default=5, help="timings per variant (median quoted)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--whole-documents",
        action="store_true",
        help="the split's own documents, repeated (the plays: about 140 KB each), not web-like ones",
    )
    args = parser.parse_args()

    tokenizer = BpeTokenizer.train((d.text for d in iter_split_file(args.split)), args.vocab_size)
    if args.whole_documents:
        docs = whole_documents(args.split, args.megabytes)
    else:
        docs = web_like_documents(args.split, args.megabytes, args.seed)
    texts = [d.text for d in docs]
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    print(
        f"corpus: {len(docs):,} documents (mean {megabytes * 1e6 / len(docs):,.0f} bytes), "
        f"{megabytes:,.1f} MB; bpe vocabulary of {tokenizer.vocab_size:,}; medians of {args.rounds} rounds"
    )
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "train.jsonl.zst"
        write_split_file(split, docs)
        print(
            f"\n{'workers':>7} {'tiktoken MB/s':>14} {'stage MB/s':>11} {'stage tokens/s':>15} "
            f"{'stage/tiktoken':>15} {'tiktoken CPU s':>15} {'stage CPU s':>12} {'CPU ratio':>10}"
        )
        for workers in args.workers:
            r = compare(split, texts, tokenizer, workers, args.rounds)
            print(
                f"{workers:>7} {megabytes / r['tiktoken_s']:>14.2f} {megabytes / r['stage_s']:>11.2f} "
                f"{r['tokens'] / r['stage_s']:>15,.0f} {r['ratio']:>14.2f}x {r['tiktoken_cpu']:>15.2f} "
                f"{r['stage_cpu']:>12.2f} {r['tiktoken_cpu'] / r['stage_cpu']:>9.2f}x"
            )
        # the main thread's own work, which more workers cannot share: reading the split file
        reads = []
        for _ in range(args.rounds):
            cpu = time.process_time()
            for _ in iter_split_file(split):
                pass
            reads.append(time.process_time() - cpu)
        print(
            f"\nreading the split file alone (the main thread's part): {statistics.median(reads):.2f} CPU s"
        )
        print()
        for workers in args.workers:
            seconds, peak_mb = stage_run(Path(tmp) / "ws", split, tokenizer, workers)
            print(
                f"python -m stages.tokenize, {workers} worker(s), train and val each this corpus: "
                f"{seconds:.1f} s, peak RSS {peak_mb:,.0f} MB"
            )


if __name__ == "__main__":
    main()
