"""What a gptcore process costs before it does any work: the wall time of fresh Python processes
that import the CLI, load a model file, or import the train stage, median of N, and whether each
loaded torch's compiler (torch._dynamo) on the way.

Every stage and every `gptcore` command is such a process, and the test suite starts hundreds, so
a second here is a second of every `dvc repro` stage and of `gptcore chat`'s first prompt.

    python benchmarks/startup.py                      # this tree, 5 runs each
    python benchmarks/startup.py --code . OTHER_TREE  # and another checkout's, alternated: an A/B
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# a model file of the default's shape (llama, 4 layers of width 256, block 128), char vocabulary
SAVE = """
import sys
from gptcore.checkpoint import save_model
from gptcore.model import GPT, GPTConfig
from gptcore.tokenizer import CharTokenizer
tokenizer = CharTokenizer.train(["the quick brown fox jumps over the lazy dog"])
config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=128, n_layer=4, n_head=4, n_embd=256, arch="llama")
save_model(sys.argv[1], GPT(config), tokenizer)
"""

CASES = {
    "import the CLI": "import gptcore.cli",
    "load a model file": "from gptcore.checkpoint import load_model; load_model(sys.argv[1])",
    "import the train stage": "import stages.train",
}


def once(code: Path, statement: str, model: Path) -> tuple[float, bool]:
    script = f"import sys\n{statement}\nprint('torch._dynamo' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script, str(model)], cwd=code, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{statement!r} failed:\n{done.stderr}")
    return seconds, done.stdout.strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--code",
        type=Path,
        nargs="+",
        default=[ROOT],
        help="trees whose gptcore/ and stages/ run, alternated",
    )
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cases = {"import torch": "import torch", **CASES}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.pt"
        env = {**os.environ, "PYTHONPATH": str(args.code[0])}
        subprocess.run([sys.executable, "-c", SAVE, str(model)], cwd=args.code[0], env=env, check=True)
        once(args.code[0], "import torch", model)  # warm the file cache
        # round by round, each tree and case in turn: a busy spell slows every tree alike
        times: dict[tuple[Path, str], list[float]] = {
            (code, name): [] for code in args.code for name in cases
        }
        dynamo: dict[tuple[Path, str], bool] = {}
        for _ in range(args.runs):
            for code in args.code:
                for name, statement in cases.items():
                    seconds, dynamo[code, name] = once(code, statement, model)
                    times[code, name].append(seconds)
        for code in args.code:
            print(f"{code} (median of {args.runs} fresh processes)")
            for name in cases:
                median = statistics.median(times[code, name])
                print(f"  {name:24} {median:6.2f} s   torch._dynamo loaded: {dynamo[code, name]}")


if __name__ == "__main__":
    main()
