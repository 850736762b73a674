"""Stage classify_data: labelled examples, split into train, val and test, in data/finetune/classify/.

`classify_data.source` is either data/split (the pretraining corpus: passages of each play,
labelled with its genre folder, split by play) or a labelled CSV/TSV/JSON Lines file (split by
a hash of each text). reports/classify_data.json counts examples per split and label, and for
the corpus lists the plays of each split and whether pretraining trained on them.
"""

from __future__ import annotations

from pathlib import Path

from gptcore.atomic import atomic_dir, write_json
from gptcore.errors import run_main
from gptcore.finetune_data import (
    SPLITS,
    LabelledText,
    assign_plays,
    balance,
    check_classes,
    genre_passages,
    label_counts,
    play_group,
    play_listing,
    read_labelled,
    read_plays,
    split_by_hash,
    write_jsonl,
)
from gptcore.params import ClassifyDataParams, load_section

OUT_DIR = Path("data/finetune/classify")
REPORT = Path("reports/classify_data.json")


def corpus_examples(folder: Path, params: ClassifyDataParams) -> tuple[dict[str, list[LabelledText]], dict]:
    """Genre passages of the plays in a data/split folder, split by play."""
    plays = read_plays(folder)
    assignment = assign_plays({name: seen for name, (_, seen) in plays.items()}, params.seed)
    splits: dict[str, list[LabelledText]] = {name: [] for name in SPLITS}
    for name, (text, _) in sorted(plays.items()):
        for i, passage in enumerate(genre_passages(text, params.passage_chars, params.passages_per_play)):
            splits[assignment[name]].append(LabelledText(passage, play_group(name), f"{name}#{i}"))
    return splits, play_listing(plays, assignment)


def main() -> None:
    params = load_section("classify_data")
    source = Path(params.source)
    if source.is_dir():
        splits, plays = corpus_examples(source, params)
    else:
        examples = read_labelled(source, params.text_column, params.label_column, params.format)
        splits = split_by_hash(
            examples, [ex.text for ex in examples], params.seed, params.val_fraction, params.test_fraction
        )
        plays = None
    if params.balance:
        splits = {name: balance(items, params.seed) if items else items for name, items in splits.items()}
    labels = check_classes(splits, str(source))
    with atomic_dir(OUT_DIR) as tmp:
        for name, items in splits.items():
            write_jsonl(tmp / f"{name}.jsonl", ({"text": ex.text, "label": ex.label} for ex in items))
    report = {
        "source": str(source),
        "labels": labels,
        **{
            name: {"examples": len(items), "per_label": label_counts(items)} for name, items in splits.items()
        },
    }
    if plays is not None:
        report["plays"] = plays
    write_json(REPORT, report)
    counts = ", ".join(f"{name} {len(items):,}" for name, items in splits.items())
    print(f"classify_data: {len(labels)} classes ({', '.join(labels)}); examples: {counts}")


if __name__ == "__main__":
    run_main(main)
