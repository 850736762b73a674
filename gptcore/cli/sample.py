"""`gptcore sample`: completions of prompts, and the streaming to stdout that chat shares."""

from __future__ import annotations

import argparse
import sys

import torch

from gptcore.cli.flags import (
    DEFAULT_PARAMS,
    add_sampling_flag,
    load_from_flags,
    positive_int,
    resolve_sampling,
)
from gptcore.errors import GptcoreError
from gptcore.generate import complete_batch, seeded_generator, stream_completion
from gptcore.model import GPT
from gptcore.sampling import Sampling
from gptcore.tokenizer import Tokenizer


def write_completion(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    sampling: Sampling,
    generator: torch.Generator | None,
    written: list[str],
) -> None:
    """Stream the completion of `prompt` to stdout as it is generated, appending each piece to
    `written` (so a reply stopped by Ctrl-C still knows what it said)."""
    for piece in stream_completion(model, tokenizer, prompt, sampling, generator=generator):
        sys.stdout.write(piece)
        sys.stdout.flush()
        written.append(piece)


def note_unknown(tokenizer: Tokenizer, text: str, noted: set[str]) -> None:
    """Say, once per character, which characters of a prompt the vocabulary lacks."""
    new = [ch for ch in tokenizer.unknown_characters(text) if ch not in noted]
    if new:
        noted.update(new)
        shown = ", ".join(repr(ch) for ch in new[:10]) + (
            f" and {len(new) - 10} more" if len(new) > 10 else ""
        )
        print(f"note: {shown} not in the model's vocabulary: it reads each as <|unk|>", file=sys.stderr)


def cmd_sample(args: argparse.Namespace) -> None:
    sampling, section = resolve_sampling(args)
    prompts = args.prompts or (section.prompts if section is not None else None)
    if not prompts:
        raise GptcoreError(
            f"no prompt: pass --prompt TEXT (or run where {DEFAULT_PARAMS} lists sample.prompts)"
        )
    model, tokenizer, _, _ = load_from_flags(args)
    total = len(prompts) * args.num_samples
    count = 0
    noted: set[str] = set()
    for prompt in prompts:
        note_unknown(tokenizer, prompt, noted)
        # seeded once per prompt, as the sample stage does: a prompt's completions do not depend
        # on which prompts came before it, and the first one matches reports/samples.md
        generator = seeded_generator(sampling)
        if args.num_samples == 1:  # streamed as it is generated
            count += 1
            if total > 1:
                print(f"--- sample {count} of {total} ---")
            written = [prompt]
            sys.stdout.write(prompt)
            write_completion(model, tokenizer, prompt, sampling, generator, written)
            if not "".join(written).endswith("\n"):
                sys.stdout.write("\n")
            continue
        # several samples of a prompt: the rows of one batch, one forward pass per step for all
        texts = complete_batch(model, tokenizer, prompt, args.num_samples, sampling, generator=generator)
        for text in texts:
            count += 1
            print(f"--- sample {count} of {total} ---")
            full = prompt + text
            print(full, end="" if full.endswith("\n") else "\n")
    sys.stdout.flush()


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], sampling: argparse.ArgumentParser
) -> None:
    """The `sample` command's flags; `sampling` holds the model and sampling flags it may share."""
    sample = commands.add_parser("sample", parents=[sampling], help="print completions of prompts")
    sample.add_argument(
        "--prompt",
        action="append",
        dest="prompts",
        metavar="TEXT",
        help="prompt to complete; repeat for several (default: sample.prompts)",
    )
    sample.add_argument(
        "--num-samples",
        type=positive_int,
        default=1,
        help="completions per prompt (default: %(default)s)",
    )
    add_sampling_flag(sample, "seed")
    sample.set_defaults(run=cmd_sample)
