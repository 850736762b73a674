"""Stage build_vocab: learn the vocabulary of the train split and write it to data/vocab/."""

from __future__ import annotations

from pathlib import Path

from gptcore.atomic import atomic_dir
from gptcore.errors import run_main
from gptcore.params import load_section
from gptcore.split import iter_split_file
from gptcore.tokenizer import train_tokenizer

TRAIN_SPLIT = Path("data/split/train.jsonl.zst")
VOCAB_DIR = Path("data/vocab")


def main() -> None:
    params = load_section("vocab")
    tokenizer = train_tokenizer(params, (doc.text for doc in iter_split_file(TRAIN_SPLIT)))
    with atomic_dir(VOCAB_DIR) as tmp:
        tokenizer.save(tmp)
    print(f"build_vocab: {params.kind} vocabulary of {tokenizer.vocab_size} tokens -> {VOCAB_DIR}")


if __name__ == "__main__":
    run_main(main)
