"""The Hugging Face round trip, measured: export and load times, the largest logit difference,
greedy generations, and the exported tokenizer's ids against gptcore's over a whole corpus.

Model: `--model` (a trained models/model.pt), or, without one, random weights of params.yaml's
shape and arch over data/vocab's vocabulary (times and differences do not depend on what the
weights say). Each time is the median of `--rounds` runs:

- export: `gptcore.hf.convert.export_folder` (config.json, model.safetensors, tokenizer files);
- load (transformers): `AutoModelForCausalLM.from_pretrained` + `AutoTokenizer.from_pretrained`;
- load (gptcore): `gptcore.hf.convert.load_folder`, the path `gptcore chat --model <folder>` takes.

Parity: logits of transformers and gptcore on `--windows` windows of block_size ids from the val
split (fp32, max abs difference), and 50-token greedy generations from each window's first 8 ids.

Tokenizer: every document of data/split/{train,val}.jsonl.zst encoded by the exported fast
tokenizer as `doc + "<|endoftext|>"` against gptcore's `encode(doc) + [eot]` (what the tokenize
stage writes); it prints the documents and tokens compared and the documents that differ.

`--gpt2-124m` instead measures the import side at GPT-2's real size: a randomly initialised
GPT2LMHeadModel of GPT-2 124M's config (its weights cannot be fetched here) saved by transformers,
read by `gptcore.hf.convert.read_folder` (median time), and both models' logits on 2 x 128 ids.

    dvc repro build_vocab   # data/split and data/vocab
    python benchmarks/hf_roundtrip.py
    python benchmarks/hf_roundtrip.py --model models/model.pt --rounds 5
    python benchmarks/hf_roundtrip.py --gpt2-124m
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
from gptcore.data.split import iter_split_file
from gptcore.hf.convert import export_folder, load_folder, read_folder
from gptcore.model import GPT
from gptcore.params import load_section
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
    parser.add_argument("--gpt2-124m", action="store_true", help="time importing a GPT-2 124M-shaped folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.gpt2_124m:
        gpt2_124m(args.rounds)
        return

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


def gpt2_124m(rounds: int) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()  # GPT-2 124M's shape: 12 x 768, 1024 positions
    with torch.no_grad():  # GPT-2's biases are not zero: make these not zero either
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.02)
    folder = Path(tempfile.mkdtemp()) / "gpt2"
    hf.save_pretrained(folder)
    seconds = median_seconds(lambda: read_folder(folder), rounds)
    config, state = read_folder(folder)
    model = GPT(config)
    state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state)
    idx = torch.randint(config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model.eval()(idx)[0] - hf(idx).logits).abs().max().item()
    print(f"GPT-2 124M shape: {model.num_params(non_embedding=False):,} parameters, {config}")
    print(f"read_folder: {seconds * 1000:.0f} ms (median of {rounds}); max |logit difference| {diff:.2e}")


if __name__ == "__main__":
    main()
