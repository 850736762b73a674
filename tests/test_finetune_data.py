"""Fine-tuning data: labelled files, instruction records, splits, and the tasks derived from plays."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from gptcore.errors import DataError
from gptcore.finetune.data import (
    LabelledText,
    assign_plays,
    check_classes,
    dialogue_records,
    genre_passages,
    read_instructions,
    read_jsonl,
    read_labelled,
    split_of,
    write_labelled_splits,
)
from gptcore.params import ParamsError, parse_section

PLAY = """# A Play

## ACT I

### SCENE I. A room.

_Enter ANNE and BEN_

**ANNE**~~
Good morrow, Ben.~~
How fares the day?

**BEN**~~
Well, lady, well.

_Exit ANNE_

**CAROL**~~
Who was that?

### SCENE II. A field.

**BEN**~~
A new scene.
""".replace("~~", "  ")  # Markdown line breaks: two trailing spaces


def test_sms_spam_collection_format_reads_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "SMSSpamCollection"  # no extension, tab-separated, no header, raw quotes
    path.write_text(
        'ham\tGo until jurong point, "crazy".\nspam\tFree entry in 2 a wkly comp\n', encoding="utf-8"
    )
    examples = read_labelled(path, 1, 0, "auto")
    assert [(e.label, e.text) for e in examples] == [
        ("ham", 'Go until jurong point, "crazy".'),
        ("spam", "Free entry in 2 a wkly comp"),
    ]
    assert examples[1].where == f"{path}:2"


def test_csv_with_header_and_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_text('label,review\npos,"good, really"\nneg,bad\n', encoding="utf-8")
    examples = read_labelled(path, "review", "label", "auto")
    assert [(e.label, e.text) for e in examples] == [("pos", "good, really"), ("neg", "bad")]


def test_jsonl_with_numeric_labels(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "y": 1}\n\n{"text": "b", "y": 0}\n', encoding="utf-8")
    assert [(e.label, e.where) for e in read_labelled(path, "text", "y", "auto")] == [
        ("1", f"{path}:1"),
        ("0", f"{path}:3"),
    ]


@pytest.mark.parametrize(
    ("content", "columns", "message"),
    [
        (
            '{"text": "a", "label": "x"}\n{"text": "b"}\n',
            ("text", "label"),
            r"data.jsonl:2: missing field 'label'",
        ),
        ('{"text": "a", "label": " "}\n', ("text", "label"), r"data.jsonl:1: empty label in field 'label'"),
        ('{"text": "a", "label": "x"}\nnot json\n', ("text", "label"), r"data.jsonl:2: not valid JSON"),
        ('["a", "x"]\n', ("text", "label"), r"data.jsonl:1: expected a JSON object with field 'text'"),
    ],
)
def test_bad_labelled_jsonl_names_file_line_and_field(
    tmp_path: Path, content: str, columns: tuple[str, str], message: str
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_labelled(path, *columns, "auto")


def test_missing_column_in_a_headerless_tsv(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("ham\tfine\nspam\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d.tsv:2: no column 1 \(the row has 1"):
        read_labelled(path, 1, 0, "auto")


def test_missing_header_column_in_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("label,body\nx,y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"d.csv:2: missing field 'text' \(found: label, body\)"):
        read_labelled(path, "text", "label", "auto")


def test_non_utf8_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_bytes(b"ham\tfine\nspam\tcaf\xe9\n")
    with pytest.raises(DataError, match=r"d.tsv:2: bytes that are not UTF-8"):
        read_labelled(path, 1, 0, "auto")
    path = tmp_path / "i.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "\xff", "output": "b"}\n')
    with pytest.raises(DataError, match=r"i.jsonl:2: bytes that are not UTF-8"):
        read_instructions(path)


def test_instruction_records_from_a_json_array_and_json_lines(tmp_path: Path) -> None:
    records = [
        {"instruction": "Add.", "input": "1 and 2", "output": "3"},
        {"instruction": "Greet.", "output": "Hello"},  # no input, as in Alpaca
    ]
    array = tmp_path / "instruction-data.json"
    array.write_text(json.dumps(records, indent=2), encoding="utf-8")
    lines = tmp_path / "data.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    for path in (array, lines):
        got = read_instructions(path)
        assert [(r.instruction, r.input, r.output) for r in got] == [
            ("Add.", "1 and 2", "3"),
            ("Greet.", "", "Hello"),
        ]


def test_a_record_without_output_is_named(tmp_path: Path) -> None:
    path = tmp_path / "instruction-data.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"instruction-data.json:1: record 1: missing field 'output'"):
        read_instructions(path)
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'output' must be text, got int"):
        read_instructions(path)


def _examples(labels: str) -> list[LabelledText]:
    return [LabelledText(f"text {i}", label, f"f:{i + 1}") for i, label in enumerate(labels)]


def test_one_class_is_refused_naming_the_file() -> None:
    seen = {"train": {"a": "f:1"}, "val": {"a": "f:4"}, "test": {}}
    with pytest.raises(
        DataError, match=r"spam.tsv: a classifier needs at least two classes .* found \['a'\]"
    ):
        check_classes(seen, "spam.tsv")


def test_a_label_seen_only_in_test_is_refused_naming_its_line() -> None:
    seen = {"train": {"a": "f:1", "b": "f:2"}, "val": {}, "test": {"c": "spam.tsv:7"}}
    with pytest.raises(DataError, match=r"spam.tsv:7: label 'c' occurs only in the test split"):
        check_classes(seen, "spam.tsv")
    seen["test"] = {"a": "spam.tsv:7"}
    assert check_classes(seen, "spam.tsv") == ["a", "b"]


def test_a_label_seen_only_in_test_stops_the_writer_at_its_first_example(tmp_path: Path) -> None:
    examples = [("train", ex) for ex in _examples("abab")]
    examples += [
        ("test", LabelledText("t", "c", "spam.tsv:7")),
        ("test", LabelledText("u", "c", "spam.tsv:9")),
    ]
    with pytest.raises(DataError, match=r"^spam.tsv:7: label 'c' occurs only in the test split"):
        write_labelled_splits(tmp_path, examples, 0, True, "spam.tsv")


def test_split_of_is_deterministic_disjoint_and_keeps_duplicates_together() -> None:
    texts = [f"message {i % 150}" for i in range(300)]  # every text twice
    first = [split_of(text, 7, 0.1, 0.2) for text in texts]
    assert first == [split_of(text, 7, 0.1, 0.2) for text in texts]
    assert first[:150] == first[150:]
    assert 30 <= first.count("test") <= 90  # about 20% of 300
    assert 10 <= first.count("val") <= 60
    assert first != [split_of(text, 8, 0.1, 0.2) for text in texts]  # the seed matters


def test_balance_undersamples_every_class_to_the_rarest_in_original_order(tmp_path: Path) -> None:
    examples = _examples("aaaaaaabbc" * 3)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    labels, per_label = write_labelled_splits(
        tmp_path / "one", [("train", ex) for ex in examples], 0, True, "f"
    )
    assert labels == ["a", "b", "c"]
    assert per_label == {"train": {"a": 3, "b": 3, "c": 3}, "val": {}, "test": {}}
    kept = read_jsonl(tmp_path / "one" / "train.jsonl")
    assert sorted(row["label"] for row in kept) == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    texts = [ex.text for ex in examples]
    assert [row["text"] for row in kept] == [t for t in texts if t in {row["text"] for row in kept}]
    write_labelled_splits(tmp_path / "two", [("train", ex) for ex in examples], 0, True, "f")
    assert (tmp_path / "two" / "train.jsonl").read_bytes() == (tmp_path / "one" / "train.jsonl").read_bytes()
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["test.jsonl", "train.jsonl", "val.jsonl"]


def test_balance_keeps_per_class_the_examples_of_smallest_hash_of_where_and_text(tmp_path: Path) -> None:
    examples = _examples("aaaaaaabbc" * 30)
    training = [("train", ex) for ex in _examples("abc")]
    write_labelled_splits(tmp_path, training + [("val", ex) for ex in examples], 5, True, "f")
    size = 30  # the rarest class, c

    def unit(ex: LabelledText) -> float:  # the documented rule, which the committed outputs rest on
        digest = hashlib.sha256(f"5\0{ex.where}{ex.text}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    chosen = {
        id(ex) for label in "abc" for ex in sorted((e for e in examples if e.label == label), key=unit)[:size]
    }
    expected = [{"text": ex.text, "label": ex.label} for ex in examples if id(ex) in chosen]
    assert read_jsonl(tmp_path / "val.jsonl") == expected


def test_plays_split_one_test_and_one_val_per_genre_preferring_unseen_plays() -> None:
    plays = {f"p/comedies/c{i}.md": i != 3 for i in range(5)}  # c3 held out of pretraining
    plays |= {"p/roman/r0.md": True, "p/roman/r1.md": True, "p/solo/s0.md": True}
    assignment = assign_plays(plays, 1)
    assert assignment["p/comedies/c3.md"] == "test"
    assert sorted(assignment[f"p/comedies/c{i}.md"] for i in range(5)) == [
        "test",
        "train",
        "train",
        "train",
        "val",
    ]
    assert sorted(assignment[n] for n in ("p/roman/r0.md", "p/roman/r1.md")) == ["test", "train"]
    assert assignment["p/solo/s0.md"] == "train"
    assert assignment == assign_plays(dict(reversed(plays.items())), 1)


def test_genre_passages_are_whole_lines_without_headings() -> None:
    passages = genre_passages(PLAY, 30, 10)
    assert passages and all(not p.startswith("#") and "SCENE" not in p for p in passages)
    assert passages[0].startswith("_Enter ANNE and BEN_")
    assert all(p.rstrip() == p and "  \n" not in p for p in passages)
    assert len(genre_passages(PLAY * 20, 30, 4)) == 4


def test_dialogue_records_answer_a_speech_within_a_scene() -> None:
    records = dialogue_records(PLAY, 200, 10)
    assert [(r.instruction, r.input, r.output) for r in records] == [
        ("Reply as BEN to ANNE.", "Good morrow, Ben.\nHow fares the day?", "Well, lady, well."),
        ("Reply as CAROL to BEN.", "Well, lady, well.", "Who was that?"),
    ]  # no reply across the scene break, stage directions left out
    assert dialogue_records(PLAY, 17, 10) == [records[1]]  # the long speech is over max_chars


REPO_PARAMS = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8")
)


@pytest.mark.parametrize(
    ("section", "changes", "message"),
    [
        (
            "classify",
            {"train_blocks": "some"},
            r"classify.train_blocks = 'some' is invalid: allowed: all, or a number",
        ),
        ("classify", {"train_blocks": -1}, r"classify.train_blocks = -1 is invalid: must be >= 0"),
        ("classify", {"init": "gpt2"}, r"classify.init = 'gpt2' is invalid: allowed: pretrained, random"),
        (
            "classify_data",
            {"val_fraction": 0.5, "test_fraction": 0.5},
            r"classify_data.test_fraction = 0.5 .* must be < 1",
        ),
        (
            "classify_data",
            {"text_column": 1},
            r"classify_data.label_column = 'label' .* a name when text_column is a name",
        ),
        (
            "classify_data",
            {"format": "xlsx"},
            r"classify_data.format = 'xlsx' is invalid: allowed: auto, csv, tsv, jsonl",
        ),
        (
            "instruct",
            {"template": "chatml"},
            r"instruct.template = 'chatml' is invalid: allowed: alpaca, phi3",
        ),
        ("instruct", {"overlong": "wrap"}, r"instruct.overlong = 'wrap' is invalid: allowed: truncate, drop"),
        ("instruct_data", {"max_chars": 0}, r"instruct_data.max_chars = 0 is invalid: must be > 0"),
    ],
)
def test_bad_finetuning_params_are_named(section: str, changes: dict, message: str) -> None:
    parse_section(section, REPO_PARAMS[section])  # the repository's own values are valid
    with pytest.raises(ParamsError, match=message):
        parse_section(section, {**REPO_PARAMS[section], **changes})
