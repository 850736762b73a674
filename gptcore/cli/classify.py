"""`gptcore classify`: the label and class probabilities of texts, from a fine-tuned classifier."""

from __future__ import annotations

import argparse
from pathlib import Path

from gptcore.cli.flags import DEFAULT_CLASSIFIER, device_flag
from gptcore.device import resolve_device
from gptcore.finetune import classify


def cmd_classify(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    model, tokenizer, labels, _ = classify.load(args.model, device)
    probs = classify.classify_texts(model, tokenizer, args.texts, device)
    for text, row in zip(args.texts, probs.tolist(), strict=True):
        if len(args.texts) > 1:
            print(f"--- {text[:60]!r}")
        print(labels[max(range(len(row)), key=row.__getitem__)])
        for label, p in sorted(zip(labels, row, strict=True), key=lambda lp: -lp[1]):
            print(f"  {label}: {p:.4f}")


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], sampling: argparse.ArgumentParser
) -> None:
    """The `classify` command's flags; `sampling` holds the model and sampling flags it may share."""
    classify_cmd = commands.add_parser("classify", help="the label and class probabilities of texts")
    classify_cmd.add_argument(
        "texts", nargs="+", metavar="TEXT", help="text to classify; several for several"
    )
    classify_cmd.add_argument(
        "--model", type=Path, default=DEFAULT_CLASSIFIER, help="classifier file (default: %(default)s)"
    )
    classify_cmd.add_argument(
        "--device", type=device_flag, default="auto", help="auto, cpu, cuda, cuda:N or mps"
    )
    classify_cmd.set_defaults(run=cmd_classify)
