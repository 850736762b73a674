"""Specification of data.where (gptcore.params.parse_where, gptcore.data.where): conditions on
record metadata, the same on JSON fields and Parquet columns, counted per condition in
reports/data.json, and refused by name when malformed."""

from __future__ import annotations

import copy
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from gptcore.data.documents import DocumentStats, iter_documents
from gptcore.data.split import Document, iter_split_file
from gptcore.errors import DataError
from gptcore.params import Filter, ParamsError, load_section, parse_where

REPO = Path(__file__).resolve().parents[1]
RAW: dict[str, Any] = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def data_params(tmp_path: Path, **changes: Any) -> Path:
    raw = copy.deepcopy(RAW)
    raw["data"].update(changes)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def refused(tmp_path: Path, **changes: Any) -> str:
    with pytest.raises(ParamsError) as info:
        load_section("data", data_params(tmp_path, **changes))
    return str(info.value)


def read(root: Path, where: dict, **kwargs: Any) -> tuple[list[Document], DocumentStats]:
    stats = DocumentStats()
    docs = list(iter_documents(root, ["**"], stats, where=parse_where("data.where", where), **kwargs))
    return docs, stats


# -- params


def test_where_values_are_equality_an_operator_or_a_list() -> None:
    where = {
        "language": "en",
        "int_score": ">=3",
        "score": "< 2.5",
        "dump": "!=CC-MAIN-2013",
        "x": ["a", "b"],
    }
    assert parse_where("data.where", where) == (
        Filter("language", "==", "en", "string"),
        Filter("int_score", ">=", 3, "number"),
        Filter("score", "<", 2.5, "number"),
        Filter("dump", "!=", "CC-MAIN-2013", "string"),
        Filter("x", "in", ("a", "b"), "string"),
    )
    assert parse_where("w", {"flag": True, "n": 2}) == (
        Filter("flag", "==", True, "boolean"),
        Filter("n", "==", 2, "number"),
    )
    assert [f.label for f in parse_where("w", {"int_score": ">=3", "lang": ["en", "de"], "ok": False})] == [
        "int_score >= 3",
        "lang in [en, de]",
        "ok == false",
    ]


def test_params_yaml_takes_where_and_text_field_and_pile_set_names_becomes_a_condition(
    tmp_path: Path,
) -> None:
    path = data_params(
        tmp_path,
        where={"int_score": ">=3", "language": "en"},
        text_field="content",
        pile_set_names=["Pile-CC"],
    )
    params = load_section("data", path)
    assert params.text_field == "content"
    assert [f.label for f in params.filters()] == [
        "int_score >= 3",
        "language == en",
        "meta.pile_set_name in [Pile-CC]",
    ]
    assert load_section("data", REPO / "params.yaml").filters() == ()


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ({"int_score": ">=high"}, "data.where.int_score = '>=high' is invalid: >= compares with a number"),
        ({"int_score": "<"}, "data.where.int_score = '<' is invalid"),
        ({"x": []}, "data.where.x = [] is invalid: an empty list matches nothing"),
        ({"x": ["en", 3]}, "data.where.x = ['en', 3] is invalid: list values of one kind"),
        ({"x": ">=nan"}, "data.where.x = '>=nan' is invalid"),
        ({"x": {"nested": 1}}, "data.where = "),
        ({"x": None}, "data.where = "),
        ({" x": 1}, "data.where = "),
        ("int_score>=3", "data.where = 'int_score>=3' is invalid: must be a mapping"),
    ],
)
def test_a_malformed_where_is_refused_naming_the_key(tmp_path: Path, where: Any, said: str) -> None:
    assert said in refused(tmp_path, where=where)


@pytest.mark.parametrize("text_field", ["", " text", 3])
def test_text_field_must_name_a_field(tmp_path: Path, text_field: Any) -> None:
    assert "data.text_field" in refused(tmp_path, text_field=text_field)


def test_yaml_no_is_a_boolean_and_is_refused_on_a_string_field(tmp_path: Path) -> None:
    # YAML reads an unquoted `no` (Norwegian) as false: the error says what it compared with
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "hei", "language": "no"}) + "\n")
    where = yaml.safe_load("language: no")
    with pytest.raises(DataError, match=r'language == false: "language" holds a string, not a boolean'):
        read(tmp_path, where)


# -- JSON fields


FINEWEB_LINES = [
    {"text": f"doc {i}", "id": str(i), "int_score": i % 5, "language": ["en", "en", "fr", "en", "de"][i % 5]}
    for i in range(10)
]


