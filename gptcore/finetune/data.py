"""Fine-tuning data: labelled texts and instruction records, read from users' files or derived
from the pretraining corpus, and split deterministically into train, val and test.

- `iter_labelled`: CSV, TSV or JSON Lines with a text and a label column (by name, or by index
  for a file without a header: the UCI SMS Spam Collection is `ham<TAB>text`, columns 0 and 1).
- `iter_instructions`: Alpaca-style records (`instruction`, optional `input`, `output`) in one
  JSON array (Alpaca's and the book's `instruction-data.json`) or JSON Lines.
- `write_labelled_splits` / `write_instruction_splits`: `(split, example)` pairs written to
  train/val/test.jsonl as they come; classes are balanced by a second pass over what was written.
- `genre_passages` / `dialogue_records`: the default tasks, from the plays of data/split: the
  genre of a passage (its folder: comedies, histories, ...) and a character's reply to a speech.
  Plays, not passages, are split (`assign_plays`), so no passage of a test play is ever trained on.

Files are streams, as the pretraining corpus is: read a line at a time, a JSON array an element
at a time, and written out as they are read, so memory does not grow with the file. A record
(a line, a CSV row, an array element) longer than MAX_RECORD_BYTES is refused, naming the file
and the record, once that much of it has been read. Refused besides what does not parse:

- a header naming the text or the label column twice (names are compared without the spaces
  around them, as they are matched), and a row with more non-empty cells than the header has
  names (a delimiter in an unquoted text): either way a column would be read from the wrong cell;
- a JSON object holding a key that is read twice (a parser keeps one of the two silently);
- JSON nested too deeply, `NaN` and `Infinity` (not JSON);
- a text or label that is a JSON number other than an integer (`0.5`, `1.0`, `1e400`): a label
  names a class, an integer label is read as written (`1` is the class "1"), but `1.0` beside
  `1` would be a second class and a fraction is a score, not a class; a label that is meant as a
  name is written as a string (`"0.5"`). A CSV or TSV cell is text whatever it holds (`nan` too).

Every bad input stops with a `DataError` naming the file, the line (or record) and the field.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import itertools
import json
import os
import re
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

import numpy as np

from gptcore.data.split import iter_split_file
from gptcore.errors import DataError, parse_json, refuse_constant

SPLITS = ("train", "val", "test")
# The most one record may take in its file: far more than any model's context holds, and what
# bounds a reader's memory (a record is parsed whole).
MAX_RECORD_BYTES = 1 << 24
# Distinct labels one labelled file may hold: a classifier's head needs a row per class, and a
# label per example (a text column given as label_column) would otherwise fill memory.
MAX_CLASSES = 100_000
INSTRUCTION_KEYS = ("instruction", "input", "output")
_READ_BYTES = 1 << 16
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_AFTER_LONE_CR = re.compile(r"(?<=\r)(?!\n)")  # csv ends a line at LF, CRLF and a lone CR
# A parse error this close to the end of the part of a file read so far may be the cut, not the JSON.
_CUT_MARGIN = 16


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

    @property
    def key(self) -> str:
        """What a record's split is drawn by: all of its text, so that duplicates share a split."""
        return f"{self.instruction}\0{self.input}\0{self.output}"


def _size(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n:,} bytes"


def file_format(path: Path, fmt: str) -> str:
    """csv, tsv or jsonl: `fmt` itself, or for `auto` from the extension (none, .txt, .tsv: tsv)."""
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    return {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}.get(suffix, "tsv")


# ---------------------------------------------------------------------------------------------
# reading


def _file_lines(path: Path, limit: int | None) -> Iterator[tuple[int, str]]:
    """(line number, line with its end) of a UTF-8 file split at LF, a leading BOM dropped (as
    spreadsheet exports write it: it is not text); a line longer than `limit` bytes is an error."""
    if not path.is_file():
        raise DataError(f"{path} not found")
    with open(path, "rb") as fh:
        offset = 0
        for number in itertools.count(1):
            raw = fh.readline() if limit is None else fh.readline(limit + 1)
            if not raw:
                return
            if limit is not None and len(raw) > limit:
                raise DataError(
                    f"{path}:{number}: line longer than {_size(limit)}, the most one record may take"
                )
            start = len(codecs.BOM_UTF8) if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
            try:
                text = raw[start:].decode("utf-8")
            except UnicodeDecodeError as exc:
                at = start + exc.start
                raise DataError(
                    f"{path}:{number}: bytes that are not UTF-8 at byte {offset + at} ({raw[at : at + 4]!r}); "
                    "re-encode the file as UTF-8"
                ) from None
            offset += len(raw)
            yield number, text


