"""Generation speed (new tokens/s) with and without the KV cache, single-threaded.

Two model shapes with random weights (speed does not depend on what the weights say):

  default  n_layer=4 n_head=4 n_embd=256 block_size=128 vocab 1024   (params.yaml's model)
  small    n_layer=6 n_head=6 n_embd=384 block_size=256 vocab 86     (the 6/6/384 char config)

Each run generates `--tokens` new tokens (default 500: several times block_size, so the window
slides and the cache is rebuilt along the way) from a one-token prompt, with the sample stage's
settings (temperature 0.8, top-k 50, top-p 0.95) and a fixed seed, so both variants draw the same
tokens. Variants alternate round by round; the figure is the median over rounds and the ratio is
cached / uncached within the same run.

    python benchmarks/generate_speed.py
    python benchmarks/generate_speed.py --config small --tokens 1000 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gptcore.generate import generate
from gptcore.model import GPT, GPTConfig
from gptcore.sampling import Sampling

CONFIGS = {
    "default": GPTConfig(vocab_size=1024, block_size=128, n_layer=4, n_head=4, n_embd=256, arch="llama"),
    "small": GPTConfig(vocab_size=86, block_size=256, n_layer=6, n_head=6, n_embd=384),
}


def tokens_per_second(model: GPT, new: int, use_cache: bool) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = generate(
        model,
        torch.zeros(1, 1, dtype=torch.long),
        Sampling(temperature=0.8, top_k=50, top_p=0.95, max_new_tokens=new),
        generator=torch.Generator().manual_seed(0),
        use_cache=use_cache,
    )
    return new / (time.perf_counter() - start), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.tokens} new tokens")
    print(f"{'config':8s} {'no cache tok/s':>15s} {'cache tok/s':>12s} {'ratio':>6s}  same tokens")
    for name in CONFIGS if args.config == "all" else [args.config]:
        torch.manual_seed(0)
        model = GPT(CONFIGS[name]).eval()
        tokens_per_second(model, 8, True)  # allocator and kernel warm-up
        rates: dict[bool, list[float]] = {False: [], True: []}
        outputs = {}
        for _ in range(args.rounds):
            for use_cache in (False, True):
                rate, outputs[use_cache] = tokens_per_second(model, args.tokens, use_cache)
                rates[use_cache].append(rate)
        plain, cached = statistics.median(rates[False]), statistics.median(rates[True])
        same = torch.equal(outputs[False], outputs[True])
        print(f"{name:8s} {plain:15,.0f} {cached:12,.0f} {cached / plain:6.2f}  {same}")


if __name__ == "__main__":
    main()
