"""Stage classify_data: labelled examples, split into train, val and test, in data/finetune/classify/.

`classify_data.source` is either data/split (the pretraining corpus: passages of each play,
labelled with its genre folder, split by play) or a labelled CSV/TSV/JSON Lines file (split by
a hash of each text). reports/classify_data.json counts examples per split and label, and for
the corpus lists the plays of each split and whether pretraining trained on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from gptcore.atomic import atomic_dir, write_json
from gptcore.errors import run_main
from gptcore.finetune.data import (
    SPLITS,
    LabelledText,
    assign_plays,
    genre_passages,
    iter_labelled,
    play_group,
    play_listing,
    read_plays,
    split_of,
    write_labelled_splits,
)
from gptcore.params import ClassifyDataParams, load_section

OUT_DIR = Path("data/finetune/classify")
REPORT = Path("reports/classify_data.json")


def corpus_examples(
    folder: Path, params: ClassifyDataParams
) -> tuple[Iterator[tuple[str, LabelledText]], dict]:
    """Genre passages of the plays in a data/split folder, split by play, and the plays' listing."""
    plays = read_plays(folder)
    assignment = assign_plays({name: seen for name, (_, seen) in plays.items()}, params.seed)
    examples = (
        (assignment[name], LabelledText(passage, play_group(name), f"{name}#{i}"))
        for name, (text, _) in sorted(plays.items())
        for i, passage in enumerate(genre_passages(text, params.passage_chars, params.passages_per_play))
    )
    return examples, play_listing(plays, assignment)


def main() -> None:
    params = load_section("classify_data")
    source = Path(params.source)
    plays = None
    if source.is_dir():
        examples, plays = corpus_examples(source, params)
    else:
        examples = (
            (split_of(ex.text, params.seed, params.val_fraction, params.test_fraction), ex)
            for ex in iter_labelled(source, params.text_column, params.label_column, params.format)
        )
    with atomic_dir(OUT_DIR) as tmp:
        labels, per_label = write_labelled_splits(tmp, examples, params.seed, params.balance, str(source))
    counts = {name: sum(per_label[name].values()) for name in SPLITS}
    report = {
        "source": str(source),
        "labels": labels,
        **{name: {"examples": counts[name], "per_label": per_label[name]} for name in SPLITS},
    }
    if plays is not None:
        report["plays"] = plays
    write_json(REPORT, report)
    summary = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    print(f"classify_data: {len(labels)} classes ({', '.join(labels)}); examples: {summary}")


if __name__ == "__main__":
    run_main(main)