class _KeysTwice(dict):
    """A JSON object in which some keys occur more than once (the last value kept, as json does)."""

    twice: frozenset[str] = frozenset()


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    flagged = _KeysTwice(obj)
    flagged.twice = frozenset(key for key, n in Counter(key for key, _ in pairs).items() if n > 1)
    return flagged


# errors.parse_json's rules (NaN and Infinity refused, nesting too deep caught by the callers),
# plus what it cannot give: objects with a key twice marked, and `raw_decode`, with which a JSON
# array is parsed an element at a time.
_DECODER = json.JSONDecoder(parse_constant=refuse_constant, object_pairs_hook=_json_object)


def _parse_line(text: str, where: str) -> Any:
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # NaN or Infinity; an integer of more digits than Python reads
        raise DataError(f"{where}: {exc}") from None


def _starts_with_bracket(path: Path) -> bool:
    """Whether the first character of a file, past a BOM and JSON whitespace, is `[`."""
    if not path.is_file():
        raise DataError(f"{path} not found")
    with open(path, "rb") as fh:
        head = fh.read(len(codecs.BOM_UTF8))
        if head != codecs.BOM_UTF8:
            fh.seek(0)
        while chunk := fh.read(_READ_BYTES):
            if rest := chunk.lstrip(b" \t\n\r"):
                return rest.startswith(b"[")
    return False


class _JsonArray:
    """The elements of a file's JSON array, parsed one at a time (`raw_decode`) in a window of
    the file that holds the element being parsed and what follows it in the last read. A parse
    that may have failed only because the window ends reads more, as much again each time, so a
    long record costs a few parses of it; past `limit` characters it is refused."""

    def __init__(self, path: Path, fh: BinaryIO, limit: int) -> None:
        self.path, self.fh, self.limit = path, fh, limit
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.column = 1, 1  # of buf[pos]
        self.offset = 0  # bytes read from the file

    def _move(self, to: int) -> None:
        newlines = self.buf.count("\n", self.pos, to)
        if newlines:
            self.line += newlines
            self.column = to - self.buf.rfind("\n", self.pos, to)
        else:
            self.column += to - self.pos
        self.pos = to

    def _at(self, index: int) -> tuple[int, int]:
        """Line and column of buf[index], index >= pos."""
        newlines = self.buf.count("\n", self.pos, index)
        if not newlines:
            return self.line, self.column + index - self.pos
        return self.line + newlines, index - self.buf.rfind("\n", self.pos, index)

    def _read(self, size: int) -> None:
        """Drop what has been parsed and append up to `size` more bytes of the file."""
        self.buf, self.pos = self.buf[self.pos :], 0
        raw = self.fh.read(size)
        held = len(self.decoder.getstate()[0])  # bytes of a character cut by the last read
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as exc:
            bad = max(exc.start - held, 0)
            line = self.line + self.buf.count("\n") + raw[:bad].count(b"\n")
            raise DataError(
                f"{self.path}:{line}: bytes that are not UTF-8 at byte {self.offset + bad} "
                f"({raw[bad : bad + 4]!r}); re-encode the file as UTF-8"
            ) from None
        self.buf += text
        self.offset += len(raw)
        self.eof = not raw

    def _skip_space(self) -> bool:
        """Move past JSON whitespace; False at the end of the file."""
        while True:
            self._move(_JSON_SPACE.match(self.buf, self.pos).end())  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return True
            if self.eof:
                return False
            self._read(_READ_BYTES)

    def _element(self, index: int) -> tuple[Any, int]:
        """The element at `pos` and the index just past it."""
        where = f"{self.path}:{self.line}: record {index}"
        while True:
            try:
                item, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                cut = exc.pos >= len(self.buf) - _CUT_MARGIN or exc.msg.startswith("Unterminated string")
                if self.eof or not cut:
                    line, column = self._at(exc.pos)
                    raise DataError(
                        f"{self.path}:{line}: record {index}: not valid JSON: {exc.msg} at column {column}"
                    ) from None
            except RecursionError:
                raise DataError(f"{where}: JSON nested too deeply") from None
            except ValueError as exc:  # NaN or Infinity; an integer of more digits than Python reads
                raise DataError(f"{where}: {exc}") from None
            else:
                # a number may go on past the window; anything else ends with its last character
                if end < len(self.buf) or self.eof:
                    if end - self.pos > self.limit:
                        break
                    return item, end
            pending = len(self.buf) - self.pos
            if pending > self.limit:
                break
            self._read(max(_READ_BYTES, pending))
        raise DataError(f"{where} is longer than {_size(self.limit)}, the most one record may take")

    def _unclosed(self) -> str:
        return f"{self.path}:{self.line}: the file ends inside the JSON array (no closing ']')"

    def records(self) -> Iterator[tuple[str, Any]]:
        """(where, element) in order; where is `file:line: record N` (N from 0)."""
        if not self._skip_space() or self.buf[self.pos] != "[":
            raise DataError(f"{self.path}:{self.line}: expected a JSON array")
        self._move(self.pos + 1)
        for index in itertools.count():
            if not self._skip_space():
                raise DataError(self._unclosed())
            if index == 0 and self.buf[self.pos] == "]":
                self._move(self.pos + 1)
                break
            where = f"{self.path}:{self.line}: record {index}"
            item, end = self._element(index)
            self._move(end)
            yield where, item
            if not self._skip_space():
                raise DataError(self._unclosed())
            char = self.buf[self.pos]
            if char not in ",]":
                raise DataError(
                    f"{self.path}:{self.line}: expected ',' or ']' after record {index}, found {char!r}"
                )
            self._move(self.pos + 1)
            if char == "]":
                break
        if self._skip_space():
            raise DataError(f"{self.path}:{self.line}: more after the end of the JSON array")


