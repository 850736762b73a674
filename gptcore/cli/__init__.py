"""The `gptcore` command: `chat` with a trained model, `sample` completions, `info` on a model's size,
`classify` texts with a fine-tuned classifier, `export` a model to the Hugging Face format, `serve`
a model over HTTP (an OpenAI-compatible API and a chat page; see gptcore.serve.server). `--model` takes a
model file or a Hugging Face folder.

Sampling options default to the `sample` section of params.yaml when the file is there (the same
settings the sample stage records, so `gptcore sample` reproduces reports/samples.md); outside a
gptcore checkout they default to plain sampling: temperature 1, no top-k or top-p, a random seed.

Each command's code is in the module named for it (gptcore.cli.chat, .sample, .info, .classify,
.export, .serve); gptcore.cli.flags holds what they share; this one holds the parser and `main`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gptcore.checkpoint import MODEL_FILE
from gptcore.cli.chat import cmd_chat
from gptcore.cli.classify import cmd_classify
from gptcore.cli.export import cmd_export
from gptcore.cli.flags import (
    DEFAULT_CLASSIFIER,
    DEFAULT_PARAMS,
    SAMPLING_FLAGS,
    add_sampling_flag,
    device_flag,
    positive_int,
    stop_flag,
    typed,
)
from gptcore.cli.info import cmd_info
from gptcore.cli.sample import cmd_sample
from gptcore.cli.serve import cmd_serve
from gptcore.errors import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptcore", description="Chat with, sample from and size up gptcore models."
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{chat,sample,info,classify,export,serve}"
    )

    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument(
        "--model",
        type=Path,
        default=MODEL_FILE,
        help="model file or Hugging Face folder (default: %(default)s)",
    )
    sampling.add_argument(
        "--params",
        type=Path,
        help=f"params file whose sample section gives the defaults (default: {DEFAULT_PARAMS} if it exists)",
    )
    for field in SAMPLING_FLAGS:
        if field != "seed":
            add_sampling_flag(sampling, field)
    sampling.add_argument(
        "--stop",
        action="append",
        type=stop_flag,
        metavar="TEXT",
        help="end a completion just before this text; repeat for several (default: sample.stop)",
    )
    sampling.add_argument(
        "--device",
        type=device_flag,
        default="auto",
        help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps",
    )

    chat = commands.add_parser(
        "chat", parents=[sampling], help="continue each line you type (or pipe in) with the model"
    )
    chat.add_argument(
        "--instruction",
        metavar="TEXT",
        help="instruction-tuned models: the instruction of every turn, each line then being its input "
        "(default: each line is the instruction)",
    )
    chat.set_defaults(run=cmd_chat)
    add_sampling_flag(chat, "seed")

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

    info = commands.add_parser(
        "info", help="parameters, FLOPs and memory of a model or of params.yaml's train section"
    )
    info.add_argument("--model", type=Path, help=f"model file (default: {MODEL_FILE} if it exists)")
    info.add_argument("--params", type=Path, help=f"params file (default: {DEFAULT_PARAMS} if it exists)")
    info.add_argument(
        "--measure",
        action="store_true",
        help="time the dtype/compile candidates now if this machine has no figures for them yet",
    )
    info.set_defaults(run=cmd_info)

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

    export = commands.add_parser(
        "export", help="write a model file as a Hugging Face folder (config, safetensors, tokenizer)"
    )
    export.add_argument("--model", type=Path, default=MODEL_FILE, help="model file (default: %(default)s)")
    export.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write: a new or empty one, or an earlier export (only its files are replaced)",
    )
    export.add_argument(
        "--force",
        action="store_true",
        help="write into an existing folder of other files too (none of them is replaced or removed)",
    )
    export.set_defaults(run=cmd_export)

    serve = commands.add_parser(
        "serve",
        parents=[sampling],
        help="an OpenAI-compatible HTTP API and a chat page; the sampling flags are the defaults of requests",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)"
    )
    serve.add_argument(
        "--port",
        type=typed(int, lambda v: 0 <= v < 65536, "a port number"),
        default=8000,
        help="(default: %(default)s)",
    )
    serve.add_argument(
        "--name", default="gptcore", help="the model id clients ask for (default: %(default)s)"
    )
    serve.add_argument(
        "--api-key",
        help="require Authorization: Bearer KEY on every /v1 route (default: $GPTCORE_API_KEY, else none); "
        "an empty key is an error",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="without an API key, also answer requests whose Host is NAME (repeat for several; "
        "localhost, IP addresses and --host are always answered)",
    )
    for flag, default, what in (
        ("--max-tokens-limit", 2048, "largest max_tokens a request may ask for"),
        ("--max-batch", 16, "choices generated together, one forward pass per token for all; more wait"),
        ("--max-body-bytes", 1 << 20, "largest request body accepted, in bytes"),
        ("--max-choices", 16, "choices one request may ask for: its prompts x n"),
        ("--max-prompt-tokens", 32768, "tokens of one request's prompts together"),
        ("--max-waiting", 256, "choices waiting for a slot, across requests; past it requests get 503"),
    ):
        serve.add_argument(flag, type=positive_int, default=default, help=f"{what} (default: %(default)s)")
    serve.add_argument(
        "--threads",
        type=typed(int, lambda v: v >= 0, "an integer >= 0"),
        default=0,
        help="CPU threads for torch (0: torch's default, one per core)",
    )
    serve.set_defaults(run=cmd_serve)
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
