"""Mixtures of sources (data.sources): how much of each source to take, which documents, in what order.

Each source of a mixture sits in its own folder of data/raw, named after it (the download stage,
gptcore/data/sources.py). `Mixture` reads them in two passes:

1. `count`: every source is read through, its `include`, `text_field` and `where` applied, and its
   documents and UTF-8 bytes of text counted: what it has available. `plan` then fixes each
   source's target in bytes.
2. `documents`: each source is read again and documents are picked to meet its target, spread over
   the whole source; the sources are interleaved so that every stretch of the mixture has its
   composition.

Targets (`plan`), in bytes of text, since documents differ in length by orders of magnitude:

- a source with `max_bytes` (a budget) gives at most that many bytes, all it has if less;
- the sources with a `weight` share the mixture's other bytes, each weight over the weights' sum.
  The weighted part is as large as it can be with every source giving at most what it has: the
  source scarcest for its weight is taken whole and the others are sampled down to match it.
  A weight is a share of the documents taken: no document is repeated to stretch a small source;
- `data.max_bytes`, if the mixture would be larger, scales every target down alike.

Duplicates are dropped after the sampling (gptcore/data/dedup.py, then the split), so a source can
end a little under its target; reports/data.json shows for each source what was asked, what it had,
what was taken and what each split holds.

Picking (selection sampling, Knuth's Algorithm S counted in bytes): a document is taken with
probability (bytes still wanted) / (bytes still to come, its own included), drawn from a hash of
`data.seed` and the document's name. So a source meets its target to within about one document
whatever its documents' lengths, every part of it has the same chance, the same seed picks the same
documents on every machine and another seed others. A document that would take its source past the
target is left out.

Order: the next document comes from the source that has given the smallest fraction of its target,
so `data.max_docs`, which cuts the mixture, keeps its composition. Documents are named
`<source name>/<name inside its folder>`, which keeps two sources' files apart in the split's
assignment, in deduplication and in the split files.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import math
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from gptcore.data.documents import DocumentStats, iter_documents
from gptcore.data.split import TRAIN, VAL, Document
from gptcore.errors import DataError
from gptcore.params import SourceParams

SHARE_DIGITS = 4  # decimals of the shares in reports/data.json


def plan(
    available: Sequence[int],
    weights: Sequence[float | None],
    budgets: Sequence[int | None],
    max_bytes: int | None = None,
) -> list[int]:
    """Each source's target in bytes of text (rules: module docstring). Source i has `available[i]`
    bytes and either `weights[i]` or `budgets[i]` (the other None)."""
    targets = [min(b, a) if b is not None else 0 for a, b in zip(available, budgets, strict=True)]
    # the decimals as written (0.7 is 7/10, not the binary float just under it)
    weighted = [(i, Fraction(str(w))) for i, w in enumerate(weights) if w is not None]
    if weighted:
        total = sum(w for _, w in weighted)
        # exact fractions: the scarcest source's target is all it has, not a byte less
        part = min(available[i] * total / w for i, w in weighted)
        for i, w in weighted:
            targets[i] = min(available[i], math.floor(part * w / total))
    if max_bytes is not None and sum(targets) > max_bytes:
        scale = Fraction(max_bytes, sum(targets))
        targets = [math.floor(t * scale) for t in targets]
    return targets


def draw(seed: int, name: str) -> float:
    """A number in [0, 1) fixed by the seed and a document's name: whether the mixture takes it.
    Not the split's hash (gptcore/data/split.py), which it would otherwise mirror: the documents a
    small share keeps would all land in val."""
    key = f"mixture\0{seed}\0{name}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass
class SourceTally:
    """One source of a mixture: what it had, its target, what was taken, and what each split got."""

    index: int  # its place in data.sources
    params: SourceParams
    stats: DocumentStats = field(default_factory=DocumentStats)  # its counting pass
    available_documents: int = 0
    available_bytes: int = 0
    target_bytes: int = 0
    taken_documents: int = 0
    taken_bytes: int = 0
    splits: dict[str, dict[str, int]] = field(
        default_factory=lambda: {split: {"documents": 0, "bytes": 0} for split in (TRAIN, VAL)}
    )


class Mixture:
    """The documents of data.sources, counted, sampled to their targets and interleaved."""

    def __init__(
        self,
        root: Path | str,
        sources: Sequence[SourceParams],
        *,
        seed: int,
        max_docs: int | None,
        max_bytes: int | None,
        max_document_bytes: int | None,
        newlines: str,
    ) -> None:
        self.root = Path(root)
        self.sources = [SourceTally(i, params) for i, params in enumerate(sources)]
        self.by_name = {tally.params.name: tally for tally in self.sources}
        self.seed = seed
        self.max_docs = max_docs
        self.max_bytes = max_bytes
        self.max_document_bytes = max_document_bytes
        self.newlines = newlines
        self.counted = False

    def count(self, stats: DocumentStats) -> None:
        """The first pass: what each source has; then the targets. `stats` gets every source's
        counts (skipped files and records, where, changed documents), their names prefixed."""
        for tally in self.sources:
            for doc in self._read(tally, tally.stats):
                tally.available_documents += 1
                tally.available_bytes += utf8_size(doc.text)
            stats.merge(tally.stats, prefix=f"{tally.params.name}/")
        available = [tally.available_bytes for tally in self.sources]
        weights = [tally.params.weight for tally in self.sources]
        budgets = [tally.params.max_bytes for tally in self.sources]
        unscaled = plan(available, weights, budgets)
        targets = plan(available, weights, budgets, self.max_bytes)
        if targets != unscaled:
            stats.stopped_by = "max_bytes"
        for tally, target in zip(self.sources, targets, strict=True):
            tally.target_bytes = target
        self.counted = True

    def documents(self, stats: DocumentStats) -> Iterator[Document]:
        """The mixture's documents, interleaved (counted first if `count` was not called)."""
        if not self.counted:
            self.count(stats)
        with contextlib.ExitStack() as stack:
            streams = [stack.enter_context(contextlib.closing(self._sample(t))) for t in self.sources]
            given = [0] * len(streams)
            # (fraction of its target given so far, source): the source furthest behind goes next
            queue = [(0.0, i) for i, tally in enumerate(self.sources) if tally.target_bytes > 0]
            taken = 0
            while queue:
                _, i = heapq.heappop(queue)
                doc = next(streams[i], None)
                if doc is None:
                    continue
                yield doc
                taken += 1
                if self.max_docs is not None and taken >= self.max_docs:
                    stats.stopped_by = "max_docs"
                    return
                given[i] += utf8_size(doc.text)
                heapq.heappush(queue, (given[i] / self.sources[i].target_bytes, i))

    def tally(self, split: str, doc: Document) -> None:
        """Count a document written to `split` for its source (gptcore.data.split.write_splits's hook)."""
        counts = self.by_name[doc.name.split("/", 1)[0]].splits[split]
        counts["documents"] += 1
        counts["bytes"] += utf8_size(doc.text)

    def report(self) -> dict[str, Any]:
        """reports/data.json's `sources`: for each source what was asked, what it had, its target,
        what was taken (before duplicates were dropped), and per split its documents, bytes and
        share of the split's bytes; `share`, of both splits'."""
        split_bytes = {split: sum(t.splits[split]["bytes"] for t in self.sources) for split in (TRAIN, VAL)}
        all_bytes = sum(split_bytes.values())
        all_targets = sum(t.target_bytes for t in self.sources)
        report = {}
        for t in self.sources:
            p = t.params
            asked: dict[str, Any] = (
                {"weight": p.weight} if p.weight is not None else {"max_bytes": p.max_bytes}
            )
            entry: dict[str, Any] = {
                "asked": asked,
                "available": {"documents": t.available_documents, "bytes": t.available_bytes},
                "target": {"bytes": t.target_bytes, "share": _share(t.target_bytes, all_targets)},
                "taken": {"documents": t.taken_documents, "bytes": t.taken_bytes},
            }
            for split in (TRAIN, VAL):
                counts = t.splits[split]
                entry[split] = {**counts, "share": _share(counts["bytes"], split_bytes[split])}
            entry["share"] = _share(t.splits[TRAIN]["bytes"] + t.splits[VAL]["bytes"], all_bytes)
            if p.filters():
                entry["where"] = dict(t.stats.where)
            report[p.name] = entry
        return report

    def _read(self, tally: SourceTally, stats: DocumentStats) -> Generator[Document, None, None]:
        """A source's documents, named `<source>/<name>`; errors name the source."""
        p = tally.params
        documents = iter_documents(
            self.root / p.name,
            p.include,
            stats,
            text_field=p.text_field,
            where=p.filters(),
            max_document_bytes=self.max_document_bytes,
            newlines=self.newlines,
        )
        try:
            for doc in documents:
                yield Document(f"{p.name}/{doc.name}", doc.text)
        except DataError as exc:
            raise DataError(f"data.sources[{tally.index}] ({p.name}): {exc}") from None

    def _sample(self, tally: SourceTally) -> Generator[Document, None, None]:
        """The second pass over a source: the documents that meet its target (rules: module docstring)."""
        target, to_come = tally.target_bytes, tally.available_bytes
        if target <= 0:
            return
        with contextlib.closing(self._read(tally, DocumentStats())) as documents:
            for doc in documents:
                size = utf8_size(doc.text)
                wanted = target - tally.taken_bytes
                if size <= wanted and draw(self.seed, doc.name) * to_come < wanted:
                    tally.taken_documents += 1
                    tally.taken_bytes += size
                    yield doc
                    if tally.taken_bytes == target:
                        return
                to_come -= size


def _share(part: int, whole: int) -> float:
    return round(part / whole, SHARE_DIGITS) if whole else 0.0
