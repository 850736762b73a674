"""Stage benchmark: score models/model.pt on benchmark.tasks of the suite in data/benchmarks.

Writes reports/benchmark.json (the headline `dvc metrics show` lists: `core` and each task's
metrics), reports/benchmark_details.json (per task: primary metric, items, chance, centered
accuracy, truncated items, items with characters the vocabulary lacks) and
reports/benchmark_items.jsonl (one line per item: its log-likelihoods and prediction, to diff two
runs item by item). How items are scored: gptcore.benchmark.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gptcore.benchmark.report import progress_bars, run_tasks, table, write_reports
from gptcore.benchmark.suite import Suite
from gptcore.checkpoint import MODEL_FILE, load_model
from gptcore.device import resolve_device
from gptcore.errors import run_main
from gptcore.params import load_section

SUITE_DIR = Path("data/benchmarks")
REPORT = Path("reports/benchmark.json")
DETAILS = Path("reports/benchmark_details.json")
ITEMS = Path("reports/benchmark_items.jsonl")


def main() -> None:
    params = load_section("benchmark")
    device = resolve_device("auto")
    model, tokenizer, _ = load_model(MODEL_FILE, device)
    dtype = torch.bfloat16 if params.dtype == "bfloat16" else None
    with Suite(SUITE_DIR) as suite, progress_bars() as progress:
        results = run_tasks(
            model, tokenizer, suite, params.tasks, params.limit, params.batch_size, device, progress, dtype
        )
    write_reports(results, REPORT, DETAILS, ITEMS)
    print(table(results))


if __name__ == "__main__":
    run_main(main)
