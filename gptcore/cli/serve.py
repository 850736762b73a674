"""`gptcore serve`: the flags turned into gptcore.serve.server's options, and the API key's checks."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

import torch

from gptcore.cli.flags import resolve_sampling
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
