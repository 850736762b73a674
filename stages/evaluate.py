"""Stage evaluate: val loss over the whole split, perplexity, bits per byte; the loss chart and its data."""

from __future__ import annotations

from pathlib import Path

from gptcore.atomic import write_json
from gptcore.checkpoint import MODEL_FILE, load_model
from gptcore.data.token_store import TokenStore
from gptcore.device import resolve_device
from gptcore.errors import run_main
from gptcore.evaluate import evaluate_sample, evaluate_split
from gptcore.params import load_section
from gptcore.reports import copy_loss_log, plot_losses, read_loss_log

TOKENS_DIR = Path("data/tokens")
LOSS_LOGS = {split: Path(f"dvclive/plots/metrics/{split}/loss.tsv") for split in ("train", "val")}
REPORT = Path("reports/eval.json")
PLOT = Path("reports/loss.png")
# the same logs kept in git, which the `loss` plot of dvc.yaml draws
LOSS_COPIES = {split: Path(f"reports/loss/{split}.tsv") for split in LOSS_LOGS}
# seeds the fixed sample of train windows behind train_loss (any fixed value: the same every run)
TRAIN_SAMPLE_SEED = 0


def main() -> None:
    params = load_section("evaluate")
    device = resolve_device("auto")
    model, tokenizer, _ = load_model(MODEL_FILE, device)
    stores = {split: TokenStore(TOKENS_DIR / f"{split}.h5") for split in ("train", "val")}
    for store in stores.values():
        store.check_vocab(tokenizer.identity)

    windows = {"block_size": model.config.block_size, "batch_size": params.batch_size, "device": device}
    val = evaluate_split(model, stores["val"], max_tokens=params.max_tokens, **windows)
    train = evaluate_sample(
        model, stores["train"], n_tokens=params.train_tokens, seed=TRAIN_SAMPLE_SEED, **windows
    )
    write_json(
        REPORT,
        {
            "val_loss": round(val.loss, 4),
            "val_perplexity": round(val.perplexity, 3),
            "val_bits_per_byte": round(val.bits_per_byte, 4),
            "val_tokens": val.tokens,
            "train_loss": round(train.loss, 4),
            "train_tokens": train.tokens,
        },
    )
    plot_losses({split: read_loss_log(path) for split, path in LOSS_LOGS.items()}, PLOT)
    for split, path in LOSS_LOGS.items():
        copy_loss_log(path, LOSS_COPIES[split])
    print(f"evaluate: val loss {val.loss:.4f}, {val.bits_per_byte:.4f} bits/byte over {val.tokens} tokens")


if __name__ == "__main__":
    run_main(main)
