"""Benchmark figures: each task's metrics, the CORE-like aggregate, and the per-item records.

Multiple-choice tasks report `acc` (the choice with the highest summed log-likelihood is the gold
one) and `acc_norm` (the same with each log-likelihood divided by its continuation's length in
characters: lm-evaluation-harness's `acc_norm`, OLMES's `acc_per_char`). Continuation tasks
(LAMBADA) report `acc` (greedy decoding yields the gold continuation exactly) and `bits_per_byte`
of the gold continuation (its total nats / ln 2 / its UTF-8 bytes, over all items).

`core`, as DCLM's CORE score does it: each task's primary accuracy centered on chance,
(acc - chance) / (1 - chance), chance being the mean of 1 / choices over its items (0 for a
continuation task), averaged over the tasks run; a model that guesses scores about 0 whatever
the mix of tasks, a perfect one 1.

The headline (`headline`: `core`, and per task its two metrics) is what `dvc metrics show` lists;
`details` adds per task its primary metric, items, chance, centered accuracy, and how many items
were truncated to the block or held characters the vocabulary does not know.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gptcore.atomic import write_json, write_text
from gptcore.benchmark.score import Scores, predicted, score_items
from gptcore.benchmark.suite import Item, Suite, Task
from gptcore.errors import DataError
from gptcore.model import GPT
from gptcore.tokenizer import Tokenizer


@dataclass(frozen=True)
class TaskResult:
    task: Task
    scores: tuple[Scores, ...]
    seconds: float

    def metrics(self) -> dict[str, float]:
        if self.task.kind == "continuation":
            nats = -sum(s.loglikelihoods[0] for s in self.scores)
            size = sum(len(item.requests[0][1].encode("utf-8")) for item in self.task.items)
            return {
                "acc": _mean(s.greedy[0] for s in self.scores),
                "bits_per_byte": nats / math.log(2) / max(1, size),
            }
        return {
            "acc": _mean(predicted(item, s, False) == item.gold for item, s in self._pairs()),
            "acc_norm": _mean(predicted(item, s, True) == item.gold for item, s in self._pairs()),
        }

    def _pairs(self) -> Iterable[tuple[Item, Scores]]:
        return zip(self.task.items, self.scores, strict=True)

    @property
    def chance(self) -> float:
        if self.task.kind == "continuation":
            return 0.0
        return _mean(1 / len(item.requests) for item in self.task.items)

    @property
    def accuracy(self) -> float:
        """The accuracy CORE centers: the primary metric where it is one, else `acc`."""
        metrics = self.metrics()
        return metrics[self.task.primary] if self.task.primary in ("acc", "acc_norm") else metrics["acc"]

    @property
    def centered(self) -> float:
        return (self.accuracy - self.chance) / (1 - self.chance)

    def details(self) -> dict[str, Any]:
        return {
            "primary": self.task.primary,
            "variant": self.task.variant,
            "items": len(self.scores),
            "chance": round(self.chance, 4),
            "centered": round(self.centered, 4),
            "truncated": sum(s.truncated for s in self.scores),
            "unknown_characters": sum(s.unknown for s in self.scores),
        }

    def records(self) -> Iterable[dict[str, Any]]:
        """One JSON-ready record per item, to diff two runs item by item."""
        for item, s in self._pairs():
            record: dict[str, Any] = {
                "task": self.task.name,
                "doc_id": item.doc_id,
                "loglikelihoods": [round(v, 4) for v in s.loglikelihoods],
                "tokens": list(s.tokens),
            }
            if self.task.kind == "choice":
                record.update(
                    gold=item.gold, pred=predicted(item, s, False), pred_norm=predicted(item, s, True)
                )
            else:
                record.update(greedy=s.greedy[0])
            if s.truncated:
                record["truncated"] = True
            if s.unknown:
                record["unknown_characters"] = True
            yield record


def _mean(values: Iterable[float | bool]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def run_tasks(
    model: GPT,
    tokenizer: Tokenizer,
    suite: Suite,
    names: Sequence[str],
    limit: int | None,
    batch_size: int,
    device: torch.device,
    progress: Callable[[str, int], Callable[[int], object]] | None = None,
    dtype: torch.dtype | None = None,
) -> list[TaskResult]:
    """Load and score each named task (`limit`: its first items); `progress(name, total)` gives the
    callback that counts that task's finished items."""
    tasks = [suite.load(name, limit) for name in names]  # every name checked before any scoring
    names_seen = [t.name for t in tasks]
    duplicates = sorted({n for n in names_seen if names_seen.count(n) > 1})
    if duplicates:
        raise DataError(f"benchmark tasks named twice: {', '.join(duplicates)}")
    results = []
    for task in tasks:
        started = time.perf_counter()
        callback = progress(task.name, len(task.items)) if progress is not None else None
        scores = score_items(model, tokenizer, task.items, batch_size, device, callback, dtype)
        results.append(TaskResult(task, tuple(scores), time.perf_counter() - started))
    return results


@contextlib.contextmanager
def progress_bars() -> Iterator[Callable[[str, int], Callable[[int], object]]]:
    """`run_tasks`'s `progress`: a bar of items (and items/s) per task, each closed when the next
    task starts, the last on leaving."""
    bars: list[tqdm] = []

    def progress(name: str, total: int) -> Callable[[int], object]:
        for bar in bars:
            bar.close()
        bars.append(tqdm(total=total, desc=name, unit="item"))
        return bars[-1].update

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def headline(results: Sequence[TaskResult]) -> dict[str, Any]:
    out: dict[str, Any] = {"core": round(_mean(r.centered for r in results), 4)}
    for r in results:
        out[r.task.name] = {k: round(v, 4) for k, v in r.metrics().items()}
    return out


def details(results: Sequence[TaskResult]) -> dict[str, Any]:
    return {r.task.name: r.details() for r in results}


def table(results: Sequence[TaskResult]) -> str:
    """The results as a plain-text table, with the speed of each task."""
    rows = [("task", "items", "acc", "acc_norm", "bits/byte", "chance", "centered", "truncated", "items/s")]
    for r in results:
        m = r.metrics()
        rows.append(
            (
                r.task.name,
                str(len(r.scores)),
                f"{m['acc']:.4f}",
                f"{m['acc_norm']:.4f}" if "acc_norm" in m else "-",
                f"{m['bits_per_byte']:.4f}" if "bits_per_byte" in m else "-",
                f"{r.chance:.4f}",
                f"{r.centered:+.4f}",
                str(r.details()["truncated"]),
                f"{len(r.scores) / max(r.seconds, 1e-9):.1f}",
            )
        )
    core = _mean(r.centered for r in results)
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.append(f"core (mean centered accuracy over {len(results)} task(s)): {core:+.4f}")
    return "\n".join(lines)


def write_reports(
    results: Sequence[TaskResult],
    out: Path,
    details_path: Path | None = None,
    items_path: Path | None = None,
) -> None:
    """The headline to `out`, and where given the details and the per-item records (JSON Lines);
    each file whole or not at all."""
    write_json(out, headline(results))
    if details_path is not None:
        write_json(details_path, details(results))
    if items_path is not None:
        lines = (json.dumps(record, sort_keys=True) + "\n" for r in results for record in r.records())
        write_text(items_path, "".join(lines))
