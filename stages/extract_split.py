"""Stage extract_split: documents out of data/raw/ into data/split/ train and val, + reports/data.json."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from gptcore.atomic import atomic_dir, write_json
from gptcore.data.documents import BINARY, BOM, CUT, LINE_ENDS, TOO_LONG, DocumentStats, iter_documents, some
from gptcore.data.split import write_splits
from gptcore.errors import run_main
from gptcore.params import load_section

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
        max_document_bytes=params.max_document_bytes,
        newlines=params.newlines,
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
        "binary_files": {"count": stats.skipped[BINARY], "names": stats.names.get(BINARY, [])},
        "too_long_lines": {"count": stats.skipped[TOO_LONG], "names": stats.names.get(TOO_LONG, [])},
        "cut_documents": {"count": stats.changed[CUT], "names": stats.names.get(CUT, [])},
        "bom_dropped_documents": stats.changed[BOM],
        "line_ends_normalised_documents": stats.changed[LINE_ENDS],
    }
    write_json(REPORT, report)
    for split in ("train", "val"):
        c = counts[split]
        print(
            f"{split}: {count(c['documents'], 'document')}, {c['characters']:,} characters, {c['bytes']:,} bytes"
        )
    limit = f"data.max_document_bytes ({params.max_document_bytes:,})"
    notices = [
        (stats.skipped[BINARY], BINARY, "binary file{s} skipped (not text)"),
        (stats.skipped[TOO_LONG], TOO_LONG, f"JSON line{{s}} longer than {limit} skipped"),
        (stats.changed[CUT], CUT, f"document{{s}} longer than {limit} read as parts <name>#1, #2, ..."),
    ]
    for n, kind, what in notices:
        if n:
            print(f"{n:,} {what.format(s='s' * (n != 1))}: {some(stats.names[kind], n)}")
    if stats.invalid_utf8:
        print(f"{count(stats.invalid_utf8, 'document')} held invalid UTF-8 (replaced by U+FFFD)")
    if stats.stopped_by:
        print(f"stopped early by data.{stats.stopped_by}, as asked")
    print(f"details: {REPORT}")


def count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


if __name__ == "__main__":
    run_main(main)