def _json_lines(path: Path, limit: int) -> Iterator[tuple[str, Any]]:
    """(`file:line`, value) of each non-blank line of a JSON Lines file."""
    for number, text in _file_lines(path, limit):
        if text.strip():
            where = f"{path}:{number}"
            yield where, _parse_line(text, where)


class _RecordLines:
    """The lines of a CSV or TSV file as csv.reader takes them (split at LF, CRLF and a lone CR),
    counting the characters of the record being read: a quoted field may hold many lines, and an
    unclosed quote all the rest of the file."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path, self.limit = path, limit
        self.pieces = (p for _, text in _file_lines(path, limit) for p in _AFTER_LONE_CR.split(text) if p)
        self.pending, self.start = 0, 1  # characters of the record being read, and its first line

    def __iter__(self) -> _RecordLines:
        return self

    def __next__(self) -> str:
        piece = next(self.pieces)
        self.pending += len(piece)
        if self.pending > self.limit:
            raise DataError(
                f"{self.path}:{self.start}: record longer than {_size(self.limit)}, the most one record "
                "may take (a quote that is never closed?)"
            )
        return piece

    def record_done(self, line_num: int) -> None:
        self.pending, self.start = 0, line_num + 1


def _table_rows(
    path: Path, delimiter: str, columns: tuple[str | int, ...], limit: int
) -> Iterator[tuple[str, Any]]:
    # TSV as the SMS collection writes it: no quoting, a quote is a character like any other
    quoting: Literal[0, 3] = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    lines = _RecordLines(path, limit)
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting)
    header = all(isinstance(column, str) for column in columns)
    names: list[str] | None = None
    try:
        for row in reader:
            lines.record_done(reader.line_num)
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path}:{reader.line_num}"
            if header and names is None:
                names = [cell.strip() for cell in row]
                _check_header(names, columns, where)
                continue
            if names is not None and any(cell.strip() for cell in row[len(names) :]):
                raise DataError(
                    f"{where}: {len(row)} cells, but the header names {len(names)} columns "
                    f"(a {'comma' if delimiter == ',' else 'tab'} in an unquoted text?)"
                )
            yield where, dict(zip(names, row, strict=False)) if names is not None else row
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: {exc}") from None


def _check_header(names: list[str], columns: tuple[str | int, ...], where: str) -> None:
    for column in columns:
        at = [str(i) for i, name in enumerate(names) if name == column]
        if len(at) > 1:
            raise DataError(
                f"{where}: the header names column {column!r} {len(at)} times (columns {', '.join(at)}, "
                "counting from 0): which one is meant is ambiguous; rename or remove the others"
            )


def _field(row: Any, column: str | int, where: str) -> str:
    if isinstance(column, int):
        if not isinstance(row, list) or column >= len(row):
            have = len(row) if isinstance(row, list) else "a JSON object"
            raise DataError(f"{where}: no column {column} (the row has {have}; columns count from 0)")
        value = row[column]
    else:
        if not isinstance(row, dict):
            raise DataError(
                f"{where}: expected a JSON object with field {column!r}, got {type(row).__name__}"
            )
        if column not in row:
            raise DataError(
                f"{where}: missing field {column!r} (found: {', '.join(map(str, row)) or 'none'})"
            )
        if isinstance(row, _KeysTwice) and column in row.twice:
            raise DataError(f"{where}: field {column!r} occurs more than once in the object: keep one")
        value = row[column]
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # classes numbered 0, 1, ... are labels like any other
    if isinstance(value, float):
        raise DataError(
            f"{where}: field {column!r} is the number {value!r}, not an integer: a label is a class, "
            "and 1.0 beside 1 would be two of them; write it as a string if it is a name"
        )
    raise DataError(f"{where}: field {column!r} must be text, got {type(value).__name__}")


def iter_labelled(
    path: Path | str,
    text_column: str | int,
    label_column: str | int,
    fmt: str,
    max_record_bytes: int = MAX_RECORD_BYTES,
) -> Iterator[LabelledText]:
    """The (text, label) examples of a labelled file, streamed. Integer columns mean a file without
    a header row (columns counted from 0); names mean a header row (CSV, TSV) or JSON keys."""
    path = Path(path)
    kind = file_format(path, fmt)
    if kind == "jsonl":
        rows = _json_lines(path, max_record_bytes)
    else:
        delimiter = "," if kind == "csv" else "\t"
        rows = _table_rows(path, delimiter, (text_column, label_column), max_record_bytes)
    count = 0
    for where, row in rows:
        text, label = _field(row, text_column, where), _field(row, label_column, where)
        if not label.strip():
            raise DataError(f"{where}: empty label in field {label_column!r}")
        if not text.strip():
            raise DataError(f"{where}: empty text in field {text_column!r}")
        count += 1
        yield LabelledText(text, label.strip(), where)
    if not count:
        raise DataError(f"{path}: no examples")


def read_labelled(
    path: Path | str, text_column: str | int, label_column: str | int, fmt: str
) -> list[LabelledText]:
    """`iter_labelled` as a list, for files known to be small."""
    return list(iter_labelled(path, text_column, label_column, fmt))


def iter_instructions(
    path: Path | str, max_record_bytes: int = MAX_RECORD_BYTES
) -> Iterator[InstructionRecord]:
    """Alpaca-style records from a JSON array or JSON Lines, streamed; `input` may be missing or empty."""
    path = Path(path)
    if _starts_with_bracket(path):
        with open(path, "rb") as fh:
            yield from _instructions(path, _JsonArray(path, fh, max_record_bytes).records())
    else:
        yield from _instructions(path, _json_lines(path, max_record_bytes))


def _instructions(path: Path, rows: Iterable[tuple[str, Any]]) -> Iterator[InstructionRecord]:
    count = 0
    for where, item in rows:
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
        if isinstance(item, _KeysTwice) and (twice := sorted(item.twice.intersection(INSTRUCTION_KEYS))):
            raise DataError(f"{where}: field {twice[0]!r} occurs more than once in the object: keep one")
        values = {}
        for key in INSTRUCTION_KEYS:
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
        count += 1
        yield InstructionRecord(**values, where=where)
    if not count:
        raise DataError(f"{path}: no records")


def read_instructions(path: Path | str) -> list[InstructionRecord]:
    """`iter_instructions` as a list, for files known to be small."""
    return list(iter_instructions(path))


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


def _jsonl_line(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def check_classes(first_seen: dict[str, dict[str, str]], source: str) -> list[str]:
    """The class labels (sorted) after checking that training has at least two of them and that
    no val or test example carries a label training never shows. `first_seen` maps each split to
    its labels, each with where its first example is (the one an error names)."""
    labels = sorted(first_seen["train"])
    if len(labels) < 2:
        found = sorted({label for seen in first_seen.values() for label in seen})
        raise DataError(
            f"{source}: a classifier needs at least two classes in its training split, found {found}"
        )
    for name in ("val", "test"):
        for label, where in first_seen[name].items():
            if label not in first_seen["train"]:
                raise DataError(
                    f"{where}: label {label!r} occurs only in the {name} split, never in train "
                    f"(train labels: {', '.join(labels)}); add training examples of it or drop them"
                )
    return labels


def balanced_keep(keys: Sequence[float], size: int) -> np.ndarray:
    """Which examples of one class undersampling to `size` keeps: those with the smallest keys,
    ties going to the earlier one (a boolean per example, in order)."""
    values = np.asarray(keys, dtype=np.float64)
    keep = np.zeros(len(values), dtype=bool)
    keep[np.argsort(values, kind="stable")[:size]] = True
    return keep


def write_labelled_splits(
    folder: Path, examples: Iterable[tuple[str, LabelledText]], seed: int, balanced: bool, source: str
) -> tuple[list[str], dict[str, dict[str, int]]]:
    """Write `(split, example)` pairs as they come to `folder`/<split>.jsonl, `{"text", "label"}` a
    line in the order given; return the class labels (`check_classes`) and per split the examples
    written of each label, sorted by label.

    With `balanced`, every class of a split is undersampled to the size of its rarest: the examples
    kept are those with the smallest hash of where and text (`balanced_keep`), in their order. The
    split files are written whole first, then filtered, so memory holds a hash and a class number
    per example, never the examples (the book undersamples SMS spam's ham to the size of its spam)."""
    first_seen: dict[str, dict[str, str]] = {name: {} for name in SPLITS}
    counts: dict[str, Counter[str]] = {name: Counter() for name in SPLITS}
    numbers: dict[str, int] = {}  # label -> class number
    classes = {name: array("I") for name in SPLITS}  # class number of each example, per split
    keys: dict[str, dict[int, array[float]]] = {name: defaultdict(lambda: array("d")) for name in SPLITS}
    suffix = ".unbalanced" if balanced else ""
    with contextlib.ExitStack() as stack:
        files = {
            name: stack.enter_context(open(folder / f"{name}.jsonl{suffix}", "w", encoding="utf-8"))
            for name in SPLITS
        }
        for split, ex in examples:
            number = numbers.setdefault(ex.label, len(numbers))
            if len(numbers) > MAX_CLASSES:
                raise DataError(
                    f"{ex.where}: more than {MAX_CLASSES:,} distinct labels (is label_column the label?)"
                )
            files[split].write(_jsonl_line({"text": ex.text, "label": ex.label}))
            first_seen[split].setdefault(ex.label, ex.where)
            counts[split][ex.label] += 1
            if balanced:
                classes[split].append(number)
                keys[split][number].append(_unit(ex.where + ex.text, seed))
    labels = check_classes(first_seen, source)
    if not balanced:
        return labels, {name: dict(sorted(counts[name].items())) for name in SPLITS}
    per_label = {}
    for name in SPLITS:
        size = min(counts[name].values(), default=0)
        keep = {number: balanced_keep(values, size) for number, values in keys[name].items()}
        del keys[name]
        seen: Counter[int] = Counter()
        unbalanced = folder / f"{name}.jsonl{suffix}"
        with open(unbalanced, "rb") as src, open(folder / f"{name}.jsonl", "wb") as dst:
            for line, number in zip(src, classes[name], strict=True):
                if keep[number][seen[number]]:
                    dst.write(line)
                seen[number] += 1
        os.unlink(unbalanced)
        per_label[name] = {label: size for label in sorted(counts[name])}
    return labels, per_label


def write_instruction_splits(
    folder: Path, records: Iterable[tuple[str, InstructionRecord]]
) -> dict[str, int]:
    """Write `(split, record)` pairs as they come to `folder`/<split>.jsonl; return the records per split."""
    counts = dict.fromkeys(SPLITS, 0)
    with contextlib.ExitStack() as stack:
        files = {
            name: stack.enter_context(open(folder / f"{name}.jsonl", "w", encoding="utf-8"))
            for name in SPLITS
        }
        for split, record in records:
            files[split].write(_jsonl_line(record.to_dict()))
            counts[split] += 1
    return counts


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
    windows: list[str] = []
    current: list[str] = []
    size = 0
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
    speaker: str | None = None
    lines: list[str] = []
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


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """Rows a data stage wrote (see write_labelled_splits)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: run the fine-tuning data stage first")
    # no limit on a line: the data stage bounded every record, and escaping may have lengthened it
    return [parse_json(text, f"{path}:{number}") for number, text in _file_lines(path, None) if text.strip()]
