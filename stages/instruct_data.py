"""Stage instruct_data: instruction records split into train, val and test, in data/finetune/instruct/.

`instruct_data.source` is either data/split (the pretraining corpus: each speech answered by
another character, split by play) or an Alpaca-style JSON / JSON Lines file (split by a hash of
each record). reports/instruct_data.json counts the records per split (and lists the plays).
"""

from __future__ import annotations

from pathlib import Path

from gptcore.atomic import atomic_dir, write_json
from gptcore.errors import DataError, run_main
from gptcore.finetune_data import (
    SPLITS,
    InstructionRecord,
    assign_plays,
    dialogue_records,
    play_listing,
    read_instructions,
    read_plays,
    split_by_hash,
    write_jsonl,
)
from gptcore.params import load_section

OUT_DIR = Path("data/finetune/instruct")
REPORT = Path("reports/instruct_data.json")


def main() -> None:
    params = load_section("instruct_data")
    source = Path(params.source)
    report: dict = {"source": str(source)}
    if source.is_dir():
        plays = read_plays(source)
        assignment = assign_plays({name: seen for name, (_, seen) in plays.items()}, params.seed)
        splits: dict[str, list[InstructionRecord]] = {name: [] for name in SPLITS}
        for name, (text, _) in sorted(plays.items()):
            splits[assignment[name]] += dialogue_records(text, params.max_chars, params.records_per_play)
        report["plays"] = play_listing(plays, assignment)
    else:
        records = read_instructions(source)
        keys = [f"{r.instruction}\0{r.input}\0{r.output}" for r in records]
        splits = split_by_hash(records, keys, params.seed, params.val_fraction, params.test_fraction)
    for name in ("train", "test"):
        if not splits[name]:
            raise DataError(
                f"{source}: no records in the {name} split; give more records or change instruct_data's fractions"
            )
    with atomic_dir(OUT_DIR) as tmp:
        for name, items in splits.items():
            write_jsonl(tmp / f"{name}.jsonl", (r.to_dict() for r in items))
    report.update({name: {"records": len(items)} for name, items in splits.items()})
    write_json(REPORT, report)
    print("instruct_data: records: " + ", ".join(f"{name} {len(items):,}" for name, items in splits.items()))


if __name__ == "__main__":
    run_main(main)
