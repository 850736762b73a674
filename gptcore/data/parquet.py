"""Parquet files (FineWeb, FineWeb-Edu, TinyStories, most Hugging Face Hub datasets) read a slice
of rows at a time with pyarrow.

Only the text column (`data.text_field`) and the columns `data.where` names are decoded; the others
(FineWeb's `url`, `id`, ...) are never read. A column chunk is read page by page (no pre-buffering),
and a row group is read as slices of rows whose text, by the file's own size metadata, comes to
about `slice_bytes`: memory follows the slice, never the row group, whatever size its writer chose.

A file must be seekable (Parquet's index is its footer): a Parquet member of a tar or a zip, or a
compressed `.parquet.gz`, is first spilled to an anonymous temporary file on disk (see documents.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gptcore.data.where import WhereError, check_columns, column, column_names, keep_mask, listed, resolve
from gptcore.errors import DataError
from gptcore.params import Filter

READ_BUFFER = 1 << 20  # bytes read from the file at a time while decoding a column chunk's pages
SLICE_BYTES = 1 << 22  # decoded bytes of the columns read that one slice of rows aims at
# text types and the binary type each is read as, so that invalid UTF-8 is ours to replace and count
_AS_BYTES = {
    pa.string(): pa.binary(),
    pa.large_string(): pa.large_binary(),
    pa.string_view(): pa.binary_view(),
}


@dataclass
class ParquetSlice:
    """The rows of one slice that passed data.where: their indices in the file (from 0) and their
    text as bytes (None: the text column does not hold text; `text_type` says what it holds)."""

    rows: list[int]
    texts: list[bytes | None] | None
    sizes: list[int | None] | None  # UTF-8 bytes of each text, known before it is decoded
    rejected: Counter[str]  # rows data.where left out, by the label of the first condition failed


class ParquetRecords:
    """The records of one Parquet file. Opening reads only the footer and checks the columns:
    DataError names the file (`where`) and what is wrong with it."""

    def __init__(
        self,
        source: BinaryIO,
        where: str,
        text_field: str,
        filters: Sequence[Filter],
        slice_bytes: int = SLICE_BYTES,
    ) -> None:
        self.where = where
        self.slice_bytes = slice_bytes
        self.filters = tuple(filters)
        try:
            self.file = pq.ParquetFile(source, buffer_size=READ_BUFFER, pre_buffer=False)
            schema = self.file.schema_arrow
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"{where}: not a readable Parquet file: its footer is missing, corrupt or truncated ({exc})"
            ) from None
        text = resolve(schema, text_field)
        if text is None:
            raise DataError(
                f'{where}: no column "{text_field}" (data.text_field) in this Parquet file; '
                f"its columns: {listed(column_names(schema))}"
            )
        self.text = text
        self.text_type: pa.DataType = text[2]
        self.is_text = _as_bytes(self.text_type) is not None
        try:
            self.checked = check_columns(self.filters, schema)
        except WhereError as exc:
            raise DataError(f"{where}: {exc}") from None
        self.places = [resolve(schema, f.field) if f is not None else None for f in self.checked]
        self.columns = sorted({text[0], *(p[0] for p in self.places if p is not None)})
        self.labels = [f.label for f in self.filters]

    def slices(self) -> Iterator[ParquetSlice]:
        """The file's rows in order, a slice at a time, less those data.where rejects."""
        meta = self.file.metadata
        first = 0
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            batches = self.file.iter_batches(
                batch_size=self._slice_rows(group),
                row_groups=[group],
                columns=self.columns,
                use_threads=False,
            )
            start = first
            while True:
                try:
                    batch = next(batches, None)
                    if batch is None:
                        break
                    piece = self._slice(batch, start)
                except (pa.ArrowException, OSError) as exc:
                    raise DataError(
                        f"{self.where}, row group {group}: corrupt Parquet data ({exc})"
                    ) from None
                start += batch.num_rows
                yield piece
            first += rows

    def _slice_rows(self, group: int) -> int:
        """Rows per slice in a row group: about slice_bytes of the columns read, at least one row."""
        info = self.file.metadata.row_group(group)
        wanted = set(self.columns)
        size = sum(
            info.column(j).total_uncompressed_size
            for j in range(info.num_columns)
            if info.column(j).path_in_schema.split(".")[0] in wanted
        )
        return max(1, min(info.num_rows, self.slice_bytes * info.num_rows // max(size, 1)))

    def _slice(self, batch: pa.RecordBatch, start: int) -> ParquetSlice:
        rejected: Counter[str] = Counter()
        values = [column(batch, p[0], p[1]) if p is not None else None for p in self.places]
        keep = keep_mask(self.checked, values, batch.num_rows, rejected, self.labels)
        if keep is None:
            rows = list(range(start, start + batch.num_rows))
        else:
            rows = [start + i for i in pc.indices_nonzero(keep).to_pylist()]
        if not self.is_text:
            return ParquetSlice(rows, None, None, rejected)
        texts = column(batch, self.text[0], self.text[1])
        if keep is not None:
            texts = texts.filter(keep)
        as_bytes = _as_bytes(texts.type)
        assert as_bytes is not None  # self.is_text
        texts = texts.cast(as_bytes)
        return ParquetSlice(rows, texts.to_pylist(), pc.binary_length(texts).to_pylist(), rejected)


def _as_bytes(tp: pa.DataType) -> pa.DataType | None:
    """The binary type to read a text column as; None if the column does not hold text."""
    if pa.types.is_dictionary(tp):
        return _as_bytes(tp.value_type)
    if tp in _AS_BYTES:
        return _AS_BYTES[tp]
    binary = (
        pa.types.is_binary,
        pa.types.is_large_binary,
        pa.types.is_binary_view,
        pa.types.is_fixed_size_binary,
    )
    return tp if any(is_(tp) for is_ in binary) else None
