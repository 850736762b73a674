"""What train.activation_checkpointing buys and costs on this machine: peak memory and step time.

Full training steps (forward, backward, AdamW) of the same model with and without each block's
activations recomputed in the backward pass. Peak memory is every allocation and free of a model's
first two steps replayed from torch's profiler (`gptcore.memory.peak_allocated`: weights, gradients, AdamW's
moments and activations), step time the median over interleaved rounds, so that a shared machine's
slow phases hit both alike; the ratios are the figures to quote.

    python benchmarks/activation_checkpointing.py [--rounds 5] [--n-layer 6] [--n-embd 384]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptcore.memory import checkpoint_blocks, peak_allocated, plan_memory
from gptcore.model import GPT, GPTConfig
from gptcore.optimizers import configure_optimizer
from gptcore.params import load_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args()
    config = GPTConfig(args.vocab_size, args.block_size, args.n_layer, args.n_head, args.n_embd, dropout=0.1)
    params = load_section("train")
    x = torch.randint(0, config.vocab_size, (args.batch_size, config.block_size))
    y = torch.randint(0, config.vocab_size, (args.batch_size, config.block_size))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {config}, batch {args.batch_size}")

    def build(checkpointing: bool) -> tuple[GPT, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = GPT(config)
        if checkpointing:
            checkpoint_blocks(model)
        return model, configure_optimizer(model, params, torch.device("cpu"))

    def step(model: GPT, optimizer: torch.optim.Optimizer) -> None:
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def two_steps(checkpointing: bool) -> None:
        # the second step is the steady state: AdamW's moments exist from the first on
        model, optimizer = build(checkpointing)
        step(model, optimizer)
        step(model, optimizer)

    variants = (False, True)
    peaks = {c: peak_allocated(lambda c=c: two_steps(c)) for c in variants}
    built = {c: build(c) for c in variants}
    for c in variants:
        step(*built[c])  # warm-up
    seconds: dict[bool, list[float]] = {c: [] for c in variants}
    for _ in range(args.rounds):
        for c in variants:
            start = time.perf_counter()
            step(*built[c])
            seconds[c].append(time.perf_counter() - start)
    for c in variants:
        plan = plan_memory(config, args.batch_size, checkpointing=c)
        print(
            f"activation checkpointing {'on ' if c else 'off'}: peak {peaks[c] / 2**20:8.1f} MiB "
            f"(plan {plan.total / 2**20:8.1f} MiB), step {statistics.median(seconds[c]) * 1e3:8.1f} ms median"
        )
    print(
        f"on / off: peak memory x{peaks[True] / peaks[False]:.2f}, "
        f"step time x{statistics.median(seconds[True]) / statistics.median(seconds[False]):.2f}"
    )


if __name__ == "__main__":
    main()
