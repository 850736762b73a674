"""Wall time of the default fine-tuning runs: the four stages of finetune/dvc.yaml, one after the
other, as `dvc repro finetune/dvc.yaml` runs them, on the models/model.pt and data/split at hand.

Run from the repository root after `dvc repro` (it needs the pretrained model and the split
corpus): `python benchmarks/finetune_speed.py`. It overwrites the fine-tuning outputs (the same
files the pipeline writes) and prints each stage's wall time, their total (target: both
fine-tuning runs of the default in at most 5 minutes on 2 cores) and the headline results.
Beside each wall time it prints the CPU time the stage used (user + system): on a machine shared
with other work the wall time grows with the load, the CPU time much less.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("classify_data", "classify", "instruct_data", "instruct")


def main() -> None:
    for needed in ("models/model.pt", "data/split/train.jsonl.zst"):
        if not Path(needed).is_file():
            sys.exit(f"error: {needed} not found: run `dvc repro` first")
    walls, cpus = {}, {}
    for stage in STAGES:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", f"stages.{stage}"], check=True, stdout=subprocess.DEVNULL)
        walls[stage] = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus[stage] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    classify = json.loads(Path("reports/classify.json").read_text())
    # throughput is telemetry, not a result: written beside the reports, never hashed in dvc.lock
    classify_speed = json.loads(Path("reports/telemetry/classify.json").read_text())
    instruct = json.loads(Path("reports/instruct.json").read_text())
    for stage, wall in walls.items():
        print(f"{stage:14s} {wall:7.1f} s wall {cpus[stage]:7.1f} s CPU")
    print(
        f"{'total':14s} {sum(walls.values()):7.1f} s wall {sum(cpus.values()):7.1f} s CPU (target: 300 s wall)"
    )
    test = classify["test"]
    print(
        f"classifier ({classify['init']}): {classify['steps']} steps, {classify_speed['examples_per_second']} examples/s; "
        f"test accuracy {test['accuracy']:.3f}, macro F1 {test['macro_f1']:.3f}, "
        f"majority baseline {test['majority_baseline_accuracy']:.3f}; val accuracy {classify['val']['accuracy']:.3f}"
    )
    print(
        f"instruct: {instruct['steps']} steps; test response loss {instruct['base_test_response_loss']:.3f} (base) -> "
        f"{instruct['test_response_loss']:.3f} (fine-tuned); {instruct['truncated_records']} records truncated, "
        f"{instruct['dropped_records']} dropped"
    )


if __name__ == "__main__":
    main()
