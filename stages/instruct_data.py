"""Stage instruct_data: instruction records split into train, val and test, in data/finetune/instruct/.

`instruct_data.source` is either data/split (the pretraining corpus: each speech answered by
another character, split by play) or an Alpaca-style JSON / JSON Lines file (split by a hash of
each record). reports/instruct_data.json counts the records per split (and lists the plays).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from gptcore.atomic import atomic_dir, write_json
from gptcore.errors import DataError, run_main
from gptcore.finetune.data import (
    InstructionRecord,
    assign_plays,
    dialogue_records,
    iter_instructions,
    play_listing,
    read_plays,
    split_of,
    write_instruction_splits,
)
from gptcore.params import load_section

OUT_DIR = Path("data/finetune/instruct")
REPORT = Path("reports/instruct_data.json")


def main() -> None:
    params = load_section("instruct_data")
    source = Path(params.source)
    report: dict = {"source": str(source)}
    records: Iterable[tuple[str, InstructionRecord]]
    if source.is_dir():
        plays = read_plays(source)
        assignment = assign_plays({name: seen for name, (_, seen) in plays.items()}, params.seed)
        records = (
            (assignment[name], record)
            for name, (text, _) in sorted(plays.items())
            for record in dialogue_records(text, params.max_chars, params.records_per_play)
        )
        report["plays"] = play_listing(plays, assignment)
    else:
        fractions = (params.seed, params.val_fraction, params.test_fraction)
        records = ((split_of(r.key, *fractions), r) for r in iter_instructions(source))
    with atomic_dir(OUT_DIR) as tmp:
        counts = write_instruction_splits(tmp, records)
        for name in ("train", "test"):
            if not counts[name]:
                raise DataError(
                    f"{source}: no records in the {name} split; give more records or change instruct_data's fractions"
                )
    report.update({name: {"records": count} for name, count in counts.items()})
    write_json(REPORT, report)
    print("instruct_data: records: " + ", ".join(f"{name} {count:,}" for name, count in counts.items()))


if __name__ == "__main__":
    run_main(main)
