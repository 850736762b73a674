"""Stage extract_split: documents out of data/raw/ into data/split/ train and val, + reports/data.json."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gptcore.atomic import atomic_dir, write_json
from gptcore.data.dedup import DedupStats, drop_duplicates
from gptcore.data.documents import (
    BINARY,
    BOM,
    CUT,
    LINE_ENDS,
    NOT_TEXT,
    NULL_TEXT,
    TOO_LONG,
    DocumentStats,
    iter_documents,
    some,
)
from gptcore.data.mixture import Mixture
from gptcore.data.split import Document, write_splits
from gptcore.errors import run_main
from gptcore.params import DataParams, load_section

RAW_DIR = Path("data/raw")
SPLIT_DIR = Path("data/split")
REPORT = Path("reports/data.json")


def split_corpus(
    raw: Path, split: Path, params: DataParams, progress: bool = False
) -> tuple[dict[str, Any], DocumentStats, DedupStats, Mixture | None]:
    """The documents of `raw` (one source, or a mixture of params.sources), duplicates dropped,
    split into `split`/{train,val}.jsonl.zst (written whole or not at all): the splits' counts,
    what reading counted, the duplicates dropped, and the mixture (None: one source)."""
    stats = DocumentStats()
    mixture = None
    documents: Iterable[Document]
    if params.sources is None:
        documents = iter_documents(
            raw,
            params.include,
            stats,
            text_field=params.text_field,
            where=params.filters(),
            max_docs=params.max_docs,
            max_bytes=params.max_bytes,
            max_document_bytes=params.max_document_bytes,
            newlines=params.newlines,
        )
    else:
        mixture = Mixture(
            raw,
            params.sources,
            seed=params.seed,
            max_docs=params.max_docs,
            max_bytes=params.max_bytes,
            max_document_bytes=params.max_document_bytes,
            newlines=params.newlines,
        )
        if progress:
            print(f"a mixture of {len(params.sources)} sources: counting what each holds (a first pass)")
        mixture.count(stats)
        documents = mixture.documents(stats)
    if progress:
        documents = tqdm(documents, desc="documents", unit=" docs")
    duplicates = DedupStats()
    # before the split: a copy in train and another in val would leak the val text into training
    documents = drop_duplicates(documents, params.dedup, duplicates)
    with atomic_dir(split) as tmp:
        counts = write_splits(
            documents,
            tmp / "train.jsonl.zst",
            tmp / "val.jsonl.zst",
            params.seed,
            params.val_fraction,
            tally=None if mixture is None else mixture.tally,
        )
    return counts, stats, duplicates, mixture


def main() -> None:
    params = load_section("data")
    counts, stats, duplicates, mixture = split_corpus(RAW_DIR, SPLIT_DIR, params, progress=True)
    sources: dict[str, Any] = {} if mixture is None else mixture.report()
    report = {
        **counts,
        "skipped": dict(stats.skipped),
        "invalid_utf8_documents": stats.invalid_utf8,
        "stopped_by": stats.stopped_by,
        "binary_files": {"count": stats.skipped[BINARY], "names": stats.names.get(BINARY, [])},
        "too_long_lines": {"count": stats.skipped[TOO_LONG], "names": stats.names.get(TOO_LONG, [])},
        "cut_documents": {"count": stats.changed[CUT], "names": stats.names.get(CUT, [])},
        # written only when asked for, so that a corpus without conditions reports as it always did
        **({"where": dict(stats.where)} if params.any_filters() else {}),
        "bom_dropped_documents": stats.changed[BOM],
        "line_ends_normalised_documents": stats.changed[LINE_ENDS],
        "duplicates": duplicates.report(params.dedup),
        **({"sources": sources} if mixture is not None else {}),
    }
    write_json(REPORT, report)
    for split in ("train", "val"):
        c = counts[split]
        print(
            f"{split}: {count(c['documents'], 'document')}, {c['characters']:,} characters, {c['bytes']:,} bytes"
        )
    for name, entry in sources.items():
        n = entry["train"]["documents"] + entry["val"]["documents"]
        print(
            f"  {name}: {count(n, 'document')}, {entry['share']:.1%} of the text "
            f"(target {entry['target']['share']:.1%}); took {entry['taken']['bytes']:,} of its "
            f"{entry['available']['bytes']:,} bytes"
        )
    limit = f"data.max_document_bytes ({params.max_document_bytes:,})"
    notices = [
        (stats.skipped[BINARY], BINARY, "binary file{s} skipped (not text)"),
        (
            stats.skipped[TOO_LONG],
            TOO_LONG,
            f"record{{s}} (JSON line, Parquet value) longer than {limit} skipped",
        ),
        (stats.skipped[NULL_TEXT], NULL_TEXT, "Parquet row{s} with a null text skipped"),
        (stats.changed[CUT], CUT, f"document{{s}} longer than {limit} read as parts <name>#1, #2, ..."),
    ]
    for n, kind, what in notices:
        if n:
            print(f"{n:,} {what.format(s='s' * (n != 1))}: {some(stats.names[kind], n)}")
    if stats.skipped[NOT_TEXT]:
        files = stats.names[NOT_TEXT]
        print(
            f"{count(stats.skipped[NOT_TEXT], 'Parquet row')} skipped: column {params.text_field} "
            f"holds no text in {some(files, len(files))}"
        )
    for label, n in stats.where.items():
        print(f"{count(n, 'record')} rejected by data.where: {label}")
    if duplicates.exact:
        print(
            f"{count(duplicates.exact, 'exact duplicate')} dropped ({duplicates.exact_bytes:,} bytes): "
            f"{some(duplicates.exact_names, duplicates.exact)}"
        )
    if duplicates.near:
        pairs = [f"{p['dropped']} (like {p['kept']}, {p['similarity']:.2f})" for p in duplicates.near_pairs]
        print(
            f"{count(duplicates.near, 'near duplicate')} (similarity >= {params.dedup.threshold}) dropped "
            f"({duplicates.near_bytes:,} bytes): {some(pairs, duplicates.near)}"
        )
    if stats.invalid_utf8:
        print(f"{count(stats.invalid_utf8, 'document')} held invalid UTF-8 (replaced by U+FFFD)")
    if stats.stopped_by:
        print(f"stopped early by data.{stats.stopped_by}, as asked")
    print(f"details: {REPORT}")


def count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


if __name__ == "__main__":
    run_main(main)
