"""Training throughput (tokens/s) of gptcore's model and optimizer step, and what each lever buys.

Two reference configs, timed with the same settings a user would set in params.yaml:

  tiny   n_layer=4 n_head=4 n_embd=128 block_size=64  batch_size=12 dropout=0.0  (char vocab)
  small  n_layer=6 n_head=6 n_embd=384 block_size=256 batch_size=64 dropout=0.2  (char vocab)

Each variant runs a full optimizer step (forward, backward, clip, AdamW) on random tokens drawn
from a vocabulary of 86 (the char vocabulary of the default corpus). Variants are interleaved
round by round, so slow phases of a shared machine hit all of them alike; the figure quoted is the
median over rounds, and ratios are taken against the first variant of the same run.

Arithmetic: model FLOPs per token = 6N + 12*L*H*Q*T (N non-position parameters, PaLM appendix B).
For `small`, N = 10.65M, so 71.0 MFLOP/token: 1,450 tokens/s is 103 GFLOP/s.

    python benchmarks/train_speed.py                 # both configs, all variants
    python benchmarks/train_speed.py --config tiny --rounds 5
    python benchmarks/train_speed.py --peak          # also the machine's fp32/bf16 matmul peak
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from gptcore.model import GPT, GPTConfig, flops_per_token

CONFIGS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, dropout=0.0, steps=60),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2, steps=2),
}
VOCAB = 86
# variant name -> (compile, autocast dtype, fused AdamW)
VARIANTS = {
    "eager fp32, foreach AdamW": (False, None, False),
    "eager fp32, fused AdamW": (False, None, True),
    "eager bf16 autocast": (False, torch.bfloat16, True),
    "compiled fp32 (gptcore default)": (True, None, True),
    "compiled bf16 autocast": (True, torch.bfloat16, True),
}


def make_step(cfg: dict, compile_model: bool, dtype: torch.dtype | None, fused: bool):
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=VOCAB,
        block_size=cfg["block_size"],
        n_layer=cfg["n_layer"],
        n_head=cfg["n_head"],
        n_embd=cfg["n_embd"],
        dropout=cfg["dropout"],
    )
    model = GPT(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused, foreach=None if fused else True)
    fwd = torch.compile(model) if compile_model else model
    x = torch.randint(0, VOCAB, (cfg["batch_size"], cfg["block_size"]))
    y = torch.randint(0, VOCAB, (cfg["batch_size"], cfg["block_size"]))
    ctx = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype else contextlib.nullcontext

    def step() -> None:
        with ctx():
            _, loss = fwd(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    start = time.perf_counter()
    step()
    step()  # compilation and allocator warm-up happen here
    return step, time.perf_counter() - start, flops_per_token(config, model.num_params())


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(4 * n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * 4 * n * n * n * reps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="all", help="comma-separated variant numbers (1-based), or all")
    ap.add_argument("--peak", action="store_true", help="also measure fp32 and bf16 matmul GFLOP/s")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.peak:
        for dtype in (torch.float32, torch.bfloat16):
            print(
                f"matmul peak {dtype}: {statistics.median(matmul_peak(dtype) for _ in range(3)) / 1e9:.0f} GFLOP/s"
            )
    names = list(VARIANTS)
    if args.variants != "all":
        names = [names[int(i) - 1] for i in args.variants.split(",")]
    for cname in CONFIGS if args.config == "all" else [args.config]:
        cfg = CONFIGS[cname]
        tokens = cfg["steps"] * cfg["batch_size"] * cfg["block_size"]
        steps = {}
        for name in names:
            steps[name] = make_step(cfg, *VARIANTS[name])
        rates: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                step = steps[name][0]
                start = time.perf_counter()
                for _ in range(cfg["steps"]):
                    step()
                rates[name].append(tokens / (time.perf_counter() - start))
        base = statistics.median(rates[names[0]])
        print(f"\n{cname}: {cfg}")
        print(f"{'variant':34s} {'tokens/s':>9s} {'ratio':>6s} {'GFLOP/s':>8s} {'warm-up s':>9s}")
        for name in names:
            med = statistics.median(rates[name])
            _, warm, fpt = steps[name]
            print(f"{name:34s} {med:9,.0f} {med / base:6.2f} {med * fpt / 1e9:8.1f} {warm:9.1f}")


if __name__ == "__main__":
    main()
