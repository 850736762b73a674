"""Fine-tuning data: labelled texts and instruction records, read from users' files or derived
from the pretraining corpus, and split deterministically into train, val and test.

- `read_labelled`: CSV, TSV or JSON Lines with a text and a label column (by name, or by index
  for a file without a header: the UCI SMS Spam Collection is `ham<TAB>text`, columns 0 and 1).
- `read_instructions`: Alpaca-style records (`instruction`, optional `input`, `output`) in one
  JSON array (Alpaca's and the book's `instruction-data.json`) or JSON Lines.
- `genre_passages` / `dialogue_records`: the default tasks, from the plays of data/split: the
  genre of a passage (its folder: comedies, histories, ...) and a character's reply to a speech.
  Plays, not passages, are split (`assign_plays`), so no passage of a test play is ever trained on.

Every bad input stops with a `DataError` naming the file, the line (or record) and the field.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gptcore.errors import DataError
from gptcore.split import iter_split_file

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str
    where: str  # "file:line", for errors about this example


@dataclass(frozen=True)
class InstructionRecord:
    instruction: str
    input: str
    output: str
    where: str = ""

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if k != "where"}


def _decode(path: Path) -> str:
    data = path.read_bytes() if path.is_file() else None
    if data is None:
        raise DataError(f"{path} not found")
    try:
        return data.decode("utf-8-sig")  # a BOM, as spreadsheet exports write, is not text
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: bytes that are not UTF-8 at byte {exc.start} ({data[exc.start : exc.start + 4]!r}); "
            "re-encode the file as UTF-8"
        ) from None


def file_format(path: Path, fmt: str) -> str:
    """csv, tsv or jsonl: `fmt` itself, or for `auto` from the extension (none, .txt, .tsv: tsv)."""
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    return {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}.get(suffix, "tsv")


def read_labelled(
    path: Path | str, text_column: str | int, label_column: str | int, fmt: str
) -> list[LabelledText]:
    """The (text, label) examples of a labelled file. Integer columns mean a file without a
    header row (columns counted from 0); names mean a header row (CSV, TSV) or JSON keys."""
    path = Path(path)
    kind = file_format(path, fmt)
    content = _decode(path)
    if kind == "jsonl":
        rows = _jsonl_rows(path, content)
    else:
        rows = _table_rows(path, content, "," if kind == "csv" else "\t", isinstance(text_column, str))
    examples = []
    for line, row in rows:
        where = f"{path}:{line}"
        text, label = _field(row, text_column, where), _field(row, label_column, where)
        if not label.strip():
            raise DataError(f"{where}: empty label in field {label_column!r}")
        if not text.strip():
            raise DataError(f"{where}: empty text in field {text_column!r}")
        examples.append(LabelledText(text, label.strip(), where))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def _jsonl_rows(path: Path, content: str) -> Iterable[tuple[int, Any]]:
    for line, raw in enumerate(content.splitlines(), start=1):
        if raw.strip():
            try:
                yield line, json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line}: not valid JSON: {exc.msg}") from None


def _table_rows(path: Path, content: str, delimiter: str, header: bool) -> Iterable[tuple[int, Any]]:
    # TSV as the SMS collection writes it: no quoting, a quote is a character like any other
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter, quoting=quoting)
    names: list[str] | None = None
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if header and names is None:
                names = [cell.strip() for cell in row]
                continue
            yield reader.line_num, dict(zip(names, row, strict=False)) if names is not None else row
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: {exc}") from None


def _field(row: Any, column: str | int, where: str) -> str:
    if isinstance(column, int):
        if not isinstance(row, list) or column >= len(row):
            have = len(row) if isinstance(row, list) else "a JSON object"
            raise DataError(f"{where}: no column {column} (the row has {have}; columns count from 0)")
        return row[column]
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with field {column!r}, got {type(row).__name__}")
    if column not in row:
        raise DataError(f"{where}: missing field {column!r} (found: {', '.join(map(str, row)) or 'none'})")
    value = row[column]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # numeric labels (0/1) are labels like any other
    if not isinstance(value, str):
        raise DataError(f"{where}: field {column!r} must be text, got {type(value).__name__}")
    return value


def read_instructions(path: Path | str) -> list[InstructionRecord]:
    """Alpaca-style records from a JSON array or JSON Lines; `input` may be missing or empty."""
    path = Path(path)
    content = _decode(path)
    if content.lstrip().startswith("["):
        try:
            items = json.loads(content)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        rows: Iterable[tuple[str, Any]] = ((f"{path}: record {i}", item) for i, item in enumerate(items))
    else:
        rows = ((f"{path}:{line}", item) for line, item in _jsonl_rows(path, content))
    records = []
    for where, item in rows:
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
        values = {}
        for key in ("instruction", "input", "output"):
            value = item.get(key, "" if key == "input" else None)
            if value is None:
                raise DataError(f"{where}: missing field {key!r}")
            if not isinstance(value, str):
                raise DataError(f"{where}: field {key!r} must be text, got {type(value).__name__}")
            values[key] = value
        if not values["instruction"].strip():
            raise DataError(f"{where}: empty field 'instruction'")
        if not values["output"].strip():
            raise DataError(f"{where}: empty field 'output'")
        records.append(InstructionRecord(**values, where=where))
    if not records:
        raise DataError(f"{path}: no records")
    return records


# ---------------------------------------------------------------------------------------------
# splits


def _unit(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by key and seed: the same on every machine and Python."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(key: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """train, val or test for an example, by a hash of its key (its text): duplicates of a text
    land in the same split, so no test text is also a training text."""
    u = _unit(key, seed)
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def split_by_hash(
    items: Sequence[Any], keys: Sequence[str], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, list[Any]]:
    splits: dict[str, list[Any]] = {name: [] for name in SPLITS}
    for item, key in zip(items, keys, strict=True):
        splits[split_of(key, seed, val_fraction, test_fraction)].append(item)
    return splits


def balance(examples: Sequence[LabelledText], seed: int) -> list[LabelledText]:
    """Undersample every class to the size of the rarest, keeping a hash-chosen subset in the
    original order (what the book does to SMS spam's 747 spam and 4,825 ham)."""
    by_label: dict[str, list[LabelledText]] = defaultdict(list)
    for ex in examples:
        by_label[ex.label].append(ex)
    size = min(len(v) for v in by_label.values())
    keep = set()
    for items in by_label.values():
        ranked = sorted(items, key=lambda ex: _unit(ex.where + ex.text, seed))
        keep |= {id(ex) for ex in ranked[:size]}
    return [ex for ex in examples if id(ex) in keep]


def check_classes(splits: dict[str, list[LabelledText]], source: str) -> list[str]:
    """The class labels (sorted) after checking that training has at least two of them and that
    no val or test example carries a label training never shows."""
    labels = sorted({ex.label for ex in splits["train"]})
    if len(labels) < 2:
        found = sorted({ex.label for split in splits.values() for ex in split})
        raise DataError(
            f"{source}: a classifier needs at least two classes in its training split, found {found}"
        )
    for name in ("val", "test"):
        for ex in splits[name]:
            if ex.label not in labels:
                raise DataError(
                    f"{ex.where}: label {ex.label!r} occurs only in the {name} split, never in train "
                    f"(train labels: {', '.join(labels)}); add training examples of it or drop them"
                )
    return labels


# ---------------------------------------------------------------------------------------------
# the default tasks, from the plays


def read_plays(folder: Path | str) -> dict[str, tuple[str, bool]]:
    """The documents of a data/split folder: name -> (text, whether pretraining trained on it)."""
    folder = Path(folder)
    plays = {}
    for pretraining_split in ("train", "val"):
        path = folder / f"{pretraining_split}.jsonl.zst"
        if not path.is_file():
            raise DataError(
                f"{path} not found: {folder} is not a data/split folder (run dvc repro extract_split)"
            )
        for doc in iter_split_file(path):
            plays[doc.name] = (doc.text, pretraining_split == "train")
    return plays


def play_listing(
    plays: dict[str, tuple[str, bool]], assignment: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """For a report: the plays of each split and whether pretraining trained on them."""
    return {
        split: [
            {"play": name, "seen_by_pretraining": plays[name][1]}
            for name in sorted(plays)
            if assignment[name] == split
        ]
        for split in SPLITS
    }


def play_group(name: str) -> str:
    """A document's folder name: the genre of a play (`.../plays/comedies/x.md` -> comedies)."""
    parts = PurePosixPath(name).parts
    return parts[-2] if len(parts) >= 2 else ""


def assign_plays(plays: dict[str, bool], seed: int) -> dict[str, str]:
    """Split plays (name -> seen by pretraining) into train, val and test, per genre: one test
    play and one val play from each genre of three or more (one test play from a genre of two),
    preferring plays pretraining held out for test, so that as many as can be were seen by no step."""
    by_group: dict[str, list[str]] = defaultdict(list)
    for name in sorted(plays):
        by_group[play_group(name)].append(name)
    assignment = {}
    for names in by_group.values():
        ranked = sorted(names, key=lambda n: (plays[n], _unit(n, seed)))
        held = ["test", "val"][: max(0, min(2, len(names) - 1))]
        for name, split in zip(ranked, held + ["train"] * len(names), strict=False):
            assignment[name] = split
    return assignment


_HEADING = re.compile(r"^#")
_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")


def _lines(text: str) -> list[str]:
    # Markdown line breaks ("two spaces at the end") are layout, not text
    return [line.rstrip() for line in text.splitlines()]


def genre_passages(text: str, chars: int, per_play: int) -> list[str]:
    """Up to `per_play` passages of whole lines, about `chars` characters each, spread evenly
    over the play (headings, which name the play and scene, left out)."""
    windows, current, size = [], [], 0
    for line in _lines(text):
        if _HEADING.match(line) or (not line and not current):
            continue
        current.append(line)
        size += len(line) + 1
        if size >= chars:
            windows.append("\n".join(current).strip())
            current, size = [], 0
    if len(windows) <= per_play:
        return windows
    step = len(windows) / per_play
    return [windows[int(i * step)] for i in range(per_play)]


def _speeches(text: str) -> Iterable[tuple[str, str] | None]:
    """(speaker, speech) in order; None where a scene ends (a heading), so no reply crosses it."""
    speaker, lines = None, []
    for line in _lines(text) + [""]:
        match = _SPEAKER.match(line)
        if match or _HEADING.match(line):
            if speaker and lines:
                yield speaker, "\n".join(lines).strip()
            speaker, lines = (match["name"].strip(), []) if match else (None, [])
            if not match:
                yield None
        elif speaker and line and not line.startswith("_"):  # stage directions are not speech
            lines.append(line)


def dialogue_records(text: str, max_chars: int, per_play: int) -> list[InstructionRecord]:
    """Each speech answered by another character's speech within a scene: the instruction names
    both characters, the input is the speech, the output is the reply; up to `per_play` of them,
    spread over the play, where both fit in `max_chars` characters."""
    records, previous = [], None
    for item in _speeches(text):
        if item is None:
            previous = None
            continue
        speaker, speech = item
        if previous is not None and previous[0] != speaker:
            to, said = previous
            if len(said) <= max_chars and len(speech) <= max_chars:
                instruction = f"Reply as {speaker} to {to}."
                records.append(InstructionRecord(instruction, said, speech))
        previous = item
    if len(records) <= per_play:
        return records
    step = len(records) / per_play
    return [records[int(i * step)] for i in range(per_play)]


def label_counts(examples: Iterable[LabelledText]) -> dict[str, int]:
    return dict(sorted(Counter(ex.label for ex in examples).items()))


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows as JSON Lines (to a path the caller renames into place); returns the count."""
    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """Rows a data stage wrote (see write_jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: run the fine-tuning data stage first")
    return [row for _, row in _jsonl_rows(path, _decode(path))]
