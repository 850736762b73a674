"""Generation speed of llama.cpp on a GGUF export against `gptcore sample`'s, on the same CPU.

The model is a trained model file (default: models/model.pt, the pipeline's model). It is
exported to GGUF at each --dtype (the export's time and size are printed), then both runtimes
complete the same prompt greedily (temperature 0, so both produce the same tokens; the
`same` column checks it) for --tokens new tokens:

  gptcore    gptcore.generate.complete, what `gptcore sample` runs after loading the model
  llama.cpp  llama-cpp-python's create_completion on the exported file (the prompt's tokens
             included in the time, as gptcore's are)

Agreement, once per dtype: the largest logit difference and the mean log-likelihood per token
of the first document of the val split (data/split/val.jsonl.zst, text the model never trained
on; its first context's worth of tokens), llama.cpp's against gptcore's.

Each figure is the median over --rounds rounds of new tokens / wall time; within a round the
runtimes alternate, and the ratio is llama.cpp's rate over gptcore's from the same run. Torch
and llama.cpp get the same number of threads (--threads, each value in turn).

    python benchmarks/gguf_speed.py
    python benchmarks/gguf_speed.py --threads 1 2 --tokens 100 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import llama_cpp
import numpy as np
import torch

from gptcore.checkpoint import load_model
from gptcore.data.split import iter_split_file
from gptcore.generate import complete, generate
from gptcore.hf.gguf import DTYPES, export_gguf
from gptcore.model import GPT
from gptcore.sampling import Sampling
from gptcore.tokenizer import Tokenizer


def gptcore_rate(model: GPT, tokenizer: Tokenizer, prompt: str, new: int) -> tuple[float, list[int]]:
    """New tokens/s of `gptcore sample`'s generation, and the tokens (untimed: for `same`)."""
    greedy = Sampling(temperature=0.0, max_new_tokens=new)
    start = time.perf_counter()
    complete(model, tokenizer, prompt, greedy)
    elapsed = time.perf_counter() - start
    ids = tokenizer.encode(prompt)
    tokens = generate(model, torch.tensor([ids]), greedy, eot_id=tokenizer.eot_id)[0, len(ids) :].tolist()
    return len(tokens) / elapsed, tokens


def llama_rate(llm: llama_cpp.Llama, prompt: str, new: int) -> tuple[float, list[int]]:
    """New tokens/s of llama.cpp's completion of `prompt`, and the tokens (untimed)."""
    start = time.perf_counter()
    out = llm.create_completion(prompt, max_tokens=new, temperature=0.0, repeat_penalty=1.0)
    elapsed = time.perf_counter() - start
    count = out["usage"]["completion_tokens"]  # type: ignore[index]
    return count / elapsed, greedy_ids(
        llm, llm.tokenize(prompt.encode(), add_bos=False, special=False), count
    )


def greedy_ids(llm: llama_cpp.Llama, prompt: list[int], count: int) -> list[int]:
    """The `count` tokens llama.cpp's greedy decoding adds to `prompt` (untimed: for `same`)."""
    out: list[int] = []
    for token in llm.generate(prompt, temp=0.0, repeat_penalty=1.0, reset=True):
        if token == llm.token_eos() or len(out) == count:
            break
        out.append(token)
    return out


def agreement(model: GPT, path: Path, ids: list[int]) -> tuple[float, float, float]:
    """Largest |logit difference|, and mean log-likelihood per token, gptcore's and llama.cpp's."""
    targets = torch.tensor(ids[1:])[:, None]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0, :-1]
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(ids), n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = torch.from_numpy(np.array(llm.scores[: len(ids) - 1], dtype=np.float32))
    llm.close()
    ll = [torch.log_softmax(x, dim=-1).gather(1, targets).mean().item() for x in (ours, theirs)]
    return (ours - theirs).abs().max().item(), ll[0], ll[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/model.pt"))
    ap.add_argument("--prompt", default="**ROMEO**")
    ap.add_argument("--tokens", type=int, default=100, help="new tokens (prompt + new within the context)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES))
    ap.add_argument("--val", type=Path, default=Path("data/split/val.jsonl.zst"))
    args = ap.parse_args()

    model, tokenizer, _ = load_model(args.model)
    config = model.config
    print(
        f"torch {torch.__version__}, llama-cpp-python {llama_cpp.__version__}, {os.cpu_count()} CPUs; "
        f"{args.model}: {config.arch} {config.n_layer}x{config.n_embd}, vocab {config.vocab_size}, "
        f"context {config.block_size}; prompt {args.prompt!r}, {args.tokens} new tokens, greedy"
    )
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for dtype in args.dtype:
            start = time.perf_counter()
            done = export_gguf(model, tokenizer, Path(tmp) / f"{dtype}.gguf", dtype=dtype)
            files[dtype] = done.path
            print(f"export {dtype:5s} {time.perf_counter() - start:6.2f} s  {done.bytes / 2**20:6.1f} MiB")
        document = next(iter_split_file(args.val))
        held_out = tokenizer.encode(document.text)[: config.block_size]
        print(f"agreement on {args.val} {document.name!r}, {len(held_out)} tokens:")
        for dtype, path in files.items():
            diff, ours, theirs = agreement(model, path, held_out)
            print(
                f"  {dtype:5s} max |logit diff| {diff:.2e}  log-likelihood per token gptcore {ours:.4f} "
                f"llama.cpp {theirs:.4f} ({abs(theirs - ours) / abs(ours):.2%} apart)"
            )
        print(f"{'threads':>7s} {'runtime':18s} {'tok/s':>8s} {'vs gptcore':>10s}  same tokens")
        for threads in args.threads:
            torch.set_num_threads(threads)
            llms = {}
            for dtype, path in files.items():
                llms[dtype] = llama_cpp.Llama(
                    model_path=str(path), n_ctx=config.block_size, n_threads=threads, verbose=False
                )
            gptcore_rate(model, tokenizer, args.prompt, 8)  # warm-up
            for llm in llms.values():
                llama_rate(llm, args.prompt, 8)
            rates: dict[str, list[float]] = {"gptcore": [], **{d: [] for d in llms}}
            tokens: dict[str, list[int]] = {}
            for _ in range(args.rounds):
                rate, tokens["gptcore"] = gptcore_rate(model, tokenizer, args.prompt, args.tokens)
                rates["gptcore"].append(rate)
                for dtype, llm in llms.items():
                    rate, tokens[dtype] = llama_rate(llm, args.prompt, args.tokens)
                    rates[dtype].append(rate)
            ours = statistics.median(rates["gptcore"])
            print(
                f"{threads:7d} {'gptcore sample':18s} {ours:8,.0f} {1.0:10.2f}  ({len(tokens['gptcore'])} tokens)"
            )
            for dtype, llm in llms.items():
                rate = statistics.median(rates[dtype])
                same = tokens[dtype] == tokens["gptcore"]
                print(f"{threads:7d} {'llama.cpp ' + dtype:18s} {rate:8,.0f} {rate / ours:10.2f}  {same}")
                llm.close()


if __name__ == "__main__":
    main()
