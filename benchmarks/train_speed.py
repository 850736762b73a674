"""Training throughput (tokens/s) of gptcore's model and optimizer step, and what each lever buys.

Four configs, timed with the same settings a user would set in params.yaml:

  tiny   n_layer=4  n_head=4  n_embd=128 block_size=64   batch_size=12 dropout=0.0  vocab 86 (char)
  default  the default run's model and batch, read from params.yaml (train: and vocab.vocab_size);
         today the llama family, n_layer=4 n_head=4 n_embd=256 block_size=128 batch_size=32
         dropout=0.0 vocab 1024
  small  n_layer=6  n_head=6  n_embd=384 block_size=256  batch_size=64 dropout=0.2  vocab 86 (char)
  gpt2   n_layer=12 n_head=12 n_embd=768 block_size=1024 batch_size=16 dropout=0.0  vocab 50304
         (GPT-2 124M, vocabulary padded to a multiple of 64; meant for `--device cuda`)

Each variant runs a full optimizer step (forward, backward, clip, AdamW) on random tokens, with
the optimizer gptcore.optimizers.configure_optimizer builds from params.yaml's train section (decay and
no-decay groups, betas, weight decay, grad_clip): what the training loop steps. Variants
are interleaved round by round, so slow phases of a shared machine hit all of them alike; the
figure quoted is the median over rounds, and ratios are taken against the first variant of the
same run: the reference when --reference is given, else variant 1. Comparing ratios measured in
one run is what makes the numbers hold on a noisy shared machine; absolute tokens/s do not.

Variants (numbers are what --variants takes; --list prints them):

  1 eager fp32, foreach AdamW            plain PyTorch
  2 eager fp32, fused AdamW              one fused kernel for the whole optimizer update
  3 eager bf16 autocast                  matmuls in bf16, master weights fp32 (fused AdamW)
  4 compiled fp32      torch.compile(model), fused AdamW
  5 compiled bf16 autocast               4 with bf16 autocast: the GPU recipe, as in GPT-2 training
  6 compiled fp32 + compiled AdamW step  4, and torch.compile(opt.step) over a foreach AdamW, so
                                         Inductor generates the fused update itself
  7 compiled fp32 max-autotune           torch.compile(model, mode="max-autotune"): Inductor
                                         benchmarks its own GEMM templates against the library's
                                         (Triton on CUDA, where it also uses CUDA graphs). Its CPU
                                         (C++) templates need constant weights, i.e. frozen
                                         inference graphs, so a CPU training step keeps oneDNN's
                                         GEMMs; warm-up is long on CUDA (the "warm-up s" column)
  8 eager bf16 autocast, Muon            3 with gptcore's optimizer under train.optimizer: muon
                                         (torch.optim.Muon for the blocks' matrices, fused AdamW
                                         for the rest): what Muon's Newton-Schulz steps cost
  9 eager bf16, explicit attention       3 with train.attention: explicit (GPT.attention): q k^T,
                                         masked softmax in fp32, weights v, written out instead
                                         of the fused scaled_dot_product_attention kernel
 10 compiled bf16, explicit attention    5 with train.attention: explicit
 11 auto                                 what train.dtype, train.compile and train.attention: auto
                                         pick for the config on this machine (gptcore.autotune:
                                         its cached timings, or timed now as a training run
                                         would, for params.yaml's max_iters); the row names the pick

  reference: nanoGPT (eager fp32)        with --reference, the first row: karpathy/nanoGPT's
                                         model.py from that checkout, stepped the way its train.py
                                         steps on CPU (fp32, no autocast, eager, clip 1.0, AdamW
                                         from its configure_optimizers; on CUDA that picks its
                                         fused AdamW, the step stays eager fp32)

A variant that fails to build or warm up (say, a compile error) is reported as failed and left out
of the timing; the others still run. On CUDA the gpt2 config runs variant 5 only unless --variants
says otherwise; everywhere else all variants run by default.

Columns: tokens/s; ratio to the first row; model GFLOP/s; with --peak, that as a percentage of the
measured fp32 matmul peak (bf16 rows on a GPU can pass 100%); MFU = model FLOP/s / --peak-flops; warm-up seconds (building the model,
compiling, and two steps); on CUDA, the peak memory of the variant's build and warm-up (the rise of
torch.cuda.max_memory_allocated over what was allocated before it), in GiB.

Arithmetic: model FLOPs per token = 6N + 12*L*H*Q*T (N non-position parameters, PaLM appendix B).
For `small`, N = 10.65M, so 71.0 MFLOP/token: 1,450 tokens/s is 103 GFLOP/s. For `gpt2`,
N = 123.6M, so 854.8 MFLOP/token: 40% MFU of an H100's 989 TFLOP/s is 463k tokens/s.

Flags:

  --config {tiny,default,small,gpt2,all}  which config; all (the default) is tiny, default and small
  --rounds N          interleaved rounds; the median is quoted (default 3)
  --steps N           optimizer steps per variant per round (default: the config's, 60/2/20)
  --batch-size N      override the config's batch size
  --variants 1,4,...  variant numbers to run (default: all, or 5 for gpt2 on CUDA)
  --list              print the numbered variants and exit
  --reference PATH    a checkout of karpathy/nanoGPT: time its model as the first row (the
                      checkout's git commit is printed, or "unknown")
  --device DEV        cpu (default) or cuda (cuda:N)
  --threads N         torch.set_num_threads(N) before anything runs (default: torch's choice)
  --peak              also measure the device's fp32, bf16 and fp16 matmul GFLOP/s; a dtype this
                      device runs pathologically slowly is reported as slow after ~15 s
  --peak-flops F      peak FLOP/s for MFU (default: the dense bf16 peak of the GPU in
                      gptcore.device's table; pass it for unlisted GPUs or CPUs; MFU is n/a without)

    python benchmarks/train_speed.py                 # tiny and small, all variants, on CPU
    python benchmarks/train_speed.py --config tiny --rounds 5 --reference /path/to/nanoGPT
    python benchmarks/train_speed.py --peak          # also the machine's matmul peaks
    python benchmarks/train_speed.py --config gpt2 --device cuda --peak --reference /path/to/nanoGPT
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch

from gptcore.autotune import decide
from gptcore.device import gpu_bf16_peak
from gptcore.model import GPT, GPTConfig, flops_per_token
from gptcore.optimizers import configure_optimizer
from gptcore.params import load_section
from gptcore.step import lm_loss, train_step

ROOT = Path(__file__).resolve().parents[1]
# the optimisation settings the pipeline trains with
TRAIN_PARAMS = load_section("train", ROOT / "params.yaml")

CONFIGS = {
    "tiny": dict(
        n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=86, dropout=0.0, batch_size=12, steps=60
    ),
    "small": dict(
        n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=86, dropout=0.2, batch_size=64, steps=2
    ),
    "gpt2": dict(
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=1024,
        vocab_size=50304,
        dropout=0.0,
        batch_size=16,
        steps=20,
    ),
}
# gptcore's default model and batch, as params.yaml sets them (see default_config)
DEFAULT_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "batch_size")
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout")
# the model family; the named configs are nanoGPT's model (gpt2), the default config is params.yaml's
FAMILY_KEYS = ("arch", "tie_embeddings", "qk_norm")


class Variant(NamedTuple):
    compile_mode: str | None  # None: eager; else torch.compile's mode
    dtype: torch.dtype | None  # autocast dtype; None: plain fp32
    fused: bool  # fused AdamW, else foreach
    compile_opt: bool = False  # also torch.compile the optimizer step
    muon: bool = False  # gptcore's Muon + AdamW (train.optimizer: muon, params.yaml's rates)
    attention: str = "sdpa"  # GPT.attention: the fused kernel or the explicit one


VARIANTS = {
    "eager fp32, foreach AdamW": Variant(None, None, False),
    "eager fp32, fused AdamW": Variant(None, None, True),
    "eager bf16 autocast": Variant(None, torch.bfloat16, True),
    "compiled fp32": Variant("default", None, True),
    "compiled bf16 autocast": Variant("default", torch.bfloat16, True),
    # foreach, not fused: compiling a fused update has nothing left to fuse
    "compiled fp32 + compiled AdamW step": Variant("default", None, False, compile_opt=True),
    "compiled fp32 max-autotune": Variant("max-autotune", None, True),
    "eager bf16 autocast, Muon": Variant(None, torch.bfloat16, True, muon=True),
    "eager bf16, explicit attention": Variant(None, torch.bfloat16, True, attention="explicit"),
    "compiled bf16, explicit attention": Variant("default", torch.bfloat16, True, attention="explicit"),
}
AUTO = "auto"  # what train.dtype/compile/attention: auto pick for the config here (gptcore.autotune)
GPU_RECIPE = "compiled bf16 autocast"
REFERENCE = "reference: nanoGPT (eager fp32)"

Step = Callable[[], None]


@dataclass
class Prepared:
    step: Step
    warm_up_s: float
    flops_per_token: int
    mem_gib: float | None  # CUDA only


def clock(device: torch.device) -> float:
    """Wall time once queued GPU work has finished: CUDA calls return before their kernels do."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def shape(cfg: dict) -> dict:
    return {k: cfg[k] for k in SHAPE_KEYS}


