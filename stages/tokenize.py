"""Stage tokenize: encode the train and val splits into data/tokens/{train,val}.h5, + reports/tokens.json."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from gptcore.atomic import atomic_dir, write_json
from gptcore.data.encode import default_workers, tokenize_to_file
from gptcore.data.split import iter_split_file
from gptcore.errors import run_main
from gptcore.params import load_section
from gptcore.tokenizer import load_tokenizer

SPLIT_DIR = Path("data/split")
VOCAB_DIR = Path("data/vocab")
TOKENS_DIR = Path("data/tokens")
REPORT = Path("reports/tokens.json")


def main() -> None:
    workers = load_section("tokenize").workers or default_workers()
    tokenizer = load_tokenizer(VOCAB_DIR)
    report: dict[str, object] = {"vocab_size": tokenizer.vocab_size}
    with atomic_dir(TOKENS_DIR) as tmp:
        for split in ("train", "val"):
            texts = (doc.text for doc in iter_split_file(SPLIT_DIR / f"{split}.jsonl.zst"))
            start = time.perf_counter()
            with tqdm(desc=f"tokenize {split}", unit="B", unit_scale=True, unit_divisor=1024) as bar:
                summary = tokenize_to_file(
                    tmp / f"{split}.h5",
                    texts,
                    tokenizer,
                    workers,
                    on_block=lambda b: bar.update(b.source_bytes),
                )
            seconds = time.perf_counter() - start
            report[split] = {
                "tokens": summary.tokens,
                "documents": summary.documents,
                "bytes_per_token": round(summary.bytes_per_token or 0.0, 4),
            }
            mb_s = (summary.source_bytes or 0) / 1e6 / seconds
            print(
                f"tokenize: {split}: {summary.documents:,} document{'s' * (summary.documents != 1)}, {summary.tokens:,} tokens "
                f"in {seconds:.1f} s ({mb_s:.1f} MB/s, {summary.tokens / seconds:,.0f} tokens/s, {workers} workers)"
            )
    write_json(REPORT, report)


if __name__ == "__main__":
    run_main(main)
