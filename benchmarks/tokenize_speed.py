"""Throughput of the tokenize stage's engine against raw tiktoken, for a BPE vocabulary.

The tokenize stage reads a split file (zstd JSON Lines), encodes every document on `workers`
processes, keeps stream order, and writes an HDF5 token file. This script times exactly that
(`gptcore.data.encode.tokenize_to_file` over `iter_split_file`) and, on the same documents held in
memory, tiktoken's own `Encoding.encode_ordinary_batch(texts, num_threads=workers)`, which does no
reading or writing at all. The ratio of the two is what our plumbing costs; the target is >= 0.8.

The corpus is the default one (the train split of the plays, `data/split/train.jsonl.zst`, written
by `dvc repro`), repeated `--repeat` times so that a run lasts long enough to time; the BPE
vocabulary (`--vocab-size`, default 4096) is learned from it first.

    python benchmarks/tokenize_speed.py
    python benchmarks/tokenize_speed.py --workers 1 2 --repeat 20 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gptcore.data.encode import default_workers, tokenize_to_file
from gptcore.data.split import Document, iter_split_file, write_split_file
from gptcore.tokenizer import BpeTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", type=Path, default=Path("data/split/train.jsonl.zst"))
    parser.add_argument("--repeat", type=int, default=10, help="copies of the split's documents")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--workers", type=int, nargs="+", default=[default_workers()])
    parser.add_argument("--rounds", type=int, default=3, help="timings per variant (median quoted)")
    args = parser.parse_args()

    docs = list(iter_split_file(args.split))
    tokenizer = BpeTokenizer.train((d.text for d in docs), args.vocab_size)
    docs = [Document(f"{i}/{d.name}", d.text) for i in range(args.repeat) for d in docs]
    texts = [d.text for d in docs]
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    print(f"corpus: {len(docs):,} documents, {megabytes:,.1f} MB; bpe vocabulary of {tokenizer.vocab_size:,}")

    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "train.jsonl.zst"
        write_split_file(split, docs)
        out = Path(tmp) / "train.h5"
        print(f"\n{'workers':>7} {'variant':<34} {'MB/s':>8} {'tokens/s':>12} {'vs tiktoken':>12}")
        for workers in args.workers:
            raw, ours, tokens = [], [], 0
            for _ in range(args.rounds):  # interleaved, so machine noise hits both alike
                start = time.perf_counter()
                encoded = tokenizer.encoding.encode_ordinary_batch(texts, num_threads=workers)
                raw.append(time.perf_counter() - start)
                tokens = sum(map(len, encoded)) + len(texts)  # + one eot per document, as stored
                del encoded
                start = time.perf_counter()
                summary = tokenize_to_file(out, (d.text for d in iter_split_file(split)), tokenizer, workers)
                ours.append(time.perf_counter() - start)
                assert summary.tokens == tokens
            for name, seconds in (
                ("tiktoken encode_ordinary_batch", statistics.median(raw)),
                ("gptcore split file -> token file", statistics.median(ours)),
            ):
                ratio = statistics.median(raw) / seconds
                print(
                    f"{workers:>7} {name:<34} {megabytes / seconds:>8.2f} {tokens / seconds:>12,.0f} {ratio:>11.2f}x"
                )


if __name__ == "__main__":
    main()
