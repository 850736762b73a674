"""Stage train: train a GPT on data/tokens, log losses with DVCLive, write models/model.pt.

Its outputs (the model, the loss logs, reports/train.json) come out byte-identical from the same
inputs on the same machine; what the run measured of itself (tokens/s, wall seconds, what
`auto` timed) goes to reports/telemetry/train.json and .tsv, which are not outputs: a re-run
leaves dvc.lock as it was (docs/experiments.md, "Telemetry: speed apart from results").

With train.benchmark_interval it also logs HellaSwag's acc_norm (`benchmark/hellaswag_acc_norm`)
from the suite in data/benchmarks, which the download_benchmarks stage fetches.

A killed run resumes: every train.checkpoint_interval steps the loop writes models/checkpoint.pt,
and the next run of the same train params and token files continues from it and ends exactly as
an uninterrupted run would; once the model file is written the checkpoint is deleted. Why the
checkpoint is not a DVC output: docs/training.md, "Interrupted runs resume exactly".

With train.nproc_per_node x train.nnodes > 1 the stage replaces itself with torchrun running this
same module, one process per rank (gptcore.distributed); rank 0 writes every output.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path

from gptcore.atomic import write_json
from gptcore.checkpoint import MODEL_FILE, save_model
from gptcore.data.token_store import TokenStore
from gptcore.distributed import Ranks, die_with_parent, needs_torchrun, torchrun_argv
from gptcore.errors import run_main
from gptcore.hf.convert import check_vocabulary
from gptcore.params import load_section
from gptcore.reports import Telemetry, headline, live_logger
from gptcore.tokenizer import load_tokenizer
from gptcore.train import load_benchmark, train

TOKENS_DIR = Path("data/tokens")
VOCAB_DIR = Path("data/vocab")
SUITE_DIR = Path("data/benchmarks")
CHECKPOINT = Path("models/checkpoint.pt")
LIVE_DIR = "dvclive"
REPORT = Path("reports/train.json")
# what `dvc metrics show` lists; the report holds the rest (FLOPs per token, the precision chosen)
METRICS = Path("reports/train_metrics.json")
HEADLINE = ("final_train_loss", "final_val_loss", "steps", "tokens_seen", "parameters")
# throughput, wall time, memory, what auto timed and the step a resumed run started from: what the
# run measured of itself, apart from the outputs (`dvc metrics show reports/telemetry/train.json`)
TELEMETRY = Path("reports/telemetry/train.json")


def main() -> None:
    params = load_section("train")
    if needs_torchrun(params):
        argv = torchrun_argv(params, "stages.train")
        print(f"train: {params.world_size} processes: {' '.join(argv[2:])}", flush=True)
        os.execv(sys.executable, argv)  # torchrun's exit status becomes the stage's
    tokenizer = load_tokenizer(VOCAB_DIR)
    if params.init_from:
        check_vocabulary(params.init_from, tokenizer)
    stores = {split: TokenStore(TOKENS_DIR / f"{split}.h5") for split in ("train", "val")}
    for store in stores.values():
        store.check_vocab(tokenizer.identity)
    benchmark = load_benchmark(params, SUITE_DIR, tokenizer)
    ranks = Ranks.from_env()
    if ranks.distributed:
        die_with_parent()
    run = functools.partial(
        train, params, stores["train"], stores["val"], checkpoint=CHECKPOINT, ranks=ranks, benchmark=benchmark
    )
    if not ranks.is_main:
        run(progress=False)
        return

    telemetry = Telemetry(TELEMETRY)
    with live_logger(LIVE_DIR, telemetry) as log:
        result = run(on_eval=log)

        save_model(
            MODEL_FILE,
            result.model,
            tokenizer,
            meta={"steps": result.steps, "tokens_seen": result.tokens_seen},
        )
        report = {
            "steps": result.steps,
            "processes": ranks.world_size,
            "tokens_seen": result.tokens_seen,
            "parameters": result.model.num_params(non_embedding=False),
            "flops_per_token": result.flops_per_token,
            "final_train_loss": round(result.final_train_loss, 4),
            "final_val_loss": round(result.final_val_loss, 4),
            # the dtype, compile and attention kernel trained with; why: the telemetry
            "precision": dataclasses.asdict(result.precision.choice),
        }
        measured = {
            "steps": result.steps,
            "processes": ranks.world_size,
            "start_step": result.resumed_from or 0,
            "tokens_per_second": round(result.tokens_per_second, 1),
            "wall_seconds": round(result.wall_seconds, 1),
            "model_flops_per_second": round(result.flops_per_token * result.tokens_per_second),
            # where the choice came from, and with dtype/compile: auto the timings behind it
            "precision": result.precision.to_dict(result.steps),
        }
        if result.mfu is not None:
            measured["mfu"] = round(result.mfu, 4)
        if result.peak_memory_bytes is not None:
            measured["peak_memory_gib"] = round(result.peak_memory_bytes / 2**30, 3)
        try:
            write_json(REPORT, report)
            write_json(METRICS, headline(report, HEADLINE))
            telemetry.write(measured)
        except Exception:
            MODEL_FILE.unlink(missing_ok=True)  # no model without its report: the stage did not finish
            raise
    CHECKPOINT.unlink(missing_ok=True)
    print(
        f"train: {result.steps} steps, {result.tokens_per_second:,.0f} tokens/s, "
        f"{result.precision.choice.describe()}, val loss {result.final_val_loss:.4f}"
    )


if __name__ == "__main__":
    run_main(main)
