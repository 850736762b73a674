"""Specification of the train/val split: deterministic, disjoint, complete, never an empty split."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptcore.data.split import (
    Document,
    assign_split,
    iter_assigned,
    iter_split_file,
    position_cut,
    write_split_file,
    write_splits,
)
from gptcore.errors import DataError


def split_documents(
    documents: list[Document], seed: int, val_fraction: float
) -> tuple[list[Document], list[Document]]:
    """The (train, val) documents as lists, from the stream the stage writes."""
    splits: dict[str, list[Document]] = {"train": [], "val": []}
    for split, doc in iter_assigned(documents, seed, val_fraction):
        splits[split].append(doc)
    return splits["train"], splits["val"]


def corpus(n: int, prefix: str = "doc") -> list[Document]:
    return [Document(f"{prefix}{i:05d}.txt", f"text of document {i}\n" * 3) for i in range(n)]


def test_split_is_deterministic_and_disjoint_and_complete() -> None:
    docs = corpus(500)
    train, val = split_documents(docs, seed=1337, val_fraction=0.1)
    again = split_documents(list(reversed(docs)), seed=1337, val_fraction=0.1)
    assert {d.name for d in train} == {d.name for d in again[0]}, "the order of the input does not matter"
    assert {d.name for d in train}.isdisjoint({d.name for d in val})
    assert sorted(train + val) == sorted(docs), "every document lands once, text unchanged"


def test_assign_split_depends_on_name_and_seed_only() -> None:
    doc = Document("books/moby-dick.txt", "Call me Ishmael.")
    same_name = Document("books/moby-dick.txt", "entirely different text")
    assert assign_split(doc, 7, 0.5) == assign_split(same_name, 7, 0.5)
    by_seed = {assign_split(Document(f"d{i}", ""), seed, 0.5) for i in range(20) for seed in (1, 2)}
    assert by_seed == {"train", "val"}
    docs = corpus(200)
    assert [assign_split(d, 1, 0.5) for d in docs] != [assign_split(d, 2, 0.5) for d in docs]


def test_val_share_follows_val_fraction_on_a_large_corpus() -> None:
    docs = corpus(4000)
    for fraction in (0.05, 0.1, 0.5):
        _, val = split_documents(docs, seed=0, val_fraction=fraction)
        assert abs(len(val) / len(docs) - fraction) < 0.02


def test_a_larger_val_fraction_only_adds_documents_to_val() -> None:
    docs = corpus(1000)
    _, small = split_documents(docs, seed=3, val_fraction=0.1)
    _, large = split_documents(docs, seed=3, val_fraction=0.2)
    assert {d.name for d in small} <= {d.name for d in large}


def test_one_document_corpus_is_split_by_position() -> None:
    text = "".join(f"line {i:03d}\n" for i in range(100))  # 1,000 characters in lines of 9+1
    train, val = split_documents([Document("input.txt", text)], seed=0, val_fraction=0.1)
    assert train[0].text + val[0].text == text
    assert train[0].name == val[0].name == "input.txt"
    assert val[0].text.startswith("line 090\n"), "val starts at a line, 10% from the end"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_corpora_of_up_to_three_documents_split_every_document_by_position(n: int) -> None:
    docs = corpus(n)
    train, val = split_documents(docs, seed=0, val_fraction=0.3)
    assert len(train) == len(val) == n
    assert [t.text + v.text for t, v in zip(train, val, strict=True)] == [d.text for d in docs]


def test_four_documents_are_split_whole_by_hash() -> None:
    docs = corpus(4)
    train, val = split_documents(docs, seed=0, val_fraction=0.3)
    assert train and val
    assert sorted(train + val) == docs, "each document lands whole in one split"


def test_position_cut_prefers_a_newline_near_the_boundary() -> None:
    assert position_cut("a" * 93 + "\n" + "b" * 6, 0.1) == 94  # just after the newline
    assert position_cut("a" * 95 + "\n" + "b" * 4, 0.1) == 90  # beyond half the val part: too far
    assert position_cut("a" * 89 + "\n" + "b" * 10, 0.1) == 90
    assert position_cut("a" * 100, 0.1) == 90  # no newline: cut at the fraction
    assert position_cut("\n" + "a" * 99, 0.1) == 90  # a newline far away is ignored


@pytest.mark.parametrize("text", ["ab", "abc", "\n\n", "a\n", "x" * 7])
@pytest.mark.parametrize("fraction", [0.001, 0.5, 0.999])
def test_position_cut_leaves_both_parts_non_empty(text: str, fraction: float) -> None:
    assert 0 < position_cut(text, fraction) < len(text)


def test_tiny_corpus_that_cannot_be_split_is_an_error() -> None:
    with pytest.raises(DataError, match="too small to split"):
        split_documents([Document("a.txt", "x")], seed=0, val_fraction=0.1)


def test_no_documents_is_an_error() -> None:
    with pytest.raises(DataError, match="no documents"):
        split_documents([], seed=0, val_fraction=0.1)


@pytest.mark.parametrize(("fraction", "moved_to"), [(1e-12, "val"), (1 - 1e-12, "train")])
def test_when_the_hash_leaves_a_split_empty_one_document_moves_there(fraction: float, moved_to: str) -> None:
    docs = corpus(10)
    train, val = split_documents(docs, seed=0, val_fraction=fraction)
    moved = val if moved_to == "val" else train
    assert moved == [docs[0]], "the first document moves, whatever the seed"
    assert len(train) + len(val) == 10


def test_split_streams_with_at_most_four_documents_held() -> None:
    pulled = 0

    def endless() -> Iterator[Document]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield Document(f"d{i}", "x")

    assigned = iter_assigned(endless(), seed=0, val_fraction=0.5)
    for taken in range(1, 1000):
        next(assigned)
        assert pulled <= taken + 4


def test_write_splits_round_trips_through_the_split_files(tmp_path: Path) -> None:
    docs = corpus(50) + [Document("unicode.txt", "caf\u00e9 \u4e2d\u6587 \U0001f600\n")]
    counts = write_splits(docs, tmp_path / "train.jsonl.zst", tmp_path / "val.jsonl.zst", 1, 0.2)
    train = list(iter_split_file(tmp_path / "train.jsonl.zst"))
    val = list(iter_split_file(tmp_path / "val.jsonl.zst"))
    assert (train, val) == split_documents(docs, 1, 0.2)
    for split, got in (("train", train), ("val", val)):
        assert counts[split] == {
            "documents": len(got),
            "characters": sum(len(d.text) for d in got),
            "bytes": sum(len(d.text.encode()) for d in got),
        }


def test_split_files_are_byte_identical_across_runs(tmp_path: Path) -> None:
    for run in ("a", "b"):
        write_splits(corpus(30), tmp_path / run / "train.jsonl.zst", tmp_path / run / "val.jsonl.zst", 5, 0.2)
    for name in ("train.jsonl.zst", "val.jsonl.zst"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_write_splits_writes_the_same_bytes_as_write_split_file(tmp_path: Path) -> None:
    docs = corpus(40)
    write_splits(docs, tmp_path / "train.jsonl.zst", tmp_path / "val.jsonl.zst", 0, 0.25)
    train, val = split_documents(docs, 0, 0.25)
    write_split_file(tmp_path / "train2.jsonl.zst", train)
    write_split_file(tmp_path / "val2.jsonl.zst", val)
    for split in ("train", "val"):
        assert (tmp_path / f"{split}.jsonl.zst").read_bytes() == (
            tmp_path / f"{split}2.jsonl.zst"
        ).read_bytes()


def test_a_failure_midway_leaves_no_split_file(tmp_path: Path) -> None:
    def failing() -> Iterator[Document]:
        yield from corpus(10)
        raise DataError("corrupt archive")

    with pytest.raises(DataError, match="corrupt archive"):
        write_splits(failing(), tmp_path / "train.jsonl.zst", tmp_path / "val.jsonl.zst", 0, 0.5)
    assert list(tmp_path.iterdir()) == []
