"""What `train.dtype/compile/attention: auto` costs a run on a fresh machine: the search's wall time
with empty caches (gptcore's decision cache and Inductor's compiled-kernel cache), against the run
it decides for, and what the run's own first steps then cost (a compiled winner's graphs are reused,
so its first step does not compile again).

Each measurement is a fresh Python process with its own empty cache folders, timing
`gptcore.autotune.decide` for the train section of params.yaml (or `-S key=value` overrides), then
three steps of the run as `gptcore.train` prepares it with the chosen precision. `--variant
unpruned` times the same search with the cheap rule-outs (RULE_OUT, SLOW_START), settled-step
stopping and the compiled probe's reuse switched off: the search as it was before they existed.

    python benchmarks/autotune_cost.py                              # pruned, 3 repeats
    python benchmarks/autotune_cost.py --variant pruned unpruned --repeats 1
    python benchmarks/autotune_cost.py -S n_layer=2 -S n_embd=128
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import dataclasses, json, math, sys, time
import torch
from gptcore import autotune
from gptcore.distributed import Ranks, prepare
from gptcore.model import GPT
from gptcore.params import load_section
from gptcore.step import lm_loss, train_step
from gptcore.train import model_config

variant, overrides, vocab_size = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
params = load_section("train")
if overrides:
    params = dataclasses.replace(params, **overrides)
if params.threads:
    torch.set_num_threads(params.threads)
torch.use_deterministic_algorithms(True)  # as gptcore.train sets it on a CPU
device = torch.device("cpu")
config = model_config(params, vocab_size)
if variant == "unpruned":
    autotune.RULE_OUT = autotune.SLOW_START = math.inf
    autotune.SETTLED_STEPS = autotune.TIMED_STEPS + 1
    real_decide = autotune.decide
    def decide(*args, **kwargs):
        out = real_decide(*args, **kwargs)
        torch.compiler.reset()  # the old probe dropped its compiled graphs, win or lose
        return out
    autotune.decide = decide
began = time.perf_counter()
decision = autotune.decide(params, config, device, params.batch_size)
search = time.perf_counter() - began
choice = decision.choice
torch.manual_seed(0)
model = GPT(config)
model.attention = choice.attention
model.train()
prepared = prepare(model, params, device, Ranks(), choice.autocast_dtype, choice.compile)
gen = torch.Generator().manual_seed(0)
x, y = (torch.randint(0, vocab_size, (params.batch_size, params.block_size), generator=gen) for _ in range(2))
loss_of = lm_loss(prepared.train_forward, device)
steps = []
for _ in range(3):
    t0 = time.perf_counter()
    train_step(loss_of, [(x, y)] * params.grad_accum_steps, prepared.optimizer, model.parameters(),
               params.grad_clip, device, choice.autocast_dtype, ddp=prepared.ddp)
    steps.append(time.perf_counter() - t0)
timed = next(t for t in decision.timings if t.choice == choice)
print(json.dumps({
    "search_seconds": search,
    "choice": choice.describe(),
    "run_seconds": timed.run_seconds(params.max_iters),
    "max_iters": params.max_iters,
    "first_steps": steps,
    "summary": decision.summary(params.max_iters),
}))
"""


def parse_override(text: str) -> tuple[str, object]:
    """`key=value`: the value as JSON (2, 1.0e-3, true, null) where it is, else the text."""
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def measure(variant: str, overrides: dict[str, object], vocab_size: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as cache:
        env = {
            **os.environ,
            "GPTCORE_CACHE_DIR": os.path.join(cache, "gptcore"),
            "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
        }
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, variant, json.dumps(overrides), str(vocab_size)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", nargs="+", default=["pruned"], choices=["pruned", "unpruned"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=1024, help="the vocabulary (default: bpe-1024's)")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="train.<key>=<value>")
    args = parser.parse_args()
    overrides = dict(parse_override(o.removeprefix("train.")) for o in args.overrides)
    print(f"torch threads: {overrides.get('threads', 'params.yaml')}, overrides: {overrides or 'none'}")
    for variant in args.variant:
        results = [measure(variant, overrides, args.vocab_size) for _ in range(args.repeats)]
        last = results[-1]
        print(f"\n{variant}: {last['summary']}")
        searches = [float(r["search_seconds"]) for r in results]  # type: ignore[arg-type]
        run = statistics.median(float(r["run_seconds"]) for r in results)  # type: ignore[arg-type]
        first = statistics.median(float(r["first_steps"][0]) for r in results)  # type: ignore[index]
        later = statistics.median(float(r["first_steps"][2]) for r in results)  # type: ignore[index]
        print(
            f"{variant}: search {statistics.median(searches):.1f} s median of {len(searches)} "
            f"({', '.join(f'{s:.1f}' for s in searches)}); the chosen run of {last['max_iters']} steps "
            f"~{run:.0f} s: the search is {100 * statistics.median(searches) / run:.1f}% of it; "
            f"the run's first step {first:.2f} s, its third {later:.2f} s"
        )


if __name__ == "__main__":
    main()
