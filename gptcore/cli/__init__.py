"""The `gptcore` command: `chat` with a trained model, `sample` completions, `info` on a model's size,
`classify` texts with a fine-tuned classifier, `export` a model to the Hugging Face format, `serve`
a model over HTTP (an OpenAI-compatible API and a chat page; see gptcore.serve.server), `benchmark` a
model on standard tasks offline (gptcore.benchmark), `scaling recommend` a model size for a budget
(gptcore.scaling.fit). `--model` takes a model file or a Hugging Face folder.

Sampling options default to the `sample` section of params.yaml when the file is there (the same
settings the sample stage records, so `gptcore sample` reproduces reports/samples.md); outside a
gptcore checkout they default to plain sampling: temperature 1, no top-k or top-p, a random seed.

Each command's code is in the module named for it (gptcore.cli.chat, .sample, .info, .classify,
.export, .serve, .benchmark, .scaling); gptcore.cli.flags holds what they share; this one holds the parser and `main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from gptcore.cli import benchmark, chat, classify, export, info, sample, scaling, serve
from gptcore.cli.flags import sampling_parent
from gptcore.errors import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptcore", description="Chat with, sample from and size up gptcore models."
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{chat,sample,info,classify,export,serve,benchmark,scaling}"
    )
    sampling = sampling_parent()
    for command in (chat, sample, info, classify, export, serve, benchmark, scaling):
        command.add_command(commands, sampling)
    return parser


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run_main(lambda: args.run(args))
    except BrokenPipeError:
        # the reader went away (`gptcore sample | head`): not an error of ours; point stdout at
        # /dev/null so that the interpreter's final flush does not report it either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
