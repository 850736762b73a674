"""Throughput and peak memory of reading Parquet documents (gptcore.data.documents over
gptcore.data.parquet), and how they depend on the row-group size a writer chose.

A corpus of `--size` bytes of text is generated in FineWeb-Edu's schema (text, id, dump, url,
file_path, language, language_score, token_count, score, int_score; pseudo-word documents of about
3 KB, lognormal) as `--files` Parquet files, once per row-group size in `--row-groups` (`file`: one
row group per file, the worst case for memory; a number: that many rows per group). Each
configuration is read in a fresh process (`iter_documents`, the reader extract_split uses):

  all       every row, the text column only
  where     `data.where: {int_score: ">=3", language: en}` (two more columns decoded)
  arrow     pyarrow's `read_table(columns=["text"])` then `to_pylist()`: the library reading whole
            files, for scale (it holds a file's text column at once)

and prints the median wall time of `--rounds` rounds (interleaved), MB/s (UTF-8 bytes of the text
column, all rows, per wall second: what a pass over the corpus costs, whatever `where` keeps), and
the peak RSS of the process (VmHWM) over the rounds. The first conversion of Python values into
Arrow (data.where's operands) imports pandas, once a process, as pyarrow does when it is
installed: `where` pays it. MB are 10^6 bytes.

    python benchmarks/parquet_read.py                       # 500 MB, one row group per file and 1,000 rows
    python benchmarks/parquet_read.py --size 100MB --rounds 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
LANGUAGES = np.array(["en", "en", "en", "en", "de", "fr", "es"])

READ = r"""
import json, sys, time
import pyarrow.parquet as pq
from gptcore.data.documents import iter_documents
from gptcore.params import parse_where
folder, mode = sys.argv[1], sys.argv[2]
start = time.perf_counter()
docs = size = 0
if mode == "arrow":
    for path in sorted(__import__("pathlib").Path(folder).glob("*.parquet")):
        for text in pq.read_table(path, columns=["text"]).column("text").to_pylist():
            docs += 1
            size += len(text.encode())
else:
    where = parse_where("data.where", {"int_score": ">=3", "language": "en"}) if mode == "where" else ()
    for doc in iter_documents(folder, ["*.parquet"], where=where):
        docs += 1
        size += len(doc.text.encode())
wall = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report its parent's
status = open("/proc/self/status").read()
peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
print(json.dumps({"docs": docs, "bytes": size, "wall": wall, "peak": peak}))
"""


def generate(folder: Path, size: int, files: int, rows_per_group: int | None, seed: int) -> int:
    """`files` Parquet files in FineWeb-Edu's schema holding about `size` bytes of text in all;
    return the UTF-8 bytes of their text column."""
    rng = np.random.default_rng(seed)
    words = np.array(
        ["".join(rng.choice(list("etaoinshrdlucmfwypvbgkjqxz"), rng.integers(2, 10))) for _ in range(5000)]
    )
    zipf = 1.0 / np.arange(1, len(words) + 1)
    zipf /= zipf.sum()
    folder.mkdir(parents=True)
    per_file, row, total = size // files, 0, 0
    for index in range(files):
        texts: list[str] = []
        have = 0
        while have < per_file:
            n_words = int(min(max(rng.lognormal(np.log(500), 0.8), 20), 20000))
            text = " ".join(words[rng.choice(len(words), n_words, p=zipf)]) + ".\n"
            texts.append(text)
            have += len(text)
        n = len(texts)
        ids = np.arange(row, row + n)
        table = pa.table(
            {
                "text": texts,
                "id": [f"<urn:uuid:{i:032x}>" for i in ids],
                "dump": ["CC-MAIN-2024-10"] * n,
                "url": [f"https://example.org/page/{i}" for i in ids],
                "file_path": [f"s3://commoncrawl/crawl-data/CC-MAIN-2024-10/{index:05d}.warc.gz"] * n,
                "language": LANGUAGES[ids % len(LANGUAGES)],
                "language_score": rng.uniform(0.65, 1.0, n),
                "token_count": pa.array([len(t) // 4 for t in texts], pa.int64()),
                "score": rng.uniform(0.0, 5.0, n),
                "int_score": pa.array(rng.integers(0, 6, n), pa.int64()),
            }
        )
        pq.write_table(table, folder / f"{index:03d}_00000.parquet", row_group_size=rows_per_group or n)
        row += n
        total += have
    return total


def run(folder: Path, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", READ, str(folder), mode], cwd=REPO, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)


def parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("500MB"), help="text bytes in all")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--row-groups", default="file,1000", help="comma-separated: file, or rows per group")
    ap.add_argument("--modes", default="all,where,arrow")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="parquet-read-"))
    try:
        configs, text_bytes = [], {}
        for spec in args.row_groups.split(","):
            rows = None if spec == "file" else int(spec)
            folder = work / f"rg-{spec}"
            text_bytes[spec] = generate(folder, args.size, args.files, rows, args.seed)
            meta = pq.ParquetFile(next(folder.glob("*.parquet"))).metadata
            on_disk = sum(p.stat().st_size for p in folder.glob("*.parquet"))
            print(
                f"row groups {spec}: {args.files} files, {on_disk / 1e6:.0f} MB on disk, "
                f"{meta.num_row_groups} row groups of up to {meta.row_group(0).num_rows:,} rows a file"
            )
            configs += [(spec, folder, mode) for mode in args.modes.split(",")]
        results: dict[tuple[str, str], list[dict]] = {(s, m): [] for s, _, m in configs}
        for _ in range(args.rounds):
            for spec, folder, mode in configs:
                results[spec, mode].append(run(folder, mode))
        print(f"\n| row groups | read | documents | wall s (median of {args.rounds}) | MB/s | peak RSS MB |")
        print("|---|---|---|---|---|---|")
        for (spec, mode), runs in results.items():
            wall = statistics.median(r["wall"] for r in runs)
            peak = max(r["peak"] for r in runs)
            print(
                f"| {spec} | {mode} | {runs[0]['docs']:,} | {wall:.2f} | "
                f"{text_bytes[spec] / 1e6 / wall:.0f} | {peak / 1e6:.0f} |"
            )
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
