"""How fast the token store hands out training batches: random (batch, block_size + 1) windows.

Training must never wait for data. `TokenStore.random_windows` draws `batch_size` random start
positions and gathers the windows from the memory-mapped HDF5 dataset in one numpy call; this script
times it on one thread, on a token file of `--tokens` random ids (uint16, like a char or BPE
vocabulary under 65,536), for the batch shapes of the benchmark configs and of GPT-2 124M.

The target is 1M tokens/s or more on one core. For scale: the small config trains at ~2,700
tokens/s on this machine's two cores, so the loader costs a vanishing share of a step.

    python benchmarks/batch_speed.py
    python benchmarks/batch_speed.py --tokens 200000000 --seconds 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gptcore.data.token_store import TokenStore, TokenWriter

SHAPES = {  # name -> (batch_size, block_size)
    "tiny (12 x 64)": (12, 64),
    "default (32 x 128)": (32, 128),
    "small (64 x 256)": (64, 256),
    "gpt2-124M micro-batch (16 x 1024)": (16, 1024),
}
VOCAB = 50_000


def make_token_file(path: Path, tokens: int) -> None:
    rng = np.random.default_rng(0)
    chunk = 10_000_000
    docs = (rng.integers(0, VOCAB - 1, min(chunk, tokens - i)) for i in range(0, tokens, chunk))
    identity = {"kind": "bench", "vocab_size": VOCAB, "sha256": "0" * 64}
    with TokenWriter(path, vocab_size=VOCAB, eot_id=VOCAB - 1, tokenizer_identity=identity) as writer:
        for ids in docs:
            writer.add_document(ids)


def time_batches(store: TokenStore, batch: int, block: int, seconds: float) -> float:
    """Tokens per second (batch * block_size per call) over about `seconds` of calls."""
    gen = torch.Generator().manual_seed(0)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            store.random_windows(batch, block, gen)
        calls += 20
    return calls * batch * block / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000_000, help="size of the token file")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per shape (median quoted)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.h5"
        start = time.perf_counter()
        make_token_file(path, args.tokens)
        print(
            f"token file: {args.tokens:,} tokens, {path.stat().st_size / 1e6:,.0f} MB "
            f"(written in {time.perf_counter() - start:.1f} s)"
        )
        store = TokenStore(path)
        store.random_windows(1, 8, torch.Generator())  # touch the map once
        results: dict[str, list[float]] = {name: [] for name in SHAPES}
        for _ in range(args.rounds):  # rounds interleave the shapes, so noise hits them alike
            for name, (batch, block) in SHAPES.items():
                results[name].append(time_batches(store, batch, block, args.seconds))
        print(f"\nrandom_windows on 1 thread, median of {args.rounds} rounds (target: 1M tokens/s)")
        print(f"{'shape':<36} {'tokens/s':>14} {'batches/s':>11}")
        for name, (batch, block) in SHAPES.items():
            rate = statistics.median(results[name])
            print(f"{name:<36} {rate:>14,.0f} {rate / (batch * block):>11,.0f}")


if __name__ == "__main__":
    main()
