"""Fine-tuning data files built to break the readers: records too long to hold, ambiguous columns,
JSON nested too deeply, numbers that are no labels. Each is one line of error naming the file and
the line (record, columns), from the library and from the stage, which leaves no output behind."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from gptcore.errors import DataError
from gptcore.finetune import data as finetune_data
from gptcore.finetune.data import iter_instructions, iter_labelled, read_instructions, read_labelled

DEEP = "[" * 100_000 + "]" * 100_000


def labelled(path: Path, columns: tuple[str | int, str | int] = ("text", "label")) -> list[tuple[str, str]]:
    return [(ex.text, ex.label) for ex in read_labelled(path, *columns, "auto")]


# -- records too long to hold


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "one.json",
            '[\n  {"instruction": "Recite.", "output": "' + "a" * 5000 + '"}\n]\n',
            r"one.json:2: record 0 is longer than 1,024 bytes, the most one record may take$",
        ),
        (
            "one.jsonl",
            '{"instruction": "Hi.", "output": "hello"}\n{"instruction": "Recite.", "output": "'
            + "a" * 5000
            + '"}\n',
            r"one.jsonl:2: line longer than 1,024 bytes, the most one record may take$",
        ),
    ],
)
def test_an_instruction_record_longer_than_the_limit_is_refused_naming_file_and_record(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        list(iter_instructions(path, max_record_bytes=1024))
    assert len(list(iter_instructions(path, max_record_bytes=10_000))) == content.count("instruction")


def test_a_long_record_is_refused_before_the_rest_of_the_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"  # the array is never closed: only reading to the end would show it
    path.write_text('[{"instruction": "a", "output": "' + "b" * 100_000, encoding="utf-8")
    with pytest.raises(DataError, match=r"cut.json:1: record 0 is longer than"):
        list(iter_instructions(path, max_record_bytes=4096))
    with pytest.raises(DataError, match=r"cut.json:1: record 0: not valid JSON: Unterminated string"):
        list(iter_instructions(path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text,label\n" + "a" * 3000 + ",x\n", r"d.csv:2: line longer than 2,048 bytes"),
        # a quote never closed makes the rest of the file one field, however short its lines
        ('text,label\n"open,x\n' + "short line\n" * 1000, r"d.csv:2: record longer than 2,048 bytes.*quote"),
    ],
)
def test_a_csv_record_longer_than_the_limit_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        list(iter_labelled(path, "text", "label", "auto", max_record_bytes=2048))


def test_a_json_array_is_read_an_element_at_a_time_whatever_the_cuts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(0)
    pieces = ["plain", "é", "日本", "🙂", '"quoted"', "back\\slash", "\n", "\t", "\u2028"]
    records = [
        {
            "instruction": "Do " + "".join(rng.choices(pieces, k=rng.randint(1, 30))),
            "input": "".join(rng.choices(pieces, k=rng.randint(0, 5))),
            "output": "Done " + "".join(rng.choices(pieces, k=rng.randint(1, 60))),
            "meta": {"n": rng.randint(-(10**12), 10**12), "x": rng.random(), "ok": True, "none": None},
        }
        for _ in range(200)
    ]
    path = tmp_path / "alpaca.json"
    for ensure_ascii, indent in ((False, 2), (True, None)):
        path.write_text(json.dumps(records, ensure_ascii=ensure_ascii, indent=indent), encoding="utf-8")
        expected = [(r["instruction"], r["input"], r["output"]) for r in records]
        for read_bytes in (7, 1 << 16):  # cut inside strings, escapes, numbers and characters
            monkeypatch.setattr(finetune_data, "_READ_BYTES", read_bytes)
            got = read_instructions(path)
            assert [(r.instruction, r.input, r.output) for r in got] == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[{"instruction": "a", "output": "b"},\n]', r"x.json:2: record 1: not valid JSON: Expecting value"),
        (
            '[{"instruction": "a", "output": "b"}\n {"instruction": "c", "output": "d"}]',
            r"x.json:2: expected ',' or ']' after record 0, found '\{'",
        ),
        ('[{"instruction": "a", "output": "b"}]\n[]', r"x.json:2: more after the end of the JSON array"),
        ('[{"instruction": "a", "output": "b"},\n', r"x.json:2: the file ends inside the JSON array"),
        ('[\n"a"]', r"x.json:2: record 0: expected a JSON object, got str"),
        ('[{"instruction": "a",\n "output": NaN}]', r"x.json:1: record 0: NaN is not a number JSON allows"),
    ],
)
def test_a_broken_json_array_names_the_line_and_record(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_instructions(path)


def test_bytes_that_are_not_utf8_in_a_json_array_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b'[\n{"instruction": "a", "output": "b"},\n{"instruction": "caf\xe9", "output": "b"}]')
    with pytest.raises(DataError, match=r"x.json:3: bytes that are not UTF-8 at byte 59"):
        read_instructions(path)


# -- ambiguous columns


@pytest.mark.parametrize(
    ("header", "column", "at"),
    [
        ("text,label,label", "label", "1, 2"),
        ("text,text,label", "text", "0, 1"),
        ("label, text ,text", "text", "1, 2"),  # names are matched without their spaces
    ],
)
def test_a_header_naming_a_read_column_twice_is_refused(
    tmp_path: Path, header: str, column: str, at: str
) -> None:
    path = tmp_path / "d.csv"
    path.write_text(header + "\n" + "a,b,c\n" * 3, encoding="utf-8")
    with pytest.raises(
        DataError, match=rf"^{path}:1: the header names column '{column}' 2 times \(columns {at},"
    ):
        read_labelled(path, "text", "label", "auto")
    tsv = tmp_path / "d.tsv"
    tsv.write_text(header.replace(",", "\t") + "\n" + "a\tb\tc\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"d.tsv:1: the header names column '{column}' 2 times"):
        read_labelled(tsv, "text", "label", "auto")


def test_columns_nobody_reads_may_share_a_name_and_trailing_cells_may_be_empty(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("note,text,label,note\nx,good,pos,y\nx,bad,neg,y,,\n", encoding="utf-8")
    assert labelled(path) == [("good", "pos"), ("bad", "neg")]


def test_a_row_with_more_cells_than_the_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("label,text\npos,good\nneg,bad, really bad\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d.csv:3: 3 cells, but the header names 2 columns \(a comma in"):
        read_labelled(path, "text", "label", "auto")


@pytest.mark.parametrize(
    "line",
    ['{"text": "good", "label": "pos", "label": "neg"}', '{"text": "good", "text": "bad", "label": "pos"}'],
)
def test_a_json_object_with_a_read_key_twice_is_refused(tmp_path: Path, line: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine", "label": "pos"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(
        DataError, match=r"d.jsonl:2: field '(text|label)' occurs more than once in the object"
    ):
        read_labelled(path, "text", "label", "auto")
    path.write_text('{"text": "fine", "label": "pos", "meta": 1, "meta": 2}\n', encoding="utf-8")
    assert labelled(path) == [("fine", "pos")]  # a key nobody reads may repeat
    path = tmp_path / "i.jsonl"
    path.write_text('{"instruction": "a", "output": "b", "output": "c"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"i.jsonl:1: field 'output' occurs more than once in the object"):
        read_instructions(path)


def test_a_label_per_example_is_refused_past_the_most_classes_a_file_may_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(finetune_data, "MAX_CLASSES", 3)
    path = tmp_path / "d.tsv"
    path.write_text("".join(f"text {i}\tlabel {i}\n" for i in range(10)), encoding="utf-8")
    examples = (("train", ex) for ex in iter_labelled(path, 0, 1, "auto"))
    with pytest.raises(
        DataError, match=rf"^{path}:4: more than 3 distinct labels \(is label_column the label\?\)"
    ):
        finetune_data.write_labelled_splits(tmp_path, examples, 0, False, str(path))


# -- JSON nested too deeply


def test_json_nested_too_deeply_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"text": "a", "label": "x"}\n' + '{"text": "b", "label": ' + DEEP + "}\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"d.jsonl:2: JSON nested too deeply$"):
        read_labelled(path, "text", "label", "auto")
    path = tmp_path / "i.json"
    path.write_text('[{"instruction": "a", "output": "b"},\n' + DEEP + "]", encoding="utf-8")
    with pytest.raises(DataError, match=r"i.json:2: record 1: JSON nested too deeply$"):
        read_instructions(path)
    path = tmp_path / "i.jsonl"
    path.write_text('{"instruction": ' + DEEP + "}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"i.jsonl:1: JSON nested too deeply$"):
        read_instructions(path)


# -- numbers as labels


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("NaN", r"d.jsonl:2: NaN is not a number JSON allows"),
        ("-Infinity", r"d.jsonl:2: -Infinity is not a number JSON allows"),
        ("1e400", r"d.jsonl:2: field 'label' is the number inf, not an integer"),
        ("0.5", r"d.jsonl:2: field 'label' is the number 0.5, not an integer"),
        ("1.0", r"d.jsonl:2: field 'label' is the number 1.0, not an integer"),
        ("true", r"d.jsonl:2: field 'label' must be text, got bool"),
    ],
)
def test_a_label_that_is_no_integer_or_text_is_refused(tmp_path: Path, value: str, message: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(f'{{"text": "a", "label": 1}}\n{{"text": "b", "label": {value}}}\n', encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_labelled(path, "text", "label", "auto")


def test_integer_labels_and_label_strings_such_as_nan_are_classes(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "NaN"}\n', encoding="utf-8")
    assert labelled(path) == [("a", "1"), ("b", "NaN")]
    path.write_text('["c", -0]\n["d", 1.5]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d.jsonl:2: field 1 is the number 1.5, not an integer"):
        read_labelled(path, 0, 1, "jsonl")
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("text,label\na,nan\nb,1.0\nc,inf\n", encoding="utf-8")
    assert labelled(csv_path) == [("a", "nan"), ("b", "1.0"), ("c", "inf")]  # a cell is text


# -- the stages


def run_stage(tmp_path: Path, stage: str, source: Path, **params: object) -> subprocess.CompletedProcess[str]:
    """Run a fine-tuning data stage in a workspace of its own on `source`; it must fail cleanly."""
    config = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    config[stage].update(source=str(source), **params)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    out = ws / "data" / "finetune"
    assert not out.exists() or list(out.iterdir()) == [], "no output, whole or half-written"
    assert not (ws / "reports").exists()
    return proc


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("dup.csv", "text,label,label\na,x,y\nb,y,x\n", "dup.csv:1: the header names column 'label' 2 times"),
        ("same.csv", "text,text,label\na,b,x\nc,d,y\n", "same.csv:1: the header names column 'text' 2 times"),
        ("deep.jsonl", '{"text": "a", "label": ' + DEEP + "}\n", "deep.jsonl:1: JSON nested too deeply"),
        ("nan.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": NaN}\n', "nan.jsonl:2: NaN is not"),
        (
            "twice.jsonl",
            '{"text": "a", "label": 1, "label": 2}\n',
            "twice.jsonl:1: field 'label' occurs more",
        ),
    ],
)
def test_classify_data_stops_with_one_line_and_writes_nothing(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    source = tmp_path / name
    source.write_text(content, encoding="utf-8")
    proc = run_stage(tmp_path, "classify_data", source)
    assert proc.stderr.startswith(f"error: {tmp_path / message}"), proc.stderr


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "deep.json",
            '[{"instruction": "a", "output": "b"},\n' + DEEP + "]",
            "deep.json:2: record 1: JSON nested",
        ),
        ("deep.jsonl", '{"output": ' + DEEP + "}\n", "deep.jsonl:1: JSON nested too deeply"),
        # one record over the limit (16 MiB): refused once that much is read, never held whole
        (
            "huge.json",
            '[\n{"instruction": "Recite.", "output": "' + "a" * (17 << 20) + '"}]',
            "huge.json:2: record 0 is longer than 16 MiB",
        ),
    ],
)
def test_instruct_data_stops_with_one_line_and_writes_nothing(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    source = tmp_path / name
    source.write_text(content, encoding="utf-8")
    proc = run_stage(tmp_path, "instruct_data", source)
    assert proc.stderr.startswith(f"error: {tmp_path / message}"), proc.stderr
