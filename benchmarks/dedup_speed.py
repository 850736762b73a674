"""Time and memory of extract_split's deduplication (gptcore/data/dedup.py), per document.

Documents are generated, web-like: runs of consecutive lines of a split file (by default the plays'
`data/split/train.jsonl.zst`, written by `dvc repro`) from a random start, their sizes log-normal
(median 2.6 KB, mean about 4.8 KB, near FineWeb-Edu's pages), made one at a time so that the corpus
itself is never held; `--copies` of them repeat an earlier document with its whitespace changed
(exact duplicates) and as many again with one line changed (near duplicates).

For exact deduplication alone, then exact and near together, it prints the throughput (medians of
`--rounds`, the time to make the documents taken off; wall time, and the CPU time of this one
thread, which a busy machine disturbs less) and the memory the deduplication holds a document at
the end: the bytes Python's allocator traced (tracemalloc, in a run of its own, since tracing slows
Python down) divided by the documents kept, and the size of the exact hash array alone. Near
duplicates found exceed those planted: two documents cut from overlapping runs of lines are near
duplicates too.

    python benchmarks/dedup_speed.py
    python benchmarks/dedup_speed.py --documents 200000 --near-documents 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

from gptcore.data.dedup import DedupStats, HashSet, NearDuplicates, drop_duplicates, text_hash
from gptcore.data.split import Document, iter_split_file
from gptcore.params import DedupParams

MEDIAN_DOCUMENT_BYTES = 2600
SIGMA = 1.1


def documents(lines: list[str], n: int, copies: float, seed: int) -> Iterator[Document]:
    rng = random.Random(seed)
    recent: list[str] = []  # a few earlier documents to copy
    mean_line = sum(map(len, lines)) / len(lines)
    for i in range(n):
        roll = rng.random()
        if recent and roll < copies:
            text = "  " + rng.choice(recent).replace("\n", "\n ", 3)  # the same after normalisation
        elif recent and roll < 2 * copies:
            cut = rng.choice(recent).split("\n")
            cut[rng.randrange(len(cut))] = "a line that was not there before, in a near copy"
            text = "\n".join(cut)
        else:
            count = max(1, int(rng.lognormvariate(math.log(MEDIAN_DOCUMENT_BYTES), SIGMA) / mean_line))
            start = rng.randrange(len(lines))
            text = "".join(lines[start : start + count])
            if len(recent) < 1000:
                recent.append(text)
            else:
                recent[rng.randrange(1000)] = text
        yield Document(f"web/{i:08d}", text)


def run(lines: list[str], n: int, params: DedupParams, args: argparse.Namespace) -> None:
    label = "exact + near" if params.near else "exact"
    megabytes = sum(len(d.text.encode()) for d in documents(lines, n, args.copies, args.seed)) / 1e6
    walls, cpus, stats = [], [], DedupStats()
    for _ in range(args.rounds):  # each round times making the documents alone, then with dedup
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in documents(lines, n, args.copies, args.seed):
            pass
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stats = DedupStats()
        wall_dedup, cpu_dedup = time.perf_counter(), time.process_time()
        for _ in drop_duplicates(documents(lines, n, args.copies, args.seed), params, stats):
            pass
        walls.append(time.perf_counter() - wall_dedup - wall)
        cpus.append(time.process_time() - cpu_dedup - cpu)
    s, cpu_s = statistics.median(walls), statistics.median(cpus)
    kept = n - stats.exact - stats.near
    # memory: the structures drop_duplicates builds, built again here and held while measured
    tracemalloc.start()
    seen, index = HashSet(), NearDuplicates(params) if params.near else None
    for doc in documents(lines, n, args.copies, args.seed):
        if seen.add(text_hash(doc.text)) and index is not None:
            index.match_or_add(doc)
    traced, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"{label:<13} {n:>9,} docs {megabytes:>8,.1f} MB | wall {s:>6.1f} s {megabytes / s:>7.2f} MB/s | "
        f"CPU {cpu_s:>6.1f} s {megabytes / cpu_s:>7.2f} MB/s {cpu_s / n * 1e6:>7.1f} us/doc | "
        f"dropped exact {stats.exact:,}, near {stats.near:,} | held {traced / kept:>7,.0f} B/doc kept "
        f"(hash array {seen.nbytes / len(seen):.1f} B/doc)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", type=Path, default=Path("data/split/train.jsonl.zst"))
    parser.add_argument("--documents", type=int, default=200_000, help="for exact deduplication")
    parser.add_argument("--near-documents", type=int, default=20_000, help="for exact + near")
    parser.add_argument("--copies", type=float, default=0.05, help="share of exact copies, and of near ones")
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lines = [line for doc in iter_split_file(args.split) for line in doc.text.splitlines(keepends=True)]
    params = DedupParams(
        exact=True, near=False, threshold=args.threshold, num_perm=args.num_perm, shingle_words=5
    )
    run(lines, args.documents, params, args)
    near = DedupParams(
        exact=True, near=True, threshold=args.threshold, num_perm=args.num_perm, shingle_words=5
    )
    run(lines, args.near_documents, near, args)


if __name__ == "__main__":
    main()
