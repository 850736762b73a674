"""The Hugging Face round trip, measured: export and load times, the largest logit difference,
greedy generations, and the exported tokenizer's ids against gptcore's over a whole corpus.

Model: `--model` (a trained models/model.pt), or, without one, random weights of params.yaml's
shape and arch over data/vocab's vocabulary (times and differences do not depend on what the
weights say). Each time is the median of `--rounds` runs:

- export: `gptcore.hf.export_folder` (config.json, model.safetensors, tokenizer files);
- load (transformers): `AutoModelForCausalLM.from_pretrained` + `AutoTokenizer.from_pretrained`;
- load (gptcore): `gptcore.hf.load_folder`, the path `gptcore chat --model <folder>` takes.

Parity: logits of transformers and gptcore on `--windows` windows of block_size ids from the val
split (fp32, max abs difference), and 50-token greedy generations from each window's first 8 ids.

Tokenizer: every document of data/split/{train,val}.jsonl.zst encoded by the exported fast
tokenizer as `doc + "<|endoftext|>"` against gptcore's `encode(doc) + [eot]` (what the tokenize
stage writes); it prints the documents and tokens compared and the documents that differ.

    dvc repro build_vocab   # data/split and data/vocab
    python benchmarks/hf_roundtrip.py
    python benchmarks/hf_roundtrip.py --model models/model.pt --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from gptcore.checkpoint import load_model
from gptcore.hf import export_folder, load_folder
from gptcore.model import GPT
from gptcore.params import load_section
from gptcore.split import iter_split_file
from gptcore.tokenizer import load_tokenizer
from gptcore.train import model_config


def median_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a gptcore model file (default: random weights)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--no-corpus", action="store_true", help="skip the whole-corpus tokenizer check")
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.model:
        model, tokenizer, _ = load_model(args.model)
        where = str(args.model)
    else:
        tokenizer = load_tokenizer("data/vocab")
        torch.manual_seed(0)
        model = GPT(model_config(load_section("train"), tokenizer.vocab_size)).eval()
        where = "random weights, params.yaml's shape"
    config = model.config
    print(f"model: {where}: arch {config.arch}, {model.num_params(non_embedding=False):,} parameters")

    folder = Path(tempfile.mkdtemp()) / "hf"
    export_s = median_seconds(lambda: export_folder(model, tokenizer, folder), args.rounds)
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"export: {export_s * 1000:.0f} ms (median of {args.rounds}), folder {size / 2**20:.1f} MiB")
    hf_s = median_seconds(
        lambda: (AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)),
        args.rounds,
    )
    ours_s = median_seconds(lambda: load_folder(folder), args.rounds)
    print(f"load: transformers {hf_s * 1000:.0f} ms, gptcore {ours_s * 1000:.0f} ms (medians)")

    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    val = [doc.text for doc in iter_split_file("data/split/val.jsonl.zst")]
    ids = torch.tensor(tokenizer.encode("".join(val))[: args.windows * config.block_size]).view(
        args.windows, -1
    )
    with torch.no_grad():
        diff = (hf(ids).logits - model(ids)[0]).abs().max().item()
        prompt = ids[:, :8]
        ours = prompt
        for _ in range(50):  # greedy, whole context each step: the plainest reference
            ours = torch.cat([ours, model(ours)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
        theirs = hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=50,
            do_sample=False,
            pad_token_id=tokenizer.eot_id,
        )
    same = sum(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    print(f"parity: max |logit difference| {diff:.2e} over {ids.numel():,} positions")
    print(f"greedy: {same}/{len(ours)} 50-token generations identical token for token")

    if args.no_corpus:
        return
    fast = AutoTokenizer.from_pretrained(folder)
    docs = tokens = differ = 0
    start = time.perf_counter()
    for split in ("train", "val"):
        for doc in iter_split_file(f"data/split/{split}.jsonl.zst"):
            expected = [*tokenizer.encode(doc.text), tokenizer.eot_id]
            got = fast(doc.text + "<|endoftext|>")["input_ids"]
            docs += 1
            tokens += len(expected)
            if got != expected:
                differ += 1
                print(f"  differs: {split} {doc.name}")
    print(
        f"tokenizer ({tokenizer.kind}, {tokenizer.vocab_size} ids): {docs} documents, {tokens:,} tokens, "
        f"{differ} documents differ ({time.perf_counter() - start:.1f} s)"
    )


if __name__ == "__main__":
    main()
