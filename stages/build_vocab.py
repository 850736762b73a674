"""Stage build_vocab: learn the vocabulary of the train split and write it to data/vocab/."""

from __future__ import annotations

import sys
from pathlib import Path

from gptcore.atomic import atomic_dir
from gptcore.data.split import iter_split_file
from gptcore.errors import run_main
from gptcore.params import load_section
from gptcore.tokenizer import train_tokenizer

TRAIN_SPLIT = Path("data/split/train.jsonl.zst")
VOCAB_DIR = Path("data/vocab")


def main() -> None:
    params = load_section("vocab")
    tokenizer = train_tokenizer(params, (doc.text for doc in iter_split_file(TRAIN_SPLIT)))
    if params.kind == "bpe" and tokenizer.vocab_size < params.vocab_size:
        # not an error: the vocabulary is complete (every pre-token of the split is one token),
        # only smaller than asked; training works with it, but the user should know
        print(
            f"warning: vocab.vocab_size is {params.vocab_size:,}, but the train split holds only enough "
            f"distinct text for {tokenizer.vocab_size:,} ids (every pre-token became one token); "
            "the vocabulary has that many",
            file=sys.stderr,
        )
    with atomic_dir(VOCAB_DIR) as tmp:
        tokenizer.save(tmp)
    print(f"build_vocab: {params.kind} vocabulary of {tokenizer.vocab_size:,} tokens -> {VOCAB_DIR}")


if __name__ == "__main__":
    run_main(main)
