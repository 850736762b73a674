"""What the commands share: default paths, the argument types of their flags, and the settings
and the model that the flags name (params.yaml's sample section under the flags, the model file
on its device)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from gptcore.checkpoint import MODEL_FILE
from gptcore.device import resolve_device
from gptcore.hf.convert import load_any
from gptcore.model import GPT
from gptcore.params import SampleParams, device_name_problem, load_section
from gptcore.sampling import RULES, Sampling, SamplingError, check_setting
from gptcore.tokenizer import Tokenizer

DEFAULT_CLASSIFIER = Path("models/classifier.pt")
DEFAULT_PARAMS = Path("params.yaml")


# ---------------------------------------------------------------------------------------------
# arguments


def typed(
    convert: Callable[[str], float], ok: Callable[[float], bool], allowed: str
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}")
        return value

    return parse


positive_int = typed(int, lambda v: v > 0, "an integer > 0")


# how the text of a flag or a chat /command becomes each sampling setting's value
_CONVERT: dict[str, Callable[[str], Any]] = {
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "max_new_tokens": int,
    "seed": int,
}


def parse_setting(field: str, text: str) -> Any:
    """The value of sampling setting `field` written as `text`; SamplingError, with the message
    that params.yaml and the Sampling type give, when it is not one."""
    try:
        value = _CONVERT[field](text.strip())
    except ValueError:
        raise SamplingError(field, text.strip(), RULES[field][1]) from None
    check_setting(field, value)
    return value


def _flag(field: str) -> Callable[[str], Any]:
    """An argparse type for the flag of sampling setting `field`."""

    def parse(text: str) -> Any:
        try:
            return parse_setting(field, text)
        except SamplingError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


# the sampling settings that have a flag, and what each does (--seed is chat's and sample's:
# a server seeds each request on its own)
SAMPLING_FLAGS = {
    "temperature": "softmax temperature; 0 is greedy",
    "top_k": "keep the k most likely tokens; 0 is off",
    "top_p": "keep the smallest set of tokens whose probability reaches p; 1 is off",
    "max_new_tokens": "tokens generated per completion",
    "seed": "seeds sampling",
}


def stop_flag(text: str) -> str:
    try:
        check_setting("stop", (text,))
    except SamplingError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_sampling_flag(parser: argparse.ArgumentParser, field: str) -> None:
    """The flag of sampling setting `field`; its help shows the plain-sampling fallback."""
    plain = getattr(Sampling(), field)  # the default outside a checkout
    parser.add_argument(
        f"--{field.replace('_', '-')}",
        type=_flag(field),
        help=f"{SAMPLING_FLAGS[field]} (default: sample.{field}, else {'random' if plain is None else plain})",
    )


def device_flag(text: str) -> str:
    problem = device_name_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: {problem}")
    return text


# ---------------------------------------------------------------------------------------------
# the settings and the model the flags name, shared by the commands


def params_file_of(args: argparse.Namespace) -> Path | None:
    """--params when given (it must exist), else params.yaml when the current folder has one."""
    if args.params is not None:
        return args.params
    return DEFAULT_PARAMS if DEFAULT_PARAMS.is_file() else None


def resolve_sampling(args: argparse.Namespace) -> tuple[Sampling, SampleParams | None]:
    """Flags first, then params.yaml's sample section (when the file exists), then plain sampling."""
    params_file = params_file_of(args)
    section: SampleParams | None = load_section("sample", params_file) if params_file else None

    sampling = section.sampling() if section is not None else Sampling()
    flags = {field: getattr(args, field, None) for field in SAMPLING_FLAGS}  # serve has no --seed
    flags["stop"] = tuple(args.stop) if args.stop else None
    sampling = replace(sampling, **{k: v for k, v in flags.items() if v is not None})
    if sampling.seed is None:
        # a seed drawn here and reported, so that a run the user liked can be repeated
        sampling = replace(sampling, seed=int.from_bytes(os.urandom(4), "little") % 2**31)
    return sampling, section


def load_from_flags(args: argparse.Namespace) -> tuple[GPT, Tokenizer, dict, torch.device]:
    """The model, tokenizer and meta of --model, on the device --device names."""
    device = resolve_device(args.device, key="--device")
    model, tokenizer, meta = load_any(args.model, device)
    return model, tokenizer, meta, device


def sampling_parent() -> argparse.ArgumentParser:
    """The flags of the commands that generate (chat, sample, serve): the model, the params file
    whose sample section gives the defaults, the sampling settings but the seed, stop strings, device."""
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
    return sampling
