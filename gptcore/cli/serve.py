"""`gptcore serve`: the flags turned into gptcore.serve.server's options, and the API key's checks."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

import torch

from gptcore.cli.flags import positive_int, resolve_sampling, typed
from gptcore.device import resolve_device
from gptcore.errors import DataError, GptcoreError


def cmd_serve(args: argparse.Namespace) -> None:
    # imported here: the web stack is needed by this command only
    from gptcore.serve.server import ServeOptions, serve

    sampling, _ = resolve_sampling(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.model.exists():
        raise DataError(f"{args.model} not found: train a model first (dvc repro train) or pass --model")
    options = ServeOptions(
        model_path=args.model,
        name=args.name,
        defaults=replace(sampling, seed=None),  # each request has its own seed
        device=str(resolve_device(args.device, key="--device")),
        max_tokens_limit=args.max_tokens_limit,
        max_batch=args.max_batch,
        max_body_bytes=args.max_body_bytes,
        api_key=_api_key(args.api_key),
        max_choices=args.max_choices,
        max_prompt_tokens=args.max_prompt_tokens,
        max_waiting=args.max_waiting,
        allowed_hosts=(*args.allow_host, args.host),
    )
    serve(options, args.host, args.port)


def _api_key(flag: str | None) -> str | None:
    """--api-key, else $GPTCORE_API_KEY, else None (no key). A key given but empty is an error, not
    "no key": `--api-key "$UNSET_VAR"` must not serve everyone."""
    key: str | None
    if flag is not None:
        key, where, instead = flag, "--api-key", "leave the flag out"
    else:
        key, where, instead = os.environ.get("GPTCORE_API_KEY"), "$GPTCORE_API_KEY", "unset it"
    if key is not None and not key.strip():
        raise GptcoreError(f"{where} is empty: give a key, or {instead} to serve without one")
    return key.strip() if key is not None else None


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], sampling: argparse.ArgumentParser
) -> None:
    """The `serve` command's flags; `sampling` holds the model and sampling flags it may share."""
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
