"""LoRA against full fine-tuning: results, wall time and peak RSS, measured.

    python benchmarks/lora_speed.py defaults [--lora-learning-rate 3.0e-3]
        The classify and instruct stages of finetune/dvc.yaml on the models/model.pt and
        data/finetune/ at hand (run `dvc repro finetune/dvc.yaml` first), once with method: full and
        once with method: lora, every other key at params.yaml's value; each stage in a scratch
        folder of its own (the repository's outputs are left alone), as a child process whose wall
        time and peak RSS (`os.wait4`) are measured. Prints test accuracy and macro F1, test
        response loss, the fine-tuning loop's seconds (the stage's telemetry) and the stage's. With
        --lora-learning-rate, the lora runs are repeated at that learning rate.

    python benchmarks/lora_speed.py gpt2 [--preset gpt2-124m] [--batch-size 16] [--seq-len 128] [--steps 3]
        Instruction fine-tuning steps on a model of a GPT-2 preset's shape with random weights, in a
        child process per method: the memory plan (`gptcore info`'s, at --seq-len tokens a record
        and at the model's whole context), the median seconds a step after a warm-up step, and the
        child's peak RSS. `--methods lora` runs LoRA alone, for a model whose full fine-tuning the
        plan says does not fit.

The measurement of a step is the fine-tuning loop's own (gptcore.step.train_step with the loop's
AdamW over the parameters that train), on batches of random token ids whose targets mask the first
half of each record, as instruct's response-only loss does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(command: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds, peak RSS in bytes, stdout) of a child process run to completion."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"error: {' '.join(command)} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, out


# --- the defaults: the stages, full against lora ----------------------------------------------------


def scratch(base: Path, name: str, section: str, changes: dict[str, Any]) -> Path:
    """A folder holding what the stage reads (links to the model and the data) and params.yaml
    with `changes` in `section`."""
    folder = base / name
    (folder / "models").mkdir(parents=True)
    (folder / "models/model.pt").symlink_to(ROOT / "models/model.pt")
    (folder / "data/finetune").mkdir(parents=True)
    (folder / "data/finetune" / section).symlink_to(ROOT / "data/finetune" / section)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params[section].update(changes)
    (folder / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return folder


def run_defaults(args: argparse.Namespace) -> None:
    for needed in (
        "models/model.pt",
        "data/finetune/classify/train.jsonl",
        "data/finetune/instruct/train.jsonl",
    ):
        if not (ROOT / needed).is_file():
            sys.exit(f"error: {needed} not found: run `dvc repro finetune/dvc.yaml` first")
    runs = [(method, {"method": method}) for method in args.methods.split(",")]
    if args.lora_learning_rate is not None:
        lr = args.lora_learning_rate
        runs.append((f"lora, lr {lr:g}", {"method": "lora", "learning_rate": lr}))
    base = Path(tempfile.mkdtemp(prefix="lora-speed-"))
    jobs = [(section, label, changes) for section in ("classify", "instruct") for label, changes in runs]
    folders = [scratch(base, f"run{i}", section, changes) for i, (section, _, changes) in enumerate(jobs)]

    def run(i: int) -> tuple[float, float, int, str]:
        return child([sys.executable, "-m", f"stages.{jobs[i][0]}"], folders[i])

    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            measured = list(pool.map(run, range(len(jobs))))
        for (section, label, _), folder, (wall, cpu, rss, _) in zip(jobs, folders, measured, strict=True):
            report = json.loads((folder / f"reports/{section}.json").read_text())
            telemetry = folder / f"reports/telemetry/{section}.json"
            loop = json.loads(telemetry.read_text())["wall_seconds"] if telemetry.is_file() else float("nan")
            if section == "classify":
                t = report["test"]
                result = f"test accuracy {t['accuracy']:.3f}, macro F1 {t['macro_f1']:.3f}"
            else:
                result = (
                    f"test response loss {report['base_test_response_loss']:.3f} (base) -> "
                    f"{report['test_response_loss']:.3f}"
                )
            adapter = folder / f"models/{'classifier' if section == 'classify' else 'instruct'}_adapter"
            size = sum(p.stat().st_size for p in adapter.iterdir())
            print(
                f"{section:8s} {label:14s} trainable {report['trainable_parameters']:>9,}  {result}; "
                f"loop {loop:6.1f} s; stage {wall:6.1f} s wall, {cpu:6.1f} s CPU, peak RSS {rss / 2**20:,.0f} MiB; "
                f"adapter folder {size / 1024:,.0f} KiB",
                flush=True,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- a GPT-2-shaped model: steps and the plan -----------------------------------------------------------


def model_config(preset: str, seq_len: int | None = None) -> Any:
    from gptcore.model import GPTConfig
    from gptcore.presets import PRESETS

    shape = PRESETS[preset]
    # GPT-2's released shape: its vocabulary, biases, a tied head, the tanh GELU
    return GPTConfig(
        vocab_size=50257,
        block_size=seq_len or shape.block_size,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        n_embd=shape.n_embd,
        bias=True,
        activation="gelu_tanh",
    )


def instruct_params(method: str) -> Any:
    from gptcore.params import parse_section

    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["instruct"]
    return parse_section("instruct", {**raw, "method": method, "device": "cpu"})


def plan(preset: str, method: str, batch_size: int, seq_len: int | None) -> Any:
    """The plan `gptcore info` gives (gptcore.cli.info), for records of `seq_len` tokens."""
    import torch

    from gptcore.cli.info import finetune_plan
    from gptcore.memory import device_memory
    from gptcore.model import GPT

    config = model_config(preset, seq_len)
    with torch.device("meta"):
        model = GPT(config)
    available, where = device_memory(torch.device("cpu"))
    return finetune_plan(model, instruct_params(method), method, batch_size, available, where)


def steps(args: argparse.Namespace) -> None:
    """In the child: `args.steps` + 1 fine-tuning steps of `args.method`; prints their seconds."""
    import torch

    from gptcore.finetune import lora
    from gptcore.finetune.instruct import IGNORE_INDEX
    from gptcore.finetune.loop import make_optimizer
    from gptcore.model import GPT
    from gptcore.step import train_step

    params = instruct_params(args.method)
    torch.manual_seed(0)
    model = GPT(model_config(args.preset))
    if args.method == "lora":
        modules = lora.target_modules(model, params.lora_targets, "all", "instruct.lora_targets")
        lora.add_adapters(model, lora.Settings.of(params, modules))
    model.train()
    device = torch.device("cpu")
    optimizer = make_optimizer(model, params, device)
    trained = [p for p in model.parameters() if p.requires_grad]
    x = torch.randint(0, 50257, (args.batch_size, args.seq_len))
    y = torch.randint(0, 50257, (args.batch_size, args.seq_len))
    y[:, : args.seq_len // 2] = IGNORE_INDEX  # the prompt's half, masked as instruct masks it

    def loss_of(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        _, loss = model(*batch)
        return loss

    seconds, cpu = [], []
    for _ in range(args.steps + 1):
        start, start_cpu = time.perf_counter(), time.process_time()
        train_step(loss_of, [(x, y)], optimizer, trained, params.grad_clip, device)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    print(json.dumps({"seconds": seconds, "cpu": cpu, "trainable": sum(p.numel() for p in trained)}))


def run_gpt2(args: argparse.Namespace) -> None:
    import torch

    from gptcore.memory import human_bytes

    print(
        f"{args.preset}-shaped model (random weights), instruct fine-tuning, batch {args.batch_size} x "
        f"{args.seq_len} tokens, {torch.get_num_threads()} threads; params.yaml's instruct section otherwise"
    )
    for method in args.methods.split(","):
        for seq_len in (args.seq_len, None):
            p = plan(args.preset, method, args.batch_size, seq_len)
            tokens = seq_len or p.config.block_size
            print(
                f"  plan {method:4s} at {tokens:4d} tokens a record: trainable {p.trainable:,}; weights "
                f"{human_bytes(p.weights)}, gradients {human_bytes(p.gradients)}, AdamW {human_bytes(p.optimizer)}, "
                f"activations {human_bytes(p.activations)}; peak {p.verdict()}",
                flush=True,
            )
    for method in args.methods.split(","):
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "_steps",
            "--method",
            method,
            "--preset",
            args.preset,
            "--batch-size",
            str(args.batch_size),
            "--seq-len",
            str(args.seq_len),
            "--steps",
            str(args.steps),
        ]
        wall, cpu, rss, out = child(command, ROOT)
        measured = json.loads(out.strip().splitlines()[-1])
        timed, cpu_timed = measured["seconds"][1:], measured["cpu"][1:]
        print(
            f"  {method:4s}: trainable {measured['trainable']:,}; {statistics.median(timed):.2f} s a step, "
            f"{statistics.median(cpu_timed):.2f} s CPU (medians of {len(timed)} after a warm-up step of "
            f"{measured['seconds'][0]:.2f} s); "
            f"peak RSS {rss / 2**30:.2f} GiB; child {wall:.0f} s wall, {cpu:.0f} s CPU",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = commands.add_parser("defaults", help="the classify and instruct stages, full and lora")
    defaults.add_argument("--lora-learning-rate", type=float, help="also run lora at this learning rate")
    defaults.add_argument("--methods", default="full,lora", help="the methods run (default: %(default)s)")
    defaults.add_argument(
        "--jobs", type=int, default=1, help="stage runs at once (wall times then include their contention)"
    )
    for name in ("gpt2", "_steps"):
        sub = commands.add_parser(
            name, help="fine-tuning steps on a GPT-2-shaped model" if name == "gpt2" else None
        )
        sub.add_argument("--preset", default="gpt2-124m")
        sub.add_argument("--batch-size", type=int, default=16)
        sub.add_argument("--seq-len", type=int, default=128)
        sub.add_argument("--steps", type=int, default=3)
        sub.add_argument("--methods", default="full,lora")
        sub.add_argument("--method", default="lora")
    args = parser.parse_args()
    {"defaults": run_defaults, "gpt2": run_gpt2, "_steps": steps}[args.command](args)


if __name__ == "__main__":
    main()
