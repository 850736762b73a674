"""Stage extract_split: documents out of data/raw/ into data/split/ train and val, + reports/data.json."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from gptcore.atomic import atomic_dir, write_json
from gptcore.documents import DocumentStats, iter_documents
from gptcore.errors import run_main
from gptcore.params import load_section
from gptcore.split import write_splits

RAW_DIR = Path("data/raw")
SPLIT_DIR = Path("data/split")
REPORT = Path("reports/data.json")


def main() -> None:
    params = load_section("data")
    stats = DocumentStats()
    documents = iter_documents(
        RAW_DIR,
        params.include,
        stats,
        pile_set_names=params.pile_set_names,
        max_docs=params.max_docs,
        max_bytes=params.max_bytes,
    )
    documents = tqdm(documents, desc="documents", unit=" docs")
    with atomic_dir(SPLIT_DIR) as tmp:
        counts = write_splits(
            documents, tmp / "train.jsonl.zst", tmp / "val.jsonl.zst", params.seed, params.val_fraction
        )
    report = {
        **counts,
        "skipped": dict(stats.skipped),
        "invalid_utf8_documents": stats.invalid_utf8,
        "stopped_by": stats.stopped_by,
    }
    write_json(REPORT, report)
    for split in ("train", "val"):
        c = counts[split]
        print(f"{split}: {c['documents']:,} documents, {c['characters']:,} characters, {c['bytes']:,} bytes")
    if stats.invalid_utf8:
        print(f"{stats.invalid_utf8:,} documents held invalid UTF-8 (replaced by U+FFFD)")
    if stats.stopped_by:
        print(f"stopped early by data.{stats.stopped_by}, as asked")


if __name__ == "__main__":
    run_main(main)
