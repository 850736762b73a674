"""`gptcore classify`: the label and class probabilities of texts, from a fine-tuned classifier."""

from __future__ import annotations

import argparse

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
