"""`gptcore serve` while one client floods it: the latency of another client's small requests and
of `/health`, and the server's memory, before, during and after the flood.

One `gptcore serve` subprocess (one torch thread, default flags) serves a tiny character-level
model made here (2 layers, 64 wide, block 64, random weights that never draw <|endoftext|>, so
every request runs to its max_tokens: what is measured is scheduling, not the model). Three
phases of --seconds each:

  before  the small client alone: a 10-token greedy completion, again and again, and GET /health
  during  the same, while one flooding client sends, back to back, one of:
            attack  the request that froze the landed server: 20,000 prompts x n 16 x 1 token
                    (a 200 KB body), which the bounded server refuses with a 400
            heavy   a request within the default limits that fills every slot: n 16 choices
                    of 500 tokens each, streamed and read to the end
  after   the flood stopped (waiting up to --settle seconds for the server to go idle), the
          small client alone again

Reported per phase: small-request latency p50 / p99 / worst and count (a request that times out,
--timeout, counts at its timeout), /health p50 / p99 (asked every 50 ms from a thread of its
own), and the server's resident memory (VmRSS) at the phase's end and its peak (sampled after
each small request). --repo serves another checkout of gptcore (the landed code, say, from
`git worktree add /tmp/serve_base HEAD`); its model is made with that checkout's own code,
since the file format may differ.

    python benchmarks/serve_flood.py --flood attack
    python benchmarks/serve_flood.py --flood heavy --repo /tmp/serve_base
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = {"model": "bench", "prompt": "ROMEO:", "max_tokens": 10, "temperature": 0.0}
FLOODS = {
    "attack": ({"model": "bench", "prompt": ["a"] * 20000, "n": 16, "max_tokens": 1}, False),
    "heavy": ({"model": "bench", "prompt": "a", "n": 16, "max_tokens": 500, "stream": True}, True),
}
MAKE_MODEL = """
import sys, torch
from gptcore.checkpoint import save_model
from gptcore.model import GPT, GPTConfig
from gptcore.tokenizer import CharTokenizer
text = "First Citizen:\\nBefore we proceed any further, hear me speak.\\nROMEO: JULIET:\\n"
tok = CharTokenizer.train([text])
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=64))
with torch.no_grad():  # as the tests' endless model: <|endoftext|> is never drawn
    model.wte.weight.mul_(300.0)
    model.wte.weight[tok.eot_id] = 0.0
save_model(sys.argv[1], model, tok)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict, timeout: float, stream: bool = False) -> int:
    """Send a completion and read the whole answer; its status (0: no answer within `timeout`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        if stream:
            for _ in response:
                pass
        else:
            response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def health(port: int, timeout: float) -> dict | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    except OSError:
        return None
    finally:
        conn.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(call, timeout: float) -> float:
    start = time.perf_counter()
    call()
    return min(time.perf_counter() - start, timeout)


def phase(port: int, pid: int, seconds: float, timeout: float) -> dict:
    """Over `seconds`: the small client's latencies, /health's (asked from its own thread, so a
    small request stuck in the server does not stop the checks), and the peak RSS."""
    small: list[float] = []
    checks: list[float] = []
    deadline = time.monotonic() + seconds

    def check() -> None:
        while time.monotonic() < deadline:
            checks.append(timed(lambda: health(port, timeout), timeout))
            time.sleep(0.05)

    checker = threading.Thread(target=check)
    checker.start()
    peak = rss_mb(pid)
    while time.monotonic() < deadline:
        small.append(timed(lambda: post(port, SMALL, timeout), timeout))
        peak = max(peak, rss_mb(pid))
    checker.join()
    return {"small": small, "health": checks, "rss": rss_mb(pid), "peak": max(peak, rss_mb(pid))}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flood", choices=sorted(FLOODS), default="attack")
    ap.add_argument(
        "--repo", type=Path, default=REPO, help="the gptcore checkout to serve (default: this one)"
    )
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=120.0, help="per request (default: %(default)s)")
    ap.add_argument(
        "--settle", type=float, default=180.0, help="wait for idle after the flood (default: %(default)s)"
    )
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.repo.resolve()), "OMP_NUM_THREADS": "1"}

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.pt"
        subprocess.run([sys.executable, "-c", MAKE_MODEL, str(model)], env=env, check=True)
        port = free_port()
        command = ["serve", "--model", str(model), "--port", str(port), "--device", "cpu"]
        command += ["--threads", "1", "--name", "bench"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "gptcore.cli", *command],
            env=env,
            cwd=tmp,  # no params.yaml: the request fields and plain defaults only
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while (h := health(port, 5)) is None or h.get("status") != "ok":
                if time.monotonic() > deadline:
                    raise SystemExit("the server did not come up")
                time.sleep(0.2)
            for _ in range(5):  # warm-up: first calls allocate
                post(port, SMALL, args.timeout)
            results = {"before": phase(port, proc.pid, args.seconds, args.timeout)}

            body, stream = FLOODS[args.flood]
            stop = threading.Event()
            statuses: list[int] = []

            def flood() -> None:
                while not stop.is_set():
                    statuses.append(post(port, body, args.timeout * 4, stream))

            flooder = threading.Thread(target=flood, daemon=True)
            flooder.start()
            time.sleep(1.0)  # the flood is under way
            results["during"] = phase(port, proc.pid, args.seconds, args.timeout)
            stop.set()
            flooder.join(timeout=args.settle)
            settled = time.monotonic() + args.settle
            while time.monotonic() < settled:
                h = health(port, 5)
                if h is not None and h.get("requests") == 0:
                    break
                time.sleep(0.5)
            time.sleep(2.0)
            results["after"] = phase(port, proc.pid, args.seconds, args.timeout)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "unknown",
    )
    print(
        f"repo {args.repo}; flood: {args.flood}; {args.seconds:g} s per phase; {os.cpu_count()} cores ({cpu})"
    )
    print(f"flood requests: {len(statuses)}, statuses {sorted(set(statuses))} (0: no answer in time)")
    print(
        f"{'phase':7s} {'small n':>7s} {'p50':>8s} {'p99':>8s} {'worst':>8s} "
        f"{'health p50':>11s} {'health p99':>11s} {'RSS MB':>7s} {'peak MB':>8s}"
    )
    for name, r in results.items():
        small, checks = r["small"], r["health"]
        print(
            f"{name:7s} {len(small):7d} {statistics.median(small) * 1e3:6.0f}ms {pct(small, 0.99) * 1e3:6.0f}ms "
            f"{max(small) * 1e3:6.0f}ms {statistics.median(checks) * 1e3:9.1f}ms {pct(checks, 0.99) * 1e3:9.1f}ms "
            f"{r['rss']:7.0f} {r['peak']:8.0f}"
        )


if __name__ == "__main__":
    main()
