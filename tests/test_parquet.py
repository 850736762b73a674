"""Specification of Parquet as a corpus (gptcore.data.parquet, through iter_documents): rows are
documents, read a slice at a time, only the columns needed; Hub dataset layouts, archives and URLs;
and every kind of bad Parquet input named."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import random
import tarfile
import threading
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gptcore.data.documents import DocumentStats, iter_documents
from gptcore.data.sources import fetch_source
from gptcore.data.split import Document
from gptcore.errors import DataError
from gptcore.params import parse_where

LANGUAGES = ["en", "en", "fr", "en", "de"]


def fineweb_edu(n: int, start: int = 0) -> pa.Table:
    """`n` rows in FineWeb-Edu's schema; row i's text says i, its int_score is i % 5, its language
    LANGUAGES[i % 5]."""
    rows = range(start, start + n)
    return pa.table(
        {
            "text": [f"Document {i}: the lesson of the day.\nSecond line {i}." for i in rows],
            "id": [f"<urn:uuid:{i:08x}>" for i in rows],
            "dump": ["CC-MAIN-2024-10"] * n,
            "url": [f"https://example.org/{i}" for i in rows],
            "file_path": ["s3://commoncrawl/x.warc.gz"] * n,
            "language": [LANGUAGES[i % 5] for i in rows],
            "language_score": [0.5 + (i % 5) / 10 for i in rows],
            "token_count": pa.array([10 + i for i in rows], pa.int64()),
            "score": [(i % 5) + 0.25 for i in rows],
            "int_score": pa.array([i % 5 for i in rows], pa.int64()),
        }
    )


def write_parquet(path: Path, table: pa.Table, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=row_group_size)
    return out.getvalue()


def read(
    root: Path, include: list[str] | None = None, **kwargs: object
) -> tuple[list[Document], DocumentStats]:
    stats = DocumentStats()
    docs = list(iter_documents(root, include or ["**"], stats, **kwargs))  # type: ignore[arg-type]
    return docs, stats


def expected_text(i: int) -> str:
    return f"Document {i}: the lesson of the day.\nSecond line {i}."


# -- rows are documents


def test_each_row_is_a_document_named_file_and_row_across_row_groups(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "shard.parquet", fineweb_edu(10), row_group_size=3)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    docs, stats = read(tmp_path, ["*.parquet"])
    assert [d.name for d in docs] == [
        f"shard.parquet:{i}" for i in range(10)
    ]  # rows from 0, as pandas counts
    assert [d.text for d in docs] == [expected_text(i) for i in range(10)]
    assert stats.documents == 10


def test_text_field_names_the_column_to_read(tmp_path: Path) -> None:
    table = pa.table({"content": ["alpha", "beta"], "text": ["not this", "nor this"]})
    write_parquet(tmp_path / "code.parquet", table)
    docs, _ = read(tmp_path, text_field="content")
    assert [d.text for d in docs] == ["alpha", "beta"]


def test_columns_neither_text_nor_where_needs_are_never_read(tmp_path: Path) -> None:
    # the url column's pages are overwritten with garbage: a reader that decoded it would fail
    path = write_parquet(tmp_path / "shard.parquet", fineweb_edu(50), row_group_size=25)
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata
    for group in range(meta.num_row_groups):
        chunk = meta.row_group(group).column(meta.schema.names.index("url"))
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        data[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(data))
    where = parse_where("data.where", {"int_score": ">=3"})
    docs, _ = read(tmp_path, where=where)
    assert [d.name for d in docs] == [f"shard.parquet:{i}" for i in range(50) if i % 5 >= 3]
    with pytest.raises(DataError, match=r"shard\.parquet, row group 0: corrupt Parquet data"):
        read(tmp_path, text_field="url")


def test_a_big_row_group_is_read_a_slice_at_a_time_never_whole(tmp_path: Path) -> None:
    # one row group of 48 MB of incompressible text: Arrow memory while documents stream out stays
    # at a few slices (a reader that loaded the row group, or pre-buffered its column, held it all)
    rows = 12_000
    noise = random.Random(0)
    texts = [f"{i:06d} " + noise.randbytes(2000).hex() for i in range(rows)]  # snappy cannot shrink it
    path = write_parquet(tmp_path / "big.parquet", pa.table({"text": texts}), row_group_size=rows)
    info = pq.ParquetFile(path).metadata
    assert info.num_row_groups == 1 and info.row_group(0).column(0).total_compressed_size > 40_000_000
    del texts
    # the file's bytes reach pyarrow through Python reads (Python's heap, which tracemalloc sees);
    # what pyarrow decodes lives in its own pool (which total_allocated_bytes sees)
    baseline = pa.total_allocated_bytes()
    arrow_peak, count = 0, 0
    tracemalloc.start()
    try:
        for doc in iter_documents(tmp_path, ["**"]):
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - baseline)
            count += 1
            if count == 1:
                assert doc.text.startswith("000000 ")
        python_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == rows
    peak = arrow_peak + python_peak
    # a few slices of SLICE_BYTES (4 MiB): the batch, its values as bytes, the page being decoded
    assert peak < 32_000_000, f"{peak:,} bytes held while reading a 48 MB row group"


# -- where


def test_where_on_fineweb_edu_columns_keeps_rows_and_counts_the_first_condition_failed(
    tmp_path: Path,
) -> None:
    write_parquet(tmp_path / "edu.parquet", fineweb_edu(20), row_group_size=7)
    where = parse_where("data.where", {"int_score": ">=3", "language": "en"})
    docs, stats = read(tmp_path, where=where)
    kept = [i for i in range(20) if i % 5 >= 3 and LANGUAGES[i % 5] == "en"]
    assert [d.name for d in docs] == [f"edu.parquet:{i}" for i in kept]
    assert [d.text for d in docs] == [expected_text(i) for i in kept]
    # rows 0-2 of every 5 fail int_score first; row 4 (de) fails language
    assert stats.where == {"int_score >= 3": 12, "language == en": 4}
    assert stats.skipped["where"] == 16


def test_where_reaches_into_struct_columns(tmp_path: Path) -> None:
    meta = [{"pile_set_name": name} for name in ("Pile-CC", "ArXiv", "Github")]
    write_parquet(tmp_path / "pile.parquet", pa.table({"text": ["web", "paper", "code"], "meta": meta}))
    docs, stats = read(tmp_path, pile_set_names=["Pile-CC", "Github"])
    assert [d.text for d in docs] == ["web", "code"]
    assert stats.where == {"meta.pile_set_name in [Pile-CC, Github]": 1}


@pytest.mark.parametrize(
    ("values", "where"),
    [
        (pa.array(["en", "fr", "en", "de"], pa.large_string()), {"v": "en"}),
        (pa.array(["en", "fr", "en", "de"]).dictionary_encode(), {"v": ["en"]}),
        (pa.array(["en", "fr", "en", "de"], pa.string_view()), {"v": "==en"}),
        (pa.array([3, 1, 4, 0], pa.uint8()), {"v": ">=3"}),
        (pa.array([3, 1, 4, 0], pa.int32()), {"v": [3, 4]}),
        (pa.array([3.5, 1.0, 4.0, 0.5], pa.float32()), {"v": ">2.5"}),
        (pa.array([3, 1, 4, 0], pa.decimal128(5, 2)), {"v": ">=3"}),
        (pa.array([True, False, True, False]), {"v": True}),
    ],
    ids=["large_string", "dictionary", "string_view", "uint8", "int32-in", "float32", "decimal", "bool"],
)
def test_where_holds_on_every_arrow_type_of_strings_numbers_and_booleans(
    tmp_path: Path, values: pa.Array, where: dict
) -> None:
    write_parquet(tmp_path / "x.parquet", pa.table({"text": ["a", "b", "c", "d"], "v": values}))
    docs, stats = read(tmp_path, where=parse_where("data.where", where))
    assert [d.text for d in docs] == ["a", "c"]
    assert sum(stats.where.values()) == 2


def test_a_null_in_a_where_column_fails_the_condition(tmp_path: Path) -> None:
    table = pa.table({"text": ["a", "b", "c"], "int_score": pa.array([4, None, 1], pa.int64())})
    write_parquet(tmp_path / "x.parquet", table)
    docs, stats = read(tmp_path, where=parse_where("data.where", {"int_score": "!=1"}))
    assert [d.text for d in docs] == ["a"]
    assert stats.where == {"int_score != 1": 2}


def test_an_unknown_where_column_names_the_columns_the_file_has(tmp_path: Path) -> None:
    write_parquet(tmp_path / "edu.parquet", fineweb_edu(3))
    with pytest.raises(DataError) as info:
        read(tmp_path, where=parse_where("data.where", {"int_scor": ">=3"}))
    message = str(info.value)
    assert "edu.parquet" in message and '"int_scor"' in message
    assert (
        "text, id, dump, url, file_path, language, language_score, token_count, score, int_score" in message
    )


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ({"language": ">=3"}, r'language >= 3: column "language" is string, not a number column'),
        ({"int_score": "high"}, r'int_score == high: column "int_score" is int64, not a string column'),
        ({"language": False}, r'language == false: column "language" is string, not a boolean column'),
    ],
)
def test_a_where_value_of_the_wrong_kind_names_the_column_and_its_type(
    tmp_path: Path, where: dict, said: str
) -> None:
    write_parquet(tmp_path / "edu.parquet", fineweb_edu(3))
    with pytest.raises(DataError, match=r"edu\.parquet: data\.where " + said):
        read(tmp_path, where=parse_where("data.where", where))


def test_nothing_passing_where_is_an_error_with_the_counts(tmp_path: Path) -> None:
    write_parquet(tmp_path / "edu.parquet", fineweb_edu(10))
    (tmp_path / "README.md").write_text("# the dataset card, which data.include leaves out\n")
    with pytest.raises(DataError, match=r"no record .* passes data\.where.*int_score > 4: 10"):
        read(tmp_path, ["*.parquet"], where=parse_where("data.where", {"int_score": ">4"}))


# -- bad input


def test_a_file_without_the_text_column_names_the_columns_it_has(tmp_path: Path) -> None:
    write_parquet(tmp_path / "x.parquet", pa.table({"content": ["a"], "id": [1]}))
    with pytest.raises(
        DataError, match=r'x\.parquet: no column "text" \(data\.text_field\).*columns: content, id'
    ):
        read(tmp_path)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:-12] + b"\x00" * 8 + b[-4:], id="corrupt-footer"),
        pytest.param(lambda b: b[:-4] + b"XXXX", id="no-magic"),
        pytest.param(lambda b: b"", id="empty"),
    ],
)
def test_a_truncated_or_corrupt_file_names_the_file(tmp_path: Path, damage: object) -> None:
    good = parquet_bytes(fineweb_edu(20), row_group_size=5)
    (tmp_path / "shard.parquet").write_bytes(damage(good))  # type: ignore[operator]
    with pytest.raises(DataError, match=r"shard\.parquet: not a readable Parquet file"):
        read(tmp_path)


def test_corrupt_pages_name_the_file_and_the_row_group(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "shard.parquet", fineweb_edu(20), row_group_size=5)
    data = bytearray(path.read_bytes())
    chunk = pq.ParquetFile(path).metadata.row_group(2).column(0)  # text, third row group
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data[start : start + chunk.total_compressed_size] = b"\x07" * chunk.total_compressed_size
    path.write_bytes(bytes(data))
    docs = []
    with pytest.raises(DataError, match=r"shard\.parquet, row group 2: corrupt Parquet data"):
        for doc in iter_documents(tmp_path, ["**"]):
            docs.append(doc)
    assert len(docs) == 10  # the first two row groups came out whole


def test_null_texts_are_skipped_counted_and_named(tmp_path: Path) -> None:
    write_parquet(tmp_path / "x.parquet", pa.table({"text": ["a", None, "c", None]}))
    docs, stats = read(tmp_path)
    assert [d.name for d in docs] == ["x.parquet:0", "x.parquet:2"]
    assert stats.skipped["null_text"] == 2
    assert stats.names["null_text"] == ["x.parquet:1", "x.parquet:3"]


def test_a_text_column_that_holds_no_text_is_skipped_and_counted(tmp_path: Path) -> None:
    write_parquet(tmp_path / "a.parquet", pa.table({"text": ["fine", "text"]}))
    write_parquet(tmp_path / "b.parquet", pa.table({"text": pa.array([1, 2, 3], pa.int64())}))
    docs, stats = read(tmp_path)
    assert [d.text for d in docs] == ["fine", "text"]
    assert stats.skipped["not_text"] == 3
    assert stats.names["not_text"] == ["b.parquet (int64)"]


def test_a_corpus_whose_text_column_never_holds_text_is_an_error_naming_it(tmp_path: Path) -> None:
    write_parquet(tmp_path / "b.parquet", pa.table({"text": [[1, 2], [3]]}))
    with pytest.raises(
        DataError, match=r'column "text" \(data\.text_field\) holds no text in b\.parquet \(list'
    ):
        read(tmp_path)


def test_a_binary_text_column_is_decoded_as_utf8_with_bad_bytes_replaced_and_counted(tmp_path: Path) -> None:
    table = pa.table({"text": pa.array([b"caf\xc3\xa9", b"bad \xff byte"], pa.binary())})
    write_parquet(tmp_path / "x.parquet", table)
    docs, stats = read(tmp_path)
    assert [d.text for d in docs] == ["café", "bad \ufffd byte"]
    assert stats.invalid_utf8 == 1


def test_a_value_over_max_document_bytes_is_skipped_and_named(tmp_path: Path) -> None:
    write_parquet(tmp_path / "x.parquet", pa.table({"text": ["short", "y" * 5000, "also short"]}))
    docs, stats = read(tmp_path, max_document_bytes=4096)
    assert [d.text for d in docs] == ["short", "also short"]
    assert stats.skipped["too_long"] == 1 and stats.names["too_long"] == ["x.parquet:1"]


def test_empty_texts_are_skipped_and_line_ends_normalised_as_for_text(tmp_path: Path) -> None:
    write_parquet(tmp_path / "x.parquet", pa.table({"text": ["", "\ufeffa\r\nb"]}))
    docs, stats = read(tmp_path, newlines="lf")
    assert docs == [Document("x.parquet:1", "a\nb")]
    assert stats.skipped["empty"] == 1 and stats.changed["bom_dropped"] == 1


# -- where Parquet files come from


def test_a_hub_dataset_folder_as_downloaded_is_read_with_source_pointing_at_it(tmp_path: Path) -> None:
    hub = tmp_path / "fineweb-edu"
    write_parquet(hub / "data" / "train-00000-of-00002.parquet", fineweb_edu(4, 0))
    write_parquet(hub / "data" / "train-00001-of-00002.parquet", fineweb_edu(4, 4))
    write_parquet(hub / "sample" / "10BT" / "000_00000.parquet", fineweb_edu(3, 8))
    (hub / "README.md").write_text("---\nlicense: odc-by\n---\n# FineWeb-Edu\n")
    (hub / ".gitattributes").write_text("*.parquet filter=lfs\n")
    raw = tmp_path / "data" / "raw"
    fetch_source(str(hub), raw)
    docs, _ = read(raw, ["**/*.parquet"])
    assert [d.name for d in docs] == [
        *(f"data/train-00000-of-00002.parquet:{i}" for i in range(4)),
        *(f"data/train-00001-of-00002.parquet:{i}" for i in range(4)),
        *(f"sample/10BT/000_00000.parquet:{i}" for i in range(3)),
    ]
    assert [d.text for d in docs] == [expected_text(i) for i in range(11)]
    sample, _ = read(raw, ["sample/10BT/*.parquet"])
    assert len(sample) == 3


def tar_of(members: dict[str, bytes], mode: str = "w") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize(
    ("archive", "build"),
    [
        ("corpus.tar", functools.partial(tar_of, mode="w")),
        ("corpus.tar.gz", functools.partial(tar_of, mode="w:gz")),
        ("corpus.zip", zip_of),
    ],
)
def test_parquet_inside_tar_and_zip_archives_is_read(tmp_path: Path, archive: str, build: object) -> None:
    members = {
        "data/a.parquet": parquet_bytes(fineweb_edu(3, 0), row_group_size=2),
        "data/b.parquet": parquet_bytes(fineweb_edu(2, 3)),
    }
    (tmp_path / archive).write_bytes(build(members))  # type: ignore[operator]
    docs, _ = read(tmp_path, ["data/*.parquet"], where=parse_where("data.where", {"language": "en"}))
    # rows 0, 1 and 3 of fineweb_edu are English: a.parquet's first two, b.parquet's first
    assert [d.name for d in docs] == [
        f"{archive}/data/a.parquet:0",
        f"{archive}/data/a.parquet:1",
        f"{archive}/data/b.parquet:0",
    ]
    assert [d.text for d in docs] == [expected_text(0), expected_text(1), expected_text(3)]


def test_a_truncated_parquet_inside_an_archive_names_the_archive_and_the_member(tmp_path: Path) -> None:
    data = parquet_bytes(fineweb_edu(5))
    (tmp_path / "c.tar").write_bytes(tar_of({"x/shard.parquet": data[:-100]}))
    with pytest.raises(DataError, match=r"c\.tar, member x/shard\.parquet: not a readable Parquet file"):
        read(tmp_path)


def test_a_compressed_parquet_file_is_read(tmp_path: Path) -> None:
    data = parquet_bytes(fineweb_edu(6), row_group_size=2)
    (tmp_path / "shard.parquet.gz").write_bytes(gzip.compress(data, mtime=0))
    docs, _ = read(tmp_path, ["*.parquet.gz"])
    assert [d.name for d in docs] == [f"shard.parquet.gz:{i}" for i in range(6)]
    assert [d.text for d in docs] == [expected_text(i) for i in range(6)]


def test_a_parquet_file_without_a_suffix_is_recognised_by_its_content(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(parquet_bytes(fineweb_edu(2)))
    docs, _ = read(tmp_path)
    assert [d.name for d in docs] == ["blob:0", "blob:1"]


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server of a folder: (its base URL, the folder)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", folder
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_parquet_urls_are_downloaded_and_read(tmp_path: Path, http_folder: tuple[str, Path]) -> None:
    url, folder = http_folder
    write_parquet(folder / "000_00000.parquet", fineweb_edu(3, 0))
    write_parquet(folder / "000_00001.parquet", fineweb_edu(2, 3))
    raw = tmp_path / "raw"
    fetch_source([f"{url}/000_00000.parquet", f"{url}/000_00001.parquet"], raw)
    docs, _ = read(raw, ["*.parquet"])
    assert [d.name for d in docs] == [
        *(f"000_00000.parquet:{i}" for i in range(3)),
        "000_00001.parquet:0",
        "000_00001.parquet:1",
    ]
    assert [d.text for d in docs] == [expected_text(i) for i in range(5)]
