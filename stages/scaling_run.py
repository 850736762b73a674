"""Stage scaling/dvc.yaml:run@<size>-<budget>: one run of the scaling grid (gptcore.scaling.grid).

Trains the train section's model at the grid's size for the steps its FLOPs budget buys, on the
pretraining pipeline's data/tokens, then scores it on the whole val split, and writes
scaling/runs/<size>-<budget>/: result.json (what the fit reads: N, D, C, the losses), loss.tsv
(train and val loss at each estimate) and model.pt. Like the train stage, the same inputs give the
same bytes; tokens/s and wall seconds go to reports/telemetry/scaling/<size>-<budget>.json, which
no dvc.yaml declares. A killed run resumes from scaling/checkpoints/<size>-<budget>.pt.

Before training, every entry of the grid is planned, and one that cannot run (heads that do not
divide the width, a budget too small for scaling.min_steps steps, a memory plan that does not fit)
stops the stage with all of them named, so a bad grid fails at its first stage, not its last.

    python -m stages.scaling_run --plan     # the grid: sizes, N, budgets, steps, tokens; runs nothing
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gptcore.atomic import atomic_dir, write_json, write_text
from gptcore.checkpoint import save_model
from gptcore.data.token_store import TokenStore
from gptcore.device import resolve_device
from gptcore.errors import run_main
from gptcore.evaluate import evaluate_sample, evaluate_split
from gptcore.params import load_section
from gptcore.reports import Telemetry
from gptcore.scaling.grid import find_run
from gptcore.scaling.plan import PlannedRun, check_grid, slow_bf16_warning
from gptcore.tokenizer import load_tokenizer
from gptcore.train import train

TOKENS_DIR = Path("data/tokens")
VOCAB_DIR = Path("data/vocab")
RUNS_DIR = Path("scaling/runs")
CHECKPOINTS_DIR = Path("scaling/checkpoints")
TELEMETRY_DIR = Path("reports/telemetry/scaling")
# the fixed sample of train windows behind train_loss, as the evaluate stage draws it
TRAIN_SAMPLE_SEED = 0


def plan_table(planned: list[PlannedRun]) -> str:
    rows = ["run                    N (params)   budget    steps      tokens   tokens/N  held out"]
    for p in planned:
        rows.append(
            f"{p.run.name:<22} {p.parameters:>11,} {p.run.budget:>9.3g} {p.steps:>8,} {p.tokens:>11,} "
            f"{p.tokens / p.parameters:>9.1f}  {'yes' if p.run.holdout else ''}"
        )
    total = sum(p.flops for p in planned)
    rows.append(f"{len(planned)} runs, {total:.3g} training FLOPs in all")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.scaling_run", description=__doc__.split("\n")[0])
    parser.add_argument("--size", help="the run's size, as in scaling.sizes")
    parser.add_argument("--budget", help="the run's budget, as in scaling.budgets")
    parser.add_argument("--plan", action="store_true", help="print the planned grid and run nothing")
    args = parser.parse_args(argv)
    scaling, params, evaluate = load_section("scaling"), load_section("train"), load_section("evaluate")
    tokenizer = load_tokenizer(VOCAB_DIR)
    device = resolve_device(params.device)
    planned = check_grid(scaling, params, tokenizer.vocab_size, device)
    warning = slow_bf16_warning(planned, device)
    if warning:
        print(f"scaling: warning: {warning}", file=sys.stderr)
    if args.plan:
        print(plan_table(planned))
        return
    if args.size is None or args.budget is None:
        parser.error("give --size and --budget (or --plan)")
    run = find_run(scaling, args.size, args.budget)
    entry = next(p for p in planned if p.run == run)
    stores = {split: TokenStore(TOKENS_DIR / f"{split}.h5") for split in ("train", "val")}
    for store in stores.values():
        store.check_vocab(tokenizer.identity)

    curve: dict[int, dict[str, float]] = {}
    telemetry = Telemetry(TELEMETRY_DIR / f"{run.name}.json")

    def on_eval(step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            if name.startswith("perf/"):
                telemetry.record(step, {name.removeprefix("perf/"): value})
            elif name in ("train/loss", "val/loss"):
                curve.setdefault(step, {})[name.split("/")[0]] = value

    print(
        f"scaling: {run.name}: {entry.parameters:,} parameters, {entry.steps:,} steps, {entry.tokens:,} tokens"
    )
    checkpoint = CHECKPOINTS_DIR / f"{run.name}.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    result = train(entry.params, stores["train"], stores["val"], on_eval=on_eval, checkpoint=checkpoint)

    device = next(result.model.parameters()).device
    windows = {"block_size": entry.params.block_size, "batch_size": evaluate.batch_size, "device": device}
    model = result.model.eval()
    val = evaluate_split(model, stores["val"], max_tokens=evaluate.max_tokens, **windows)
    train_loss = evaluate_sample(
        model, stores["train"], n_tokens=evaluate.train_tokens, seed=TRAIN_SAMPLE_SEED, **windows
    )
    report = {
        "size": run.size.name,
        "n_layer": run.size.n_layer,
        "n_head": run.size.n_head,
        "n_embd": run.size.n_embd,
        "budget": run.budget,
        "parameters": entry.parameters,
        "flops_per_token": entry.flops_per_token,
        "tokens": result.tokens_seen,
        "steps": result.steps,
        "batch_size": entry.params.batch_size * entry.params.grad_accum_steps,
        "block_size": entry.params.block_size,
        "flops": float(entry.flops_per_token) * result.tokens_seen,
        "val_loss": round(val.loss, 5),
        "val_bits_per_byte": round(val.bits_per_byte, 5) if val.bits_per_byte is not None else None,
        "train_loss": round(train_loss.loss, 5),
        "holdout": run.holdout,
    }
    lines = ["step\ttrain\tval"] + [
        f"{step}\t{row.get('train', float('nan')):.5f}\t{row.get('val', float('nan')):.5f}"
        for step, row in sorted(curve.items())
    ]
    with atomic_dir(RUNS_DIR / run.name) as folder:
        meta = {"steps": result.steps, "tokens_seen": result.tokens_seen}
        save_model(folder / "model.pt", result.model, tokenizer, meta=meta)
        write_text(folder / "loss.tsv", "\n".join(lines) + "\n")
        write_json(folder / "result.json", report)
    telemetry.write(
        {
            "size": run.size.name,
            "budget": run.budget,
            "parameters": entry.parameters,
            "tokens_per_second": round(result.tokens_per_second, 1),
            "wall_seconds": round(result.wall_seconds, 1),
            "precision": result.precision.to_dict(result.steps),
        }
    )
    checkpoint.unlink(missing_ok=True)
    print(
        f"scaling: {run.name}: val loss {val.loss:.4f} ({report['val_bits_per_byte']} bits/byte), "
        f"{result.tokens_per_second:,.0f} tokens/s, {result.precision.choice.describe()}"
    )


if __name__ == "__main__":
    run_main(main)