def jsonl(*objects: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


def test_where_on_json_fields_keeps_lines_and_counts_the_first_condition_failed(tmp_path: Path) -> None:
    (tmp_path / "edu.jsonl").write_text(jsonl(*FINEWEB_LINES))
    docs, stats = read(tmp_path, {"int_score": ">=3", "language": "en"})
    assert docs == [Document("edu.jsonl:4", "doc 3"), Document("edu.jsonl:9", "doc 8")]
    assert stats.where == {"int_score >= 3": 6, "language == en": 2}
    assert stats.skipped["where"] == 8


def test_where_is_the_same_on_json_fields_and_parquet_columns(tmp_path: Path) -> None:
    lines = [
        {**o, "score": o["int_score"] + 0.5, "meta": {"source": "cc" if o["int_score"] else "wiki"}}
        for o in FINEWEB_LINES
    ]
    lines[6]["language"] = None  # a null fails, in both formats
    json_dir, parquet_dir = tmp_path / "json", tmp_path / "parquet"
    json_dir.mkdir()
    parquet_dir.mkdir()
    (json_dir / "x.jsonl.gz").write_bytes(gzip.compress(jsonl(*lines).encode()))
    pq.write_table(pa.Table.from_pylist(lines), parquet_dir / "x.parquet", row_group_size=4)
    where = {"language": ["en", "de"], "score": "<4", "meta.source": "!=wiki"}
    json_docs, json_stats = read(json_dir, where)
    parquet_docs, parquet_stats = read(parquet_dir, where)
    assert [d.text for d in json_docs] == [d.text for d in parquet_docs] == ["doc 1", "doc 3", "doc 8"]
    assert (
        json_stats.where
        == parquet_stats.where
        == {
            "language in [en, de]": 3,  # 2, 6 (null), 7
            "score < 4": 2,  # 4, 9
            "meta.source != wiki": 2,  # 0, 5
        }
    )


def test_a_field_a_json_line_lacks_names_the_fields_it_has(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text(
        jsonl({"text": "a", "int_score": 3}, {"text": "b", "meta": {"lang": "en"}})
    )
    with pytest.raises(
        DataError,
        match=r'x\.jsonl, line 2: data\.where names the field "int_score", which this object lacks \(its fields: text, meta\.lang\)',
    ):
        read(tmp_path, {"int_score": ">=3"})


def test_a_json_value_of_the_wrong_kind_names_the_line_and_the_field(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text(jsonl({"text": "a", "int_score": 3}, {"text": "b", "int_score": "3"}))
    with pytest.raises(
        DataError,
        match=r'x\.jsonl, line 2: data\.where int_score >= 3: "int_score" holds a string, not a number',
    ):
        read(tmp_path, {"int_score": ">=3"})


def test_where_leaves_plain_text_files_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("plain text has no fields\n")
    (tmp_path / "x.jsonl").write_text(jsonl(*FINEWEB_LINES[:3]))
    docs, stats = read(tmp_path, {"int_score": ">=2"})
    assert [d.name for d in docs] == ["notes.txt", "x.jsonl:3"]
    assert stats.where == {"int_score >= 2": 2}


def test_text_field_names_the_json_field_of_the_text_even_nested(tmp_path: Path) -> None:
    (tmp_path / "x.jsonl").write_text(
        jsonl({"content": "top", "text": "no"}, {"content": "two", "text": "no"})
    )
    (tmp_path / "y.jsonl").write_text(jsonl({"body": {"content": "deep"}}))
    docs, _ = read(tmp_path / "x.jsonl", {}, text_field="content")
    assert [d.text for d in docs] == ["top", "two"]
    docs, _ = read(tmp_path / "y.jsonl", {}, text_field="body.content")
    assert [d.text for d in docs] == ["deep"]
    with pytest.raises(DataError, match=r'x\.jsonl, line 1: expected an object with a "body" field'):
        read(tmp_path / "x.jsonl", {}, text_field="body")


def test_pile_set_names_and_where_apply_together(tmp_path: Path) -> None:
    lines = [
        {"text": "web short", "meta": {"pile_set_name": "Pile-CC"}, "n": 1},
        {"text": "web long", "meta": {"pile_set_name": "Pile-CC"}, "n": 9},
        {"text": "code", "meta": {"pile_set_name": "Github"}, "n": 9},
        {"text": "no meta", "n": 9},
    ]
    (tmp_path / "00.jsonl").write_text(jsonl(*lines))
    docs, stats = read(tmp_path, {"n": ">1"}, pile_set_names=["Pile-CC"])
    assert [d.text for d in docs] == ["web long"]
    assert stats.where == {"n > 1": 1, "meta.pile_set_name in [Pile-CC]": 2}


# -- the stage


@pytest.mark.slow
def test_extract_split_reports_the_counts_per_condition_and_fails_cleanly_on_an_unknown_column(
    tmp_path: Path,
) -> None:
    rows = [
        {"text": f"page {i}: " + "words " * 20, "int_score": i % 5, "language": "en" if i % 3 else "fr"}
        for i in range(60)
    ]
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), raw / "000_00000.parquet", row_group_size=16)
    data_params(tmp_path, include=["**/*.parquet"], where={"int_score": ">=3", "language": "en"})
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}

    def run() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "stages.extract_split"]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    done = run()
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "reports" / "data.json").read_text())
    kept = [r for r in rows if r["int_score"] >= 3 and r["language"] == "en"]
    assert report["train"]["documents"] + report["val"]["documents"] == len(kept) == 16
    assert report["where"] == {"int_score >= 3": 36, "language == en": 8}
    assert report["skipped"]["where"] == 44
    assert "36 records rejected by data.where: int_score >= 3" in done.stdout
    texts = {
        d.text
        for split in ("train", "val")
        for d in iter_split_file(tmp_path / "data/split" / f"{split}.jsonl.zst")
    }
    assert texts == {r["text"] for r in kept}

    data_params(tmp_path, include=["**/*.parquet"], where={"int_scor": ">=3"})
    failed = run()
    assert failed.returncode != 0
    assert (
        'data.where names the column "int_scor", which this file lacks (its columns: text, int_score, language)'
        in failed.stderr
    )
    assert "Traceback" not in failed.stderr
    assert sorted(p.name for p in (tmp_path / "data" / "split").iterdir()) == [
        "train.jsonl.zst",
        "val.jsonl.zst",
    ]
    assert {
        d.text
        for split in ("train", "val")
        for d in iter_split_file(tmp_path / "data/split" / f"{split}.jsonl.zst")
    } == texts