def gptcore_config(cfg: dict) -> GPTConfig:
    return GPTConfig(**shape(cfg), **{k: cfg[k] for k in FAMILY_KEYS if k in cfg})


def random_batch(cfg: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    size = (cfg["batch_size"], cfg["block_size"])
    return tuple(torch.randint(0, cfg["vocab_size"], size, device=device) for _ in range(2))


def gptcore_step(cfg: dict, variant: Variant, device: torch.device) -> tuple[Step, int]:
    torch.manual_seed(0)
    config = gptcore_config(cfg)
    model = GPT(config).to(device)
    model.attention = variant.attention
    # the optimizer the training loop builds (groups, betas, weight decay, Muon's rates from
    # params.yaml's train section); only fused/foreach AdamW and Muon or not are the variant's
    train = dataclasses.replace(TRAIN_PARAMS, optimizer="muon" if variant.muon else "adamw")
    opt = configure_optimizer(model, train, device, fused=variant.fused)
    fwd = torch.compile(model, mode=variant.compile_mode) if variant.compile_mode else model
    opt_step = torch.compile(opt.step) if variant.compile_opt else opt.step
    x, y = random_batch(cfg, device)

    loss_of = lm_loss(fwd, device)

    def step() -> None:
        # the training loop's step (gptcore.step), one micro-batch
        train_step(
            loss_of,
            [(x, y)],
            opt,
            model.parameters(),
            TRAIN_PARAMS.grad_clip,
            device,
            variant.dtype,
            optimizer_step=opt_step,
        )

    return step, flops_per_token(config, model.num_params())


def load_reference(path: Path) -> ModuleType:
    """nanoGPT's model.py under a name of its own, so it cannot clash with anything imported."""
    spec = importlib.util.spec_from_file_location("nanogpt_reference_model", path / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass looks up the defining module here
    spec.loader.exec_module(module)
    return module


def reference_commit(path: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def reference_step(nanogpt: ModuleType, cfg: dict, device: torch.device) -> tuple[Step, int]:
    """One step as nanoGPT's train.py takes it on CPU: fp32, eager, clip 1.0, its AdamW groups."""
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints parameter counts and AdamW choice
        model = nanogpt.GPT(nanogpt.GPTConfig(**shape(cfg), bias=False)).to(device)
        # device_type picks its AdamW as its train.py would on this device (fused on CUDA only)
        opt = model.configure_optimizers(
            weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.99), device_type=device.type
        )
    x, y = random_batch(cfg, device)

    def step() -> None:
        logits, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    # same shape and same N (its head is tied too), so gptcore's arithmetic applies
    return step, flops_per_token(GPTConfig(**shape(cfg)), model.get_num_params())


def warm_up(build: Callable[[], tuple[Step, int]], device: torch.device) -> Prepared:
    """Build a variant and take two steps, where compilation and allocator warm-up happen."""
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if on_cuda else 0
    start = clock(device)
    step, fpt = build()
    step()
    step()
    warm = clock(device) - start
    mem = (torch.cuda.max_memory_allocated(device) - before) / 2**30 if on_cuda else None
    return Prepared(step, warm, fpt, mem)


def matmul_peak(dtype: torch.dtype, device: torch.device, budget_s: float = 15.0, reps: int = 20) -> Peak:
    """FLOP/s of a (4n x n) @ (n x n) product at the target n, grown from n = 128 so that a dtype
    this device runs pathologically slowly (fp16 on some CPUs: minutes for one 4096x1024x1024
    product) is reported as slow after about `budget_s` instead of hanging the benchmark."""
    target = 4096 if device.type == "cuda" else 1024  # a GPU needs larger products to reach its peak
    n = 128
    while True:
        a = torch.randn(4 * n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        if n < target:
            a @ b  # the first product of a shape also creates its kernel: not what it costs
            start = clock(device)
            a @ b
            seconds = clock(device) - start
            # the next size costs 8x a product, twice; at the target, 3 warm-up products and `reps`
            if seconds * 8 * (3 + reps if 2 * n == target else 2) > budget_s:
                return Peak(2 * 4 * n**3 / seconds, n, complete=False)
            n *= 2
            continue
        for _ in range(3):
            a @ b
        start = clock(device)
        for _ in range(reps):
            a @ b
        return Peak(2 * 4 * n**3 * reps / (clock(device) - start), n, complete=True)


class Peak(NamedTuple):
    flops: float
    n: int  # the product was (4n x n) @ (n x n)
    complete: bool  # False: stopped at a smaller n, as the target size would outlast the budget

    def describe(self) -> str:
        text = f"{self.flops / 1e9:,.1f} GFLOP/s"
        if not self.complete:
            text += f" (slow: stopped at {4 * self.n}x{self.n}x{self.n}, the full size would outlast the time bound)"
        return text


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def default_config() -> dict:
    """The default run's model and batch from params.yaml (vocabulary: vocab.vocab_size)."""
    vocab = load_section("vocab", ROOT / "params.yaml")
    return {k: getattr(TRAIN_PARAMS, k) for k in (*DEFAULT_KEYS, *FAMILY_KEYS)} | {
        "vocab_size": vocab.vocab_size,
        "steps": 20,
    }


def auto_variant(cfg: dict, device: torch.device) -> tuple[str, Variant]:
    """What `train.dtype`, `train.compile` and `train.attention: auto` pick for this config on this
    machine: read from gptcore's cache, or timed now (and cached) as a training run would."""
    params = dataclasses.replace(
        TRAIN_PARAMS,
        **{k: cfg[k] for k in DEFAULT_KEYS},
        dtype="auto",
        compile="auto",
        attention="auto",
        optimizer="adamw",
        grad_accum_steps=1,
        nproc_per_node=1,
        nnodes=1,
    )
    decision = decide(params, gptcore_config(cfg), device, cfg["batch_size"])
    print(f"auto for this config ({params.max_iters} steps): {decision.summary(params.max_iters)}")
    choice = decision.choice
    name = f"auto: {choice.describe()}"
    return name, Variant(
        "default" if choice.compile else None, choice.autocast_dtype, True, attention=choice.attention
    )


def selected_variants(spec: str | None, cname: str, device: torch.device) -> list[str]:
    names = [*VARIANTS, AUTO]
    if spec is None:
        return [GPU_RECIPE] if cname == "gpt2" and device.type == "cuda" else names
    return [names[int(i) - 1] for i in spec.split(",")]


def time_rounds(
    prepared: dict[str, Prepared], cfg: dict, rounds: int, device: torch.device
) -> dict[str, float]:
    """Median tokens/s of each variant over the rounds, variants interleaved within a round."""
    tokens = cfg["steps"] * cfg["batch_size"] * cfg["block_size"]
    rates: dict[str, list[float]] = {name: [] for name in prepared}
    for _ in range(rounds):
        for name, p in prepared.items():
            start = clock(device)
            for _ in range(cfg["steps"]):
                p.step()
            rates[name].append(tokens / (clock(device) - start))
    return {name: statistics.median(r) for name, r in rates.items()}


def print_table(
    rates: dict[str, float],
    prepared: dict[str, Prepared],
    failed: dict[str, str],
    fp32_peak: float | None,
    peak_flops: float | None,
    device: torch.device,
) -> None:
    on_cuda = device.type == "cuda"
    head = f"{'variant':36s} {'tokens/s':>9s} {'ratio':>6s} {'GFLOP/s':>8s}"
    if fp32_peak is not None:
        head += f" {'%fp32pk':>7s}"
    head += f" {'MFU':>6s} {'warm-up s':>9s}"
    if on_cuda:
        head += f" {'mem GiB':>7s}"
    print(head)
    base = next(iter(rates.values()), None)
    for name, rate in rates.items():
        p = prepared[name]
        flops = rate * p.flops_per_token
        row = f"{name:36s} {rate:9,.0f} {rate / base:6.2f} {flops / 1e9:8.1f}"
        if fp32_peak is not None:
            row += f" {flops / fp32_peak:7.1%}"
        row += f" {flops / peak_flops:6.1%}" if peak_flops else f" {'n/a':>6s}"
        row += f" {p.warm_up_s:9.1f}"
        if on_cuda:
            row += f" {p.mem_gib:7.2f}"
        print(row)
    for name, error in failed.items():
        print(f"{name:36s} failed: {error}")


def run_config(
    cname: str,
    cfg: dict,
    builders: dict[str, Callable[[], tuple[Step, int]]],
    rounds: int,
    device: torch.device,
    fp32_peak: float | None,
    peak_flops: float | None,
) -> None:
    prepared: dict[str, Prepared] = {}
    failed: dict[str, str] = {}
    for name, build in builders.items():
        try:
            prepared[name] = warm_up(build, device)
        # a benchmark of optional levers: one that does not work here (an Inductor or
        # compiled-optimizer error) is a result to report, not a reason to lose the others
        except Exception as exc:
            first_line = (str(exc).strip().splitlines() or [""])[0]
            failed[name] = f"{type(exc).__name__}: {first_line[:200]}"
    rates = time_rounds(prepared, cfg, rounds, device)
    print(f"\n{cname}: {cfg}")
    if rates:
        print(f"ratios against: {next(iter(rates))}")
    print_table(rates, prepared, failed, fp32_peak, peak_flops, device)
    # the next config compiles the same forward again: start it from empty caches rather than
    # from a recompile budget spent on this config's entries
    torch.compiler.reset()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--config", choices=[*CONFIGS, "default", "all"], default="all", help="all = tiny, default and small"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, help="optimizer steps per variant per round")
    ap.add_argument("--batch-size", type=int, help="override the config's batch size")
    ap.add_argument("--variants", help="comma-separated variant numbers (1-based); default all")
    ap.add_argument("--list", action="store_true", help="print the numbered variants and exit")
    ap.add_argument("--reference", type=Path, help="a karpathy/nanoGPT checkout, timed as the first row")
    ap.add_argument("--device", type=torch.device, default=torch.device("cpu"))
    ap.add_argument("--threads", type=int, help="torch.set_num_threads at startup")
    ap.add_argument("--peak", action="store_true", help="also measure fp32, bf16 and fp16 matmul GFLOP/s")
    ap.add_argument("--peak-flops", type=float, help="peak FLOP/s for MFU (default: known GPUs only)")
    args = ap.parse_args()
    numbers = args.variants.split(",") if args.variants else []
    if not all(i.isdigit() and 1 <= int(i) <= len(VARIANTS) + 1 for i in numbers):
        ap.error(f"--variants takes numbers from 1 to {len(VARIANTS) + 1}, comma-separated")
    if args.reference and not (args.reference / "model.py").is_file():
        ap.error(f"--reference {args.reference}: no model.py there")
    return args


def main() -> None:
    args = parse_args()
    if args.list:
        for i, name in enumerate([*VARIANTS, AUTO], 1):
            print(f"{i} {name}")
        print(f"with --reference PATH, first: {REFERENCE}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    name = device_name(device)
    peak_flops = args.peak_flops or gpu_bf16_peak(name)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device} ({name})")
    print(f"MFU against {peak_flops / 1e9:,.0f} GFLOP/s" if peak_flops else "MFU: n/a (no --peak-flops)")
    peaks = {}
    if args.peak:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            runs = [matmul_peak(dtype, device)]
            if runs[0].complete:  # a slow dtype is measured once: its figure is already bounded
                runs += [matmul_peak(dtype, device) for _ in range(2)]
            peak = sorted(runs)[len(runs) // 2]
            peaks[dtype] = peak.flops
            print(f"matmul peak {dtype}: {peak.describe()}")
    nanogpt = None
    if args.reference:
        nanogpt = load_reference(args.reference)
        print(f"reference: nanoGPT at {args.reference}, commit {reference_commit(args.reference)}")
    for cname in ("tiny", "default", "small") if args.config == "all" else [args.config]:
        cfg = default_config() if cname == "default" else dict(CONFIGS[cname])
        cfg["steps"] = args.steps or cfg["steps"]
        cfg["batch_size"] = args.batch_size or cfg["batch_size"]
        builders: dict[str, Callable[[], tuple[Step, int]]] = {}
        if nanogpt:
            builders[REFERENCE] = partial(reference_step, nanogpt, cfg, device)
        for vname in selected_variants(args.variants, cname, device):
            if vname == AUTO:
                label, variant = auto_variant(cfg, device)
                builders[label] = partial(gptcore_step, cfg, variant, device)
            else:
                builders[vname] = partial(gptcore_step, cfg, VARIANTS[vname], device)
        run_config(cname, cfg, builders, args.rounds, device, peaks.get(torch.float32), peak_flops)


if __name__ == "__main__":
    main()
