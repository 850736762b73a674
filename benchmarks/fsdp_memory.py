"""The parameter and optimizer bytes one process holds under FSDP against DDP, measured by the train stage.

After its first optimizer step, the train stage logs what this process holds, summed over the
tensors themselves (`train: held by this process: P bytes of parameters, S of optimizer state`).
This script runs the stage (`python -m stages.train`, which starts torchrun for 2 processes, gloo
on CPU) twice in throwaway workspaces, with `train.parallel: ddp` and then `fsdp`, on the repo's
params.yaml with a small model (`--layers`, `--width`; 4 x 128 by default, fp32, eager, AdamW)
for 2 steps, on the repo's data/vocab and data/tokens (`dvc repro tokenize` writes them), and
prints both lines and the FSDP / DDP ratios. Sharding halves both over 2 processes, a little over
half where a shard is padded to whole rows.

    python benchmarks/fsdp_memory.py
    python benchmarks/fsdp_memory.py --layers 6 --width 384 --processes 2
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
HELD = re.compile(r"held by this process: ([\d,]+) bytes of parameters, ([\d,]+) of optimizer state")


def run_stage(work: Path, parallel: str, args: argparse.Namespace) -> tuple[int, int]:
    ws = work / parallel
    (ws / "data").mkdir(parents=True)
    for name in ("vocab", "tokens"):
        shutil.copytree(REPO / "data" / name, ws / "data" / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["train"].update(
        preset=None,
        n_layer=args.layers,
        n_head=args.heads,
        n_embd=args.width,
        block_size=64,
        batch_size=4 * args.processes,
        grad_accum_steps=1,
        max_iters=2,
        warmup_iters=1,
        eval_interval=2,
        eval_iters=1,
        log_interval=1,
        checkpoint_interval=0,
        dtype="float32",
        compile=False,
        attention="sdpa",
        threads=1,
        device="cpu",
        nproc_per_node=args.processes,
        parallel=parallel,
    )
    (ws / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.train"],
        cwd=ws,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    found = HELD.search(proc.stdout)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"the {parallel} run failed (exit {proc.returncode}):\n{proc.stdout}")
    print(f"{parallel}: {found.group(0)}")
    return int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--processes", type=int, default=2, help="train.nproc_per_node")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ddp = run_stage(Path(tmp), "ddp", args)
        fsdp = run_stage(Path(tmp), "fsdp", args)
    print(f"parameters: {ddp[0] // 4:,} (fp32)")
    print(f"fsdp / ddp: parameters {fsdp[0] / ddp[0]:.4f}, optimizer state {fsdp[1] / ddp[1]:.4f}")


if __name__ == "__main__":
    main()
