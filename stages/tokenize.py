"""Stage tokenize: encode the train and val splits into data/tokens/{train,val}.h5."""

from __future__ import annotations

import json
from pathlib import Path

from gptcore.atomic import atomic_dir, write_text
from gptcore.errors import run_main
from gptcore.split import iter_split_file
from gptcore.tokenizer import load_tokenizer
from gptcore.tokens import tokenize_to_file

SPLIT_DIR = Path("data/split")
VOCAB_DIR = Path("data/vocab")
TOKENS_DIR = Path("data/tokens")
REPORT = Path("reports/tokens.json")


def main() -> None:
    tokenizer = load_tokenizer(VOCAB_DIR)
    report: dict[str, object] = {"vocab_size": tokenizer.vocab_size}
    with atomic_dir(TOKENS_DIR) as tmp:
        for split in ("train", "val"):
            texts = (doc.text for doc in iter_split_file(SPLIT_DIR / f"{split}.jsonl.zst"))
            summary = tokenize_to_file(tmp / f"{split}.h5", texts, tokenizer)
            report[split] = {
                "tokens": summary.tokens,
                "documents": summary.documents,
                "bytes_per_token": round(summary.bytes_per_token or 0.0, 4),
            }
            print(f"tokenize: {split}: {summary.documents} documents, {summary.tokens} tokens")
    write_text(REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    run_main(main)
