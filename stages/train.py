"""Stage train: train a GPT on data/tokens, log losses with DVCLive, write models/model.pt."""

from __future__ import annotations

from pathlib import Path

from dvclive import Live

from gptcore.checkpoint import save_model
from gptcore.errors import run_main
from gptcore.params import load_section
from gptcore.reports import write_json
from gptcore.tokenizer import load_tokenizer
from gptcore.tokens import TokenStore
from gptcore.train import train

TOKENS_DIR = Path("data/tokens")
VOCAB_DIR = Path("data/vocab")
MODEL = Path("models/model.pt")
LIVE_DIR = "dvclive"
REPORT = Path("reports/train.json")


def main() -> None:
    params = load_section("train")
    tokenizer = load_tokenizer(VOCAB_DIR)
    stores = {split: TokenStore(TOKENS_DIR / f"{split}.h5") for split in ("train", "val")}
    for store in stores.values():
        store.check_vocab(tokenizer.identity)

    # dvcyaml=False: dvc.yaml is written by hand; DVCLive must not edit it (see README, "Plots")
    with Live(dir=LIVE_DIR, dvcyaml=False, save_dvc_exp=False) as live:

        def log(step: int, train_loss: float, val_loss: float, lr: float) -> None:
            live.step = step
            live.log_metric("train/loss", train_loss)
            live.log_metric("val/loss", val_loss)
            live.log_metric("lr", lr)
            live.make_summary()

        result = train(params, stores["train"], stores["val"], on_eval=log)

    save_model(
        MODEL, result.model, tokenizer, meta={"steps": result.steps, "tokens_seen": result.tokens_seen}
    )
    write_json(
        REPORT,
        {
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
            "tokens_per_second": round(result.tokens_per_second, 1),
            "wall_seconds": round(result.wall_seconds, 1),
            "parameters": result.model.num_params(non_embedding=False),
            "flops_per_token": result.flops_per_token,
            "model_flops_per_second": round(result.flops_per_token * result.tokens_per_second),
            "final_train_loss": round(result.final_train_loss, 4),
            "final_val_loss": round(result.final_val_loss, 4),
        },
    )
    print(
        f"train: {result.steps} steps, {result.tokens_per_second:,.0f} tokens/s, val loss {result.final_val_loss:.4f}"
    )


if __name__ == "__main__":
    run_main(main)
