"""`gptcore serve` under load: tokens/s and time to first token at 1, 4 and 16 concurrent streams.

Two servers run side by side (`gptcore serve` subprocesses on loopback ports, one torch thread
each unless --threads says otherwise), on the same model:

  batched       --max-batch 16: every live request gets its token from one forward pass per step
  one at a time --max-batch 1:  requests are generated in turn, the others wait (the baseline)

First, without HTTP, the two ways a server can serve N streams at once are timed in this process
on the same model: N threads each running `gptcore.generate.generate` (interleaving), and the
engine `gptcore serve` uses (one batched forward pass per step for all N); the table gives the
new tokens/s of each and their ratio, medians over rounds.

Each round then sends N streaming completions at once (`stream: true`, `--tokens` new tokens each,
temperature 0.8, top-k 50, a 20-token prompt) to each server in turn, from N client threads.
Reported per server and N: aggregate new tokens/s (all streams' tokens over the round's wall
time), time to first token (from sending a request to its first chunk; median and worst over
all requests of all rounds), and the batched / one-at-a-time ratio of tokens/s within the run.

The model is the default shape (params.yaml: 4 layers, 4 heads, 256 wide, block 128, a
1,024-token BPE vocabulary) with random weights, unless --model gives a trained model file:
speed does not depend on what the weights say. Its tokenizer is a BPE learned here from
generated text, only so the vocabulary has the default size.

    python benchmarks/serve_speed.py
    python benchmarks/serve_speed.py --model models/model.pt --tokens 300 --rounds 5
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from gptcore.checkpoint import load_model, save_model
from gptcore.generate import generate, seeded_generator
from gptcore.model import GPT, GPTConfig
from gptcore.sampling import Sampling
from gptcore.serve.batcher import Engine
from gptcore.tokenizer import BpeTokenizer

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The quick brown fox jumps over the lazy dog while the"  # about 20 tokens


def default_model(path: Path) -> None:
    rng = random.Random(0)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(2, 9)))
        for _ in range(3000)
    ]
    text = " ".join(rng.choice(words) for _ in range(60_000))
    tokenizer = BpeTokenizer.train([text], 1024)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=4, n_head=4, n_embd=256)
    save_model(path, GPT(config), tokenizer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, max_batch: int, threads: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    args = [
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--max-batch",
        str(max_batch),
    ]
    args += ["--threads", str(threads), "--name", "bench"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcore.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server (max_batch {max_batch}) did not come up")


def one_stream(port: int, tokens: int, seed: int, out: list) -> None:
    """Send one streaming completion; append (seconds to first text, seconds to the end, new tokens)."""
    body = {
        "model": "bench",
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0.8,
        "top_k": 50,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request(
        "POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    response = conn.getresponse()
    first, used = None, 0
    for line in response:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        chunk = json.loads(line[6:])
        if chunk["choices"] and first is None:  # the first text (or the end, had it none)
            first = time.perf_counter() - start
        if chunk.get("usage"):
            used = chunk["usage"]["completion_tokens"]
    end = time.perf_counter() - start
    out.append((first if first is not None else end, end, used))
    conn.close()


def round_of(port: int, streams: int, tokens: int, seed: int) -> tuple[float, list[float]]:
    """(aggregate new tokens/s, times to first token) of `streams` requests sent at once."""
    results: list = []
    threads = [
        threading.Thread(target=one_stream, args=(port, tokens, seed + i, results)) for i in range(streams)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return sum(r[2] for r in results) / wall, [r[0] for r in results]


def in_process(model_file: Path, streams: int, tokens: int) -> tuple[float, float]:
    """(threads tokens/s, engine tokens/s) for `streams` generations of `tokens` tokens, in this process."""
    model, tokenizer, _ = load_model(model_file)
    prompt = tokenizer.encode(PROMPT)

    threads_each = torch.get_num_threads()
    # stream i's settings: the same for both ways, but for its seed
    sampling = [Sampling(temperature=0.8, top_k=50, max_new_tokens=tokens, seed=i) for i in range(streams)]

    def run(i: int) -> None:
        torch.set_num_threads(threads_each)  # a new thread starts with OpenMP's default team
        idx = torch.tensor([prompt])
        generate(model, idx, sampling[i], generator=seeded_generator(sampling[i]), eot_id=None)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    threaded = streams * tokens / (time.perf_counter() - start)
    engine = Engine(model, eot_id=-1, max_batch=16)  # an id never drawn: every stream runs to its end
    start = time.perf_counter()
    outs = [engine.submit(prompt, sampling[i]) for i in range(streams)]
    drawn = sum(len(list(out)) for out in outs)
    batched = drawn / (time.perf_counter() - start)
    engine.shutdown()
    return threaded, batched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a model file (default: random weights of the default shape)")
    ap.add_argument("--tokens", type=int, default=200, help="new tokens per stream (default: %(default)s)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds per server and concurrency (default: %(default)s)"
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads of each server (default: %(default)s)"
    )
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "model.pt"
            default_model(model)
        what = (
            str(args.model) if args.model else "random weights, default shape 4/4/256, block 128, vocab 1024"
        )
        print(
            f"model: {what}; {args.tokens} new tokens per stream; {args.rounds} rounds; {args.threads} thread(s)"
        )
        servers = {
            "batched": start_server(model, 16, args.threads),
            "one at a time": start_server(model, 1, args.threads),
        }
        try:
            print(
                f"{'in process':14s} {'streams':>7s} {'threads tok/s':>14s} {'engine tok/s':>13s} {'ratio':>6s}"
            )
            torch.set_num_threads(args.threads)
            sys.setswitchinterval(0.0005)  # the GIL switch interval `gptcore serve` sets (see serve.py)
            in_process(model, 2, 20)  # warm-up: first calls allocate
            for streams in args.streams:
                pairs = [in_process(model, streams, args.tokens) for _ in range(args.rounds)]
                threaded = statistics.median(p[0] for p in pairs)
                batched = statistics.median(p[1] for p in pairs)
                print(f"{'':14s} {streams:7d} {threaded:14.0f} {batched:13.0f} {batched / threaded:5.2f}x")
            for _, port in servers.values():  # warm both up (first calls allocate and JIT-free paths settle)
                round_of(port, 2, 20, 0)
            rates: dict = {}
            ttfts: dict = {}
            for streams in args.streams:
                for r in range(args.rounds):
                    for name, (_, port) in servers.items():  # servers alternate round by round
                        rate, firsts = round_of(port, streams, args.tokens, seed=1000 * r)
                        rates.setdefault((name, streams), []).append(rate)
                        ttfts.setdefault((name, streams), []).extend(firsts)
            print(
                f"{'server':14s} {'streams':>7s} {'tokens/s':>9s} {'TTFT median':>12s} {'TTFT worst':>11s} {'vs one at a time':>17s}"
            )
            for streams in args.streams:
                base = statistics.median(rates[("one at a time", streams)])
                for name in servers:
                    rate = statistics.median(rates[(name, streams)])
                    firsts = ttfts[(name, streams)]
                    print(
                        f"{name:14s} {streams:7d} {rate:9.0f} {statistics.median(firsts) * 1e3:10.0f}ms "
                        f"{max(firsts) * 1e3:9.0f}ms {rate / base:16.2f}x"
                    )
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
